"""Small helpers every registry module uses: ids, clocks, names, hashing, the audit trail."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.models import Invalid
from motes.registry.tables import audit_log, credential_epoch

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
#: how long a verified credential is trusted without asking the database again
CREDENTIAL_CACHE_SECONDS = 60.0
#: how often a process checks whether another one changed credentials (then it forgets all):
#: changes made in this process apply at once, those made by another within this time
EPOCH_CHECK_SECONDS = 2.0


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


class TTLCache:
    """Verified credentials by hash, trusted for ``ttl`` seconds.

    A change in this process (rotate, revoke, disable, sign-out, role change) calls
    :meth:`clear`: the cache empties at once and the shared epoch in the registry database
    is bumped; every process compares that epoch at most every ``check_every`` seconds and
    empties its own cache when it moved. So a verified key costs no database round trip for a
    minute, and a revoked one stops within ``check_every`` seconds everywhere.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        ttl: float = CREDENTIAL_CACHE_SECONDS,
        check_every: float = EPOCH_CHECK_SECONDS,
    ) -> None:
        self.ttl = ttl
        self.check_every = check_every
        self._engine = engine
        self._items: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._next_check = 0.0
        #: called whenever the cache forgets: other caches that must follow the epoch
        self.on_forget: list[Callable[[], None]] = []
        #: bumped by every local clear: a value read from the database before a change must
        #: not be cached after it (``put`` drops values read under an older generation)
        self.generation = 0

    def get(self, key: str) -> Any:
        now = time.monotonic()
        if self._engine is not None and now >= self._next_check:
            self._next_check = now + self.check_every
            epoch = self._read_epoch()
            if epoch != self._epoch:  # also on the first check: what was cached before it
                self._forget()  # may predate a change made elsewhere
                self._epoch = epoch
        item = self._items.get(key)
        if item is None or item[0] < now:
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
        """Call after a change committed: forget here, tell the other processes."""
        self._forget()
        if self._engine is not None:
            with self._engine.begin() as conn:
                conn.execute(credential_epoch.update().values(epoch=credential_epoch.c.epoch + 1))
            self._epoch = self._read_epoch()

    def _forget(self) -> None:
        with self._lock:
            self.generation += 1
            self._items.clear()
        for forget in self.on_forget:
            forget()

    def _read_epoch(self) -> int:
        assert self._engine is not None
        with self._engine.connect() as conn:
            epoch = conn.execute(sa.select(credential_epoch.c.epoch)).scalar()
        return int(epoch or 0)
