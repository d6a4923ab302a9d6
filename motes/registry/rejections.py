"""Messages the platform refused (bad payloads, topics a device may not use), kept for the
device's owner: ``GET /api/v1/devices/{device}/rejections``.

    rejections = registry.rejections
    rejections.record([("org1", "gh-1", at_ns, "mqtt", "devices/gh-1/telemetry", "line 1: ...")])
    rejections.list("org1", "gh-1", limit=100)       # newest first; before=<id> pages back

The newest ``KEEP`` per device (and per org for refusals of no device: tokens, users) are
kept; older ones are deleted as new ones are written. Deleting a device deletes its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.tables import device_rejections

KEEP = 1000
MAX_TOPIC = 1024
MAX_ERROR = 1000
MAX_DEVICE_ID = 256  # devices.id: a longer id names no device

r = device_rejections.c

#: (org_id, device_id or None, at_ns, transport, topic, error)
Item = tuple[str, str | None, int, str, str, str]


@dataclass(frozen=True)
class Rejection:
    id: int
    at_ns: int
    transport: str
    topic: str
    error: str


#: (``Rejections.list`` hides the builtin in the class body)
RejectionList = list[Rejection]
Items = list[Item]


class Rejections:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, items: Items) -> None:
        """Store ``items`` in one transaction, then drop all but each device's newest KEEP."""
        rows = _newest_per_device(items)
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(device_rejections.insert(), rows)
            for org_id, device_id in dict.fromkeys(map(_group, rows)):
                _prune(conn, org_id, device_id)

    def list(
        self, org_id: str, device_id: str, limit: int = 100, before: int | None = None
    ) -> RejectionList:
        """A device's refused messages, newest first; ``before`` (an entry id) pages back."""
        query = sa.select(r.id, r.at_ns, r.transport, r.topic, r.error).where(
            r.org_id == org_id, r.device_id == device_id
        )
        if before is not None:
            query = query.where(r.id < before)
        with self.engine.connect() as conn:
            found = conn.execute(query.order_by(r.id.desc()).limit(limit)).all()
        return [Rejection(x.id, x.at_ns, x.transport, x.topic, x.error) for x in found]


def forget_device(conn: sa.Connection, org_id: str, device_id: str) -> None:
    conn.execute(device_rejections.delete().where(r.org_id == org_id, r.device_id == device_id))


def _newest_per_device(items: Items) -> list[dict[str, Any]]:
    """The rows to insert, in order: at most KEEP per device (a flood keeps its newest)."""
    rows = [_row(*item) for item in items]
    left = Counter(_group(row) for row in rows)  # rows of the group from here on
    kept = []
    for row in rows:
        group = _group(row)
        if left[group] <= KEEP:
            kept.append(row)
        left[group] -= 1
    return kept


def _row(
    org_id: str, device_id: str | None, at_ns: int, transport: str, topic: str, error: str
) -> dict[str, Any]:
    return {
        "org_id": org_id,
        "device_id": device_id if device_id and len(device_id) <= MAX_DEVICE_ID else None,
        "at_ns": at_ns,
        "transport": transport,
        "topic": topic[:MAX_TOPIC],
        "error": error[:MAX_ERROR],
    }


def _group(row: dict[str, Any]) -> tuple[str, str | None]:
    return row["org_id"], row["device_id"]


def _device_is(device_id: str | None) -> sa.ColumnElement[bool]:
    return r.device_id.is_(None) if device_id is None else r.device_id == device_id


def _prune(conn: sa.Connection, org_id: str, device_id: str | None) -> None:
    """Delete below the KEEP-th newest id: one index range read, and a delete only if full."""
    mine = (r.org_id == org_id, _device_is(device_id))
    cutoff = conn.execute(
        sa.select(r.id).where(*mine).order_by(r.id.desc()).offset(KEEP - 1).limit(1)
    ).scalar()
    if cutoff is not None:
        conn.execute(device_rejections.delete().where(*mine, r.id < cutoff))
