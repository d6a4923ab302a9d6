"""The storage contract every telemetry backend meets.

The write side is batch-only: :meth:`TelemetryStore.write` takes the requests gathered by
one group commit, stores all of them in one durable transaction and reports, per request,
which points it refused (field type conflicts). The read side answers the query shapes the
API offers. ``tests/test_store_conformance.py`` is the contract, run against every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from motes.telemetry.models import FieldType, Frame, PointError


@dataclass
class WriteRequest:
    """Frames bound for one bucket; times already filled (no nulls)."""

    bucket: str
    frames: list[Frame]


@dataclass
class WriteOutcome:
    written: int = 0
    errors: list[PointError] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesInfo:
    id: int
    bucket: str
    measurement: str
    tags: dict[str, str]


@dataclass(frozen=True)
class Selection:
    """Which series and time range a read covers. ``start`` inclusive, ``stop`` exclusive (ns)."""

    bucket: str
    measurement: str
    start: int
    stop: int
    tags: dict[str, list[str]] = field(default_factory=dict)
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Aggregation:
    every: int  # window width, ns
    fn: str  # mean min max sum count first last median; "" = raw points, merged per group
    group_by: tuple[str, ...] | None  # None: per series; () all series together


@dataclass
class LatestRows:
    """Latest values of some series of one measurement, as columns aligned with ``series``:
    ``fields[name] = (times, values)``; a time of ``NO_TIME`` marks a series without it."""

    series: list[SeriesInfo]
    fields: dict[str, tuple[np.ndarray, np.ndarray]]


NO_TIME = -(2**63)


class TelemetryStore(Protocol):
    def write(self, requests: Sequence[WriteRequest]) -> list[WriteOutcome]:
        """Store every request in one transaction; durable when this returns."""
        ...

    def series(self, bucket: str, measurement: str, tags: dict[str, list[str]]) -> list[SeriesInfo]:
        """Series of a measurement whose tags match (tag -> accepted values)."""
        ...

    def field_types(self, bucket: str, measurement: str) -> dict[str, FieldType]: ...

    def measurements(self, bucket: str) -> list[str]: ...

    def read(
        self, sel: Selection, agg: Aggregation | None, limit: int | None
    ) -> list[tuple[dict[str, str], pa.Table]]:
        """Tables keyed by group tags: column ``time`` (ns int64) plus one per field."""
        ...

    def latest(
        self, bucket: str, measurement: str | None, tags: dict[str, list[str]]
    ) -> list[LatestRows]:
        """Latest value of each field of each matching series, one entry per measurement."""
        ...

    def drop_bucket(self, bucket: str) -> None: ...

    def enforce_retention(self, bucket: str, cutoff_ns: int) -> int: ...

    def maintain(self, idle: bool) -> None:
        """Backend housekeeping, called on the writer thread after commits and when idle."""
        ...

    def close(self) -> None: ...
