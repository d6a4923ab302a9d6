"""Whether a device is online, stale or offline, and the history of that.

    online   its MQTT connection is open and it sent data within its expected interval (or
             it has none), or it has no connection but sent data (HTTP) within the interval
    stale    connected, but no data within the interval
    offline  otherwise — so a device without an interval is online only while connected

    status_of(connected=False, interval_seconds=300, last_seen_ns=t, now_ns=t + 10**9)
    # -> "online"

The status is stored on the device's row, so every process answers alike; each change
appends a row to ``device_status_history`` with its reason ("connect", "last-will",
"data", "no data within 300 s", ...). ``Devices`` calls these functions in its own
transactions: on (dis)connects, on interval changes, and in the periodic sweep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from motes.registry.models import Invalid
from motes.registry.schemas import MAX_INTERVAL_SECONDS
from motes.registry.tables import device_status_history, devices

ONLINE, STALE, OFFLINE = "online", "stale", "offline"
STATUSES = (ONLINE, STALE, OFFLINE)
DATA = "data"
INTERVAL_CHANGED = "expected interval changed"
MAX_REASON = 128

d = devices.c
h = device_status_history.c


@dataclass(frozen=True)
class StatusChange:
    id: int
    at_ns: int
    status: str
    reason: str


def status_of(
    connected: bool, interval_seconds: int | None, last_seen_ns: int | None, now_ns: int
) -> str:
    recent = (
        interval_seconds is not None
        and last_seen_ns is not None
        and now_ns - last_seen_ns <= interval_seconds * 10**9
    )
    if connected:
        return ONLINE if interval_seconds is None or recent else STALE
    return ONLINE if recent else OFFLINE


def check_interval(seconds: int | None) -> int | None:
    """None (no interval) or 1 s to a year."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise Invalid("the expected interval must be a whole number of seconds")
    if not 1 <= seconds <= MAX_INTERVAL_SECONDS:
        raise Invalid(f"the expected interval must be from 1 to {MAX_INTERVAL_SECONDS} seconds")
    return seconds


def latest(*times: int | None) -> int | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


# what the status rules read of a device
STATUS_COLUMNS = (
    d.org_id,
    d.id,
    d.connected,
    d.connected_ns,
    d.disconnected_ns,
    d.expected_interval_seconds,
    d.last_seen_ns,
    d.status,
)


def row(conn: sa.Connection, org_id: str, device_id: str) -> Any:
    """The status columns of a device (locked on PostgreSQL until the transaction ends)."""
    return conn.execute(
        sa.select(*STATUS_COLUMNS).where(d.org_id == org_id, d.id == device_id).with_for_update()
    ).first()


def record(conn: sa.Connection, r: Any, status: str, at_ns: int, reason: str) -> bool:
    """Store ``status`` if it differs from the row's ``r.status`` and nobody changed it since."""
    if status == r.status:
        return False
    done = conn.execute(
        devices.update()
        .where(d.org_id == r.org_id, d.id == r.id, d.status == r.status)
        .values(status=status, status_ns=at_ns)
    ).rowcount
    if done:
        conn.execute(
            device_status_history.insert().values(
                org_id=r.org_id,
                device_id=r.id,
                at_ns=at_ns,
                status=status,
                reason=reason[:MAX_REASON],
            )
        )
    return bool(done)


Event = tuple[str, str, bool, str, int]  # org, device, connected, reason, at_ns


def set_connected_many(
    conn: sa.Connection, events: list[Event], seen: Mapping[tuple[str, str], int]
) -> list[Event]:
    """:func:`set_connected` for many events with a few statements (one read per org, one
    batched update, one batched insert): 10,000 devices connecting at once would otherwise
    cost 40,000 statements. Answers the events that were noted."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    by_org: dict[str, set[str]] = {}
    for org_id, device_id, *_ in events:
        by_org.setdefault(org_id, set()).add(device_id)
    for org_id, ids in by_org.items():
        for chunk in _chunks(sorted(ids), 500):
            found = conn.execute(
                sa.select(*STATUS_COLUMNS)
                .where(d.org_id == org_id, d.id.in_(chunk))
                .with_for_update()
            )
            rows.update({(r.org_id, r.id): dict(r._mapping) for r in found})
    noted, history = [], []
    for event in events:
        org_id, device_id, connected, reason, at = event
        r = rows.get((org_id, device_id))
        if r is None or at < (latest(r["connected_ns"], r["disconnected_ns"]) or 0):
            continue
        r["connected"] = connected
        r["connected_ns" if connected else "disconnected_ns"] = at
        last = latest(r["last_seen_ns"], seen.get((org_id, device_id)), at if connected else None)
        now = status_of(connected, r["expected_interval_seconds"], last, at)
        if now != r["status"]:
            r["status"], r["status_ns"] = now, at
            history.append(
                {"org_id": org_id, "device_id": device_id, "at_ns": at, "status": now,
                 "reason": reason[:MAX_REASON]}
            )  # fmt: skip
        noted.append(event)
    touched = {(e[0], e[1]) for e in noted}
    changed = [
        {
            "o": r["org_id"],
            "i": r["id"],
            "c": r["connected"],
            "cn": r["connected_ns"],
            "dn": r["disconnected_ns"],
            "s": r["status"],
            "sn": r.get("status_ns"),
        }
        for key, r in rows.items()
        if key in touched
    ]
    if noted:
        conn.execute(
            devices.update()
            .where(d.org_id == sa.bindparam("o"), d.id == sa.bindparam("i"))
            .values(
                connected=sa.bindparam("c"),
                connected_ns=sa.bindparam("cn"),
                disconnected_ns=sa.bindparam("dn"),
                status=sa.bindparam("s"),
                status_ns=sa.func.coalesce(sa.bindparam("sn"), d.status_ns),
            ),
            changed,
        )
    if history:
        conn.execute(device_status_history.insert(), history)
    return noted


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def refresh(
    conn: sa.Connection, org_id: str, device_id: str, seen_ns: int | None, now: int, reason: str
) -> None:
    """Recompute one device's status (its interval changed)."""
    r = row(conn, org_id, device_id)
    if r is not None:
        last = latest(r.last_seen_ns, seen_ns)
        record(conn, r, status_of(r.connected, r.expected_interval_seconds, last, now), now, reason)


def sweep(conn: sa.Connection, seen: Mapping[tuple[str, str], int], now: int) -> int:
    """Move devices whose data stopped or came back; returns how many changed.

    Only devices with an interval can change without a (dis)connect. Of those, the ones
    offline and silent are skipped; traffic seen only in this process's memory (``seen``)
    counts for the rest, traffic of offline devices once it is flushed (every 5 s).
    """
    # typed as BIGINT: PostgreSQL would compute in INTEGER and overflow
    window = sa.cast(d.expected_interval_seconds, sa.BigInteger) * sa.literal(10**9, sa.BigInteger)
    since = sa.literal(now, sa.BigInteger) - window
    rows = conn.execute(
        sa.select(
            d.org_id, d.id, d.connected, d.expected_interval_seconds, d.last_seen_ns, d.status
        ).where(
            d.expected_interval_seconds.is_not(None),
            sa.or_(d.status != OFFLINE, d.connected.is_(sa.true()), d.last_seen_ns >= since),
        )
    ).all()
    changed = 0
    for r in rows:
        last = latest(r.last_seen_ns, seen.get((r.org_id, r.id)))
        status = status_of(r.connected, r.expected_interval_seconds, last, now)
        reason = DATA if status == ONLINE else f"no data within {r.expected_interval_seconds} s"
        changed += record(conn, r, status, now, reason)
    return changed


def history(
    conn: sa.Connection, org_id: str, device_id: str, limit: int, before: int | None
) -> list[StatusChange]:
    query = sa.select(h.id, h.at_ns, h.status, h.reason).where(
        h.org_id == org_id, h.device_id == device_id
    )
    if before is not None:
        query = query.where(h.id < before)
    rows = conn.execute(query.order_by(h.id.desc()).limit(limit)).all()
    return [StatusChange(r.id, r.at_ns, r.status, r.reason) for r in rows]


def forget_device(conn: sa.Connection, org_id: str, device_id: str) -> None:
    conn.execute(device_status_history.delete().where(h.org_id == org_id, h.device_id == device_id))
