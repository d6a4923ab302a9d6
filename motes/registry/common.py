"""Small helpers every registry module uses: ids, clocks, names, hashing, the audit trail."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from motes.registry.models import Invalid
from motes.registry.tables import audit_log

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
#: how long a verified credential is trusted without asking the database again; changes made
#: in this process apply at once, those made by another process within this time
CREDENTIAL_CACHE_SECONDS = 2.0


def now_ns() -> int:
    return time.time_ns()


def new_id() -> str:
    return secrets.token_hex(8)


def new_secret(prefix: str) -> str:
    """A 256-bit random credential with a recognisable prefix (``mdk_...``)."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # credentials are 256-bit random strings, so a fast hash is as safe as a slow one here
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise Invalid(
            f'invalid {kind} name "{name}": use 1-255 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Actor:
    """Who made a change and from where, as the audit log records it."""

    name: str  # "user:<id>", "token:<id>", "device:<id>", "anonymous"
    remote: str | None = None
    label: str = ""  # e.g. the user's email, kept in the event's details


SYSTEM = Actor("system")


def audit(
    conn: sa.Connection,
    actor: Actor,
    org_id: str | None,
    action: str,
    target: str = "",
    outcome: str = "success",
    **details: Any,
) -> None:
    """Append an audit event inside the caller's transaction: it lands with the change."""
    if actor.label:
        details = {"by": actor.label, **details}
    conn.execute(
        audit_log.insert().values(
            org_id=org_id,
            time_ns=now_ns(),
            actor=actor.name,
            action=action,
            target=target,
            outcome=outcome,
            remote=actor.remote,
            details=details,
        )
    )


@dataclass
class TTLCache:
    """Verified credentials by hash, each trusted for ``ttl`` seconds; ``clear`` on change."""

    ttl: float = CREDENTIAL_CACHE_SECONDS
    _items: dict[str, tuple[float, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: bumped by every ``clear``: a value read from the database before a change must not be
    #: cached after it (``put`` drops values read under an older generation)
    generation: int = 0

    def get(self, key: str) -> Any:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: str, value: Any, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            if len(self._items) > 100_000:  # unbounded distinct keys would be a memory leak
                self._items.clear()
            self._items[key] = (time.monotonic() + self.ttl, value)

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self._items.clear()
