"""Commands for devices (persistent RPC): queued, pushed or polled, answered.

    commands = registry.commands
    commands.listen(push)                                   # called with every new command
    cmd = commands.create("org1", "gh-1", "reboot", {"delay": 5}, 3600, actor)
    for cmd in commands.pending("org1", "gh-1"):            # what the device has yet to get
        commands.mark_sent("org1", cmd.id)                  # published to it (MQTT QoS 1)
        commands.mark_delivered("org1", cmd.id)             # it acknowledged (PUBACK)
    commands.complete("org1", "gh-1", cmd.id, ok=True, response={"up": 3}, error=None)

States, all kept in the registry database (so they survive a restart)::

    queued ──> sent ──> delivered ──> succeeded | failed     (the device's answer)
      └─────────┴───────────┴───────> expired                (past expires_ns, swept)
      └─────────┴───────────┴───────> canceled               (by a user)

Errors: ``NotFound`` (no such command or device), ``Conflict`` (the command is final
already), ``Invalid`` (bad name, params, timeout).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.common import Actor, audit, new_id, now_ns
from motes.registry.models import Conflict, Invalid, NotFound
from motes.registry.schemas import COMMAND_NAME_PATTERN, MAX_COMMAND_SECONDS, iso
from motes.registry.tables import device_commands, devices

log = logging.getLogger(__name__)

QUEUED, SENT, DELIVERED = "queued", "sent", "delivered"
SUCCEEDED, FAILED, EXPIRED, CANCELED = "succeeded", "failed", "expired", "canceled"
STATES = (QUEUED, SENT, DELIVERED, SUCCEEDED, FAILED, EXPIRED, CANCELED)
OPEN = (QUEUED, SENT, DELIVERED)
FINAL = (SUCCEEDED, FAILED, EXPIRED, CANCELED)
DEFAULT_TIMEOUT_SECONDS = 24 * 3600
MAX_TIMEOUT_SECONDS = MAX_COMMAND_SECONDS
MAX_JSON_BYTES = 64 * 1024
MAX_ERROR_CHARS = 4096
#: like other names, at most 128 characters; no "/", "+" or "#", so it fits an MQTT topic level
NAME = re.compile(COMMAND_NAME_PATTERN)

c = device_commands.c


@dataclass(frozen=True)
class Command:
    id: str
    org_id: str
    device_id: str
    name: str
    params: Any
    state: str
    created_ns: int
    created_by: str
    expires_ns: int
    sent_ns: int | None
    delivered_ns: int | None
    completed_ns: int | None
    attempts: int
    response: Any
    error: str | None

    @classmethod
    def of(cls, r: Any) -> Command:
        return cls(**{name: getattr(r, name) for name in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        """The API's shape: camelCase, RFC 3339 times (null when not yet)."""
        return {
            "id": self.id,
            "deviceId": self.device_id,
            "name": self.name,
            "params": self.params,
            "state": self.state,
            "createdAt": iso(self.created_ns),
            "createdBy": self.created_by,
            "expiresAt": iso(self.expires_ns),
            "sentAt": iso(self.sent_ns),
            "deliveredAt": iso(self.delivered_ns),
            "completedAt": iso(self.completed_ns),
            "attempts": self.attempts,
            "response": self.response,
            "error": self.error,
        }


#: (``Commands.list`` hides the builtin in the class body)
CommandList = list[Command]


def check_command_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Invalid(
            f'invalid command name "{name}": use 1-128 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit"
        )
    return name


def check_json(value: Any, what: str) -> None:
    """``value`` is JSON of at most MAX_JSON_BYTES (it is stored and sent as is)."""
    try:
        size = len(orjson.dumps(value))
    except TypeError as exc:  # orjson.JSONEncodeError: not JSON, or an integer past 64 bits
        raise Invalid(f'"{what}" is not JSON this server can store: {exc}') from exc
    if size > MAX_JSON_BYTES:
        raise Invalid(f'"{what}" is larger than {MAX_JSON_BYTES} bytes of JSON')


class Commands:
    """The commands of every org's devices; ``clock`` gives the time in ns (tests move it)."""

    def __init__(self, engine: Engine, clock: Callable[[], int] = now_ns) -> None:
        self.engine = engine
        self.clock = clock
        self._listeners: list[Callable[[Command], None]] = []
        self._lock = threading.Lock()

    def listen(self, callback: Callable[[Command], None]) -> None:
        """Call ``callback(command)`` after each create commits, on the creating thread.

        Callbacks must be quick (hand the work to a loop or queue); one that raises is
        logged and does not fail the create.
        """
        with self._lock:
            self._listeners.append(callback)

    def unlisten(self, callback: Callable[[Command], None]) -> None:
        """Stop calling ``callback`` (a stopped broker must not be handed commands)."""
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def create(
        self,
        org_id: str,
        device_id: str,
        name: str,
        params: Any,
        timeout_seconds: int,
        by: Actor,
    ) -> Command:
        """Queue a command for an existing device; it expires after ``timeout_seconds``."""
        check_command_name(name)
        check_json(params, "params")
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
            raise Invalid("the timeout must be a whole number of seconds")
        if not 1 <= timeout_seconds <= MAX_TIMEOUT_SECONDS:
            raise Invalid(f"the timeout must be from 1 to {MAX_TIMEOUT_SECONDS} seconds (30 days)")
        now = self.clock()
        command = Command(
            id=new_id(),
            org_id=org_id,
            device_id=device_id,
            name=name,
            params=params,
            state=QUEUED,
            created_ns=now,
            created_by=by.name,
            expires_ns=now + timeout_seconds * 10**9,
            sent_ns=None,
            delivered_ns=None,
            completed_ns=None,
            attempts=0,
            response=None,
            error=None,
        )
        with self.engine.begin() as conn:
            _need_device(conn, org_id, device_id)
            conn.execute(device_commands.insert().values(**asdict(command)))
            target = f"command:{command.id}"
            audit(conn, by, org_id, "command.create", target, device=device_id, name=name)
        self._announce(command)
        return command

    def _announce(self, command: Command) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(command)
            except Exception:  # the command is stored: a failed push is retried by polling
                log.exception("a command listener failed for command %s", command.id)

    def get(self, org_id: str, command_id: str) -> Command:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(device_commands).where(c.org_id == org_id, c.id == command_id)
            ).first()
        if r is None:
            raise NotFound(f'command "{command_id}" not found')
        return Command.of(r)

    def list(
        self,
        org_id: str,
        device_id: str,
        state: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> CommandList:
        """A device's commands, newest first; ``after`` (a command id) pages to older ones."""
        if state is not None and state not in STATES:
            raise Invalid(f'invalid state "{state}": one of {", ".join(STATES)}')
        query = sa.select(device_commands).where(c.org_id == org_id, c.device_id == device_id)
        if state is not None:
            query = query.where(c.state == state)
        with self.engine.connect() as conn:
            _need_device(conn, org_id, device_id)
            if after is not None:
                query = query.where(_older_than(conn, org_id, device_id, after))
            rows = conn.execute(query.order_by(c.created_ns.desc(), c.id.desc()).limit(limit)).all()
        return [Command.of(r) for r in rows]

    def pending(self, org_id: str, device_id: str) -> CommandList:
        """Queued or sent commands, oldest first; those past their time become expired."""
        with self.engine.begin() as conn:
            return self._pending(conn, org_id, device_id, self.clock())

    def _pending(self, conn: sa.Connection, org_id: str, device_id: str, now: int) -> CommandList:
        mine = (c.org_id == org_id, c.device_id == device_id)
        _expire(conn, now, *mine)
        rows = conn.execute(
            sa.select(device_commands)
            .where(*mine, c.state.in_((QUEUED, SENT)))
            .order_by(c.created_ns, c.id)
        ).all()
        return [Command.of(r) for r in rows]

    def deliver(self, org_id: str, device_id: str) -> CommandList:
        """``pending`` and ``mark_delivered`` in one go: what an HTTP poll hands the device.

        A command taken by a concurrent poll is left out, so each goes out once this way.
        """
        now = self.clock()
        out = []
        with self.engine.begin() as conn:
            for command in self._pending(conn, org_id, device_id, now):
                if _deliver(conn, command.org_id, command.id, now):
                    out.append(replace(command, state=DELIVERED, delivered_ns=now))
        return out

    def mark_sent(self, org_id: str, command_id: str) -> None:
        """Published to the device (again): queued|sent -> sent, one attempt more."""
        with self.engine.begin() as conn:
            conn.execute(
                device_commands.update()
                .where(c.org_id == org_id, c.id == command_id, c.state.in_((QUEUED, SENT)))
                .values(state=SENT, sent_ns=self.clock(), attempts=c.attempts + 1)
            )

    def mark_delivered(self, org_id: str, command_id: str) -> None:
        """The device has it (MQTT PUBACK, or an HTTP poll answered): queued|sent -> delivered."""
        with self.engine.begin() as conn:
            _deliver(conn, org_id, command_id, self.clock())

    def complete(
        self,
        org_id: str,
        device_id: str,
        command_id: str,
        ok: bool,
        response: Any,
        error: str | None,
    ) -> Command:
        """The device's answer: succeeded or failed; Conflict if the command is final already."""
        check_json(response, "result")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
            raise Invalid(f'"error" must be a string of at most {MAX_ERROR_CHARS} characters')
        state = SUCCEEDED if ok else FAILED
        values = {"state": state, "response": response, "error": error}
        return self._finish(org_id, command_id, device_id, values, None)

    def cancel(self, org_id: str, command_id: str, by: Actor) -> Command:
        """Cancel a command the device has not answered yet; Conflict if it is final."""
        return self._finish(org_id, command_id, None, {"state": CANCELED}, by)

    def _finish(
        self,
        org_id: str,
        command_id: str,
        device_id: str | None,
        values: dict[str, Any],
        by: Actor | None,
    ) -> Command:
        now = self.clock()
        where = [c.org_id == org_id, c.id == command_id]
        if device_id is not None:
            where.append(c.device_id == device_id)
        with self.engine.begin() as conn:
            _expire(conn, now, *where)  # too late is expired, whatever the answer
            done = conn.execute(
                device_commands.update()
                .where(*where, c.state.in_(OPEN))
                .values(completed_ns=now, **values)
            ).rowcount
            if done and by is not None:
                audit(conn, by, org_id, "command.cancel", f"command:{command_id}")
        current = self.get(org_id, command_id)
        if device_id is not None and current.device_id != device_id:
            raise NotFound(f'command "{command_id}" not found')
        if not done:
            raise Conflict(f'command "{command_id}" is final already: {current.state}')
        return current

    def expire_due(self, now_ns: int | None = None) -> int:
        """Expire every open command past its time (the app calls this every 2 s)."""
        with self.engine.begin() as conn:
            return _expire(conn, self.clock() if now_ns is None else now_ns)


def _need_device(conn: sa.Connection, org_id: str, device_id: str) -> None:
    found = conn.execute(
        sa.select(devices.c.id).where(devices.c.org_id == org_id, devices.c.id == device_id)
    ).first()
    if found is None:
        raise NotFound(f'device "{device_id}" not found')


def _older_than(
    conn: sa.Connection, org_id: str, device_id: str, after: str
) -> sa.ColumnElement[bool]:
    ref = conn.execute(
        sa.select(c.created_ns).where(c.org_id == org_id, c.device_id == device_id, c.id == after)
    ).first()
    if ref is None:
        raise Invalid(f'"after": device "{device_id}" has no command "{after}"')
    return sa.or_(
        c.created_ns < ref.created_ns, sa.and_(c.created_ns == ref.created_ns, c.id < after)
    )


def _deliver(conn: sa.Connection, org_id: str, command_id: str, now: int) -> bool:
    """queued|sent -> delivered; False if the command is elsewhere by now."""
    done = conn.execute(
        device_commands.update()
        .where(c.org_id == org_id, c.id == command_id, c.state.in_((QUEUED, SENT)))
        .values(state=DELIVERED, delivered_ns=now)
    ).rowcount
    return bool(done)


def _expire(conn: sa.Connection, now: int, *where: sa.ColumnElement[bool]) -> int:
    done = conn.execute(
        device_commands.update()
        .where(*where, c.state.in_(OPEN), c.expires_ns <= now)
        .values(state=EXPIRED, completed_ns=now)
    ).rowcount
    return int(done)
