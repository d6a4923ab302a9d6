"""Columnar assembly shared by the codecs: decoded field values -> :class:`Frame` objects.

A codec either fills a :class:`PointsBuilder` point by point (reference parsers, SenML,
JSON records) or produces :class:`Points` straight from Arrow arrays (the line-protocol
fast path); both end in :func:`assemble`::

    builder = PointsBuilder()
    builder.add(1, "env", "device=d1", 1_700_000_000_000_000_000, {"temp": (FLOAT, 21.5)})
    decoded = assemble(builder.build(), errors=[], rule=first_kind_wins)

``rule`` settles fields whose values disagree in type within one body: line protocol's
:func:`first_kind_wins` or the JSON family's :func:`majority_kind_wins`.

Frames are canonical, so two decoders that agree on the points build equal frames: one
frame per measurement in order of first appearance, rows in source-line order, tag-set
dictionary in order of first appearance, field columns sorted by name. Columns are dense,
so a body too sparse to hold that way (every point naming its own fields) is refused.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from motes.telemetry.models import (
    ARROW_TYPES,
    FIELD_TYPES,
    PRECISION_NS,
    Decoded,
    DecodeError,
    Frame,
    PointError,
)

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class Reject(Exception):
    """One point (line, record) is rejected with this message; the others go on."""


# Kind codes index FIELD_TYPES, so a column's Arrow type is ARROW_TYPES[FIELD_TYPES[kind]].
FLOAT, INTEGER, UNSIGNED, BOOLEAN, STRING = range(5)
KIND_TYPES = [ARROW_TYPES[name] for name in FIELD_TYPES]
EMPTY_VALUES = [pa.array([], typ) for typ in KIND_TYPES]  # shared: Arrow arrays are immutable
MAX_CELLS_PER_POINT, MIN_CELLS_LIMIT = 16, 1 << 22


@dataclass
class Points:
    """Decoded points before they become frames.

    Rows are points (``line``, ``series``, ``time``); records are field values, each
    pointing at its row, its key, its kind and its ``slot`` in ``values[kind]``.
    Records of a row are in source order (``pos``), and rows in source-line order.
    """

    line: Ints  # 1-based source line (or record) per row
    series: Ints  # per row, index into series_names
    series_names: list[tuple[str, str]]  # distinct (measurement, tag set)
    time: Ints  # ns since the epoch, meaningful where has_time
    has_time: Bools
    row: Ints  # per record
    key: Ints  # per record, index into keys
    keys: list[str]
    pos: Ints  # per record, position within its row
    kind: Ints  # per record, FLOAT..STRING
    slot: Ints  # per record, index into values[kind]
    values: list[pa.Array]

    def take_rows(self, keep: Bools) -> Points:
        """The points whose rows are marked in ``keep`` (records follow their rows)."""
        new_row = np.cumsum(keep) - 1
        rec = keep[self.row]
        return Points(
            self.line[keep], self.series[keep], self.series_names, self.time[keep],
            self.has_time[keep], new_row[self.row[rec]], self.key[rec], self.keys,
            self.pos[rec], self.kind[rec], self.slot[rec], self.values,
        )  # fmt: skip


def empty_points() -> Points:
    """Points with no rows."""
    none = np.zeros(0, np.int64)
    return Points(none, none, [], none, none.astype(bool), none, none, [], none, none, none,
                  EMPTY_VALUES)  # fmt: skip


class PointsBuilder:
    """Collects points one at a time (Python values) and builds :class:`Points`."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], int] = {}
        self._keys: dict[str, int] = {}
        self._rows: list[tuple[int, int, int | None]] = []
        self._records: list[tuple[int, int, int, int, int]] = []
        self._values: list[list[object]] = [[] for _ in KIND_TYPES]

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        line: int,
        measurement: str,
        tagset: str,
        time: int | None,
        fields: Mapping[str, tuple[int, object]],
    ) -> None:
        """Add one point; ``fields`` maps key -> (kind, value), in source order."""
        row = len(self._rows)
        series = self._series.setdefault((measurement, tagset), len(self._series))
        self._rows.append((line, series, time))
        for pos, (name, (kind, value)) in enumerate(fields.items()):
            key = self._keys.setdefault(name, len(self._keys))
            values = self._values[kind]
            self._records.append((row, key, pos, kind, len(values)))
            values.append(value)

    def build(self) -> Points:
        if not self._rows:
            return empty_points()
        lines, series, times = zip(*self._rows, strict=True)
        rec = np.array(self._records, np.int64).reshape(-1, 5)
        time = np.array([0 if t is None else t for t in times], np.int64)
        values = [
            pa.array(v, typ) if v else empty
            for v, typ, empty in zip(self._values, KIND_TYPES, EMPTY_VALUES, strict=True)
        ]
        return Points(
            np.array(lines, np.int64), np.array(series, np.int64), list(self._series),
            time, np.array([t is not None for t in times], bool),
            rec[:, 0], rec[:, 1], list(self._keys), rec[:, 2], rec[:, 3], rec[:, 4], values,
        )  # fmt: skip


def concat(parts: Sequence[Points]) -> Points:
    """One :class:`Points` from several, rows re-sorted by source line."""
    parts = [p for p in parts if len(p.line)]
    if len(parts) <= 1:
        return parts[0] if parts else empty_points()
    series: dict[tuple[str, str], int] = {}
    keys: dict[str, int] = {}
    cols: dict[str, list[Ints]] = {n: [] for n in ("series", "key", "row", "slot")}
    rows, slots = 0, np.zeros(len(KIND_TYPES), np.int64)
    for p in parts:
        smap = np.array([series.setdefault(s, len(series)) for s in p.series_names], np.int64)
        kmap = np.array([keys.setdefault(k, len(keys)) for k in p.keys], np.int64)
        cols["series"].append(smap[p.series])
        cols["key"].append(kmap[p.key])
        cols["row"].append(p.row + rows)
        cols["slot"].append(p.slot + slots[p.kind])
        rows += len(p.line)
        slots += np.array([len(v) for v in p.values], np.int64)
    merged = Points(
        np.concatenate([p.line for p in parts]), np.concatenate(cols["series"]), list(series),
        np.concatenate([p.time for p in parts]), np.concatenate([p.has_time for p in parts]),
        np.concatenate(cols["row"]), np.concatenate(cols["key"]), list(keys),
        np.concatenate([p.pos for p in parts]), np.concatenate([p.kind for p in parts]),
        np.concatenate(cols["slot"]),
        [pa.concat_arrays([p.values[k] for p in parts]) for k in range(len(KIND_TYPES))],
    )  # fmt: skip
    return _sort_rows(merged)


def _sort_rows(p: Points) -> Points:
    order = np.argsort(p.line, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    row = rank[p.row]
    rec = np.lexsort((p.pos, row))
    return Points(
        p.line[order], p.series[order], p.series_names, p.time[order], p.has_time[order],
        row[rec], p.key[rec], p.keys, p.pos[rec], p.kind[rec], p.slot[rec], p.values,
    )  # fmt: skip


# -- times ----------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def precision_factor(precision: str) -> int:
    """Nanoseconds per timestamp unit: ``precision_factor("ms") == 1_000_000``."""
    try:
        return PRECISION_NS[precision]
    except KeyError:
        raise DecodeError(f'unknown precision "{precision}" (use ns, us, ms or s)') from None


def scale_time(stamp: int, factor: int) -> int | None:
    """``stamp * factor`` if it fits int64 nanoseconds, else None."""
    ns = stamp * factor
    return ns if INT64_MIN <= ns <= INT64_MAX else None


def parse_rfc3339(text: str) -> int | None:
    """``"2023-11-14T22:13:20.5Z"`` -> ns since the epoch (None if not RFC 3339)."""
    match = _RFC3339.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, off_h, off_m = match.groups()[6:]
    try:
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        return None
    offset = 0 if zulu else (int(off_h) * 60 + int(off_m)) * (1 if sign == "+" else -1)
    seconds = calendar.timegm(moment.timetuple()) + (second == 60) - offset * 60
    return scale_time(seconds * 10**9 + int((fraction or "0").ljust(9, "0")), 1)


# -- type conflicts ---------------------------------------------------------------------------


def conflict_message(key: str, expected: int, found: int) -> str:
    """The error every codec reports for a field value of the wrong type."""
    return (
        f'field type conflict within batch: "{key}" is {FIELD_TYPES[expected]}'
        f" and {FIELD_TYPES[found]}"
    )


Rule = Callable[["Points", "Groups"], tuple["Points", list[PointError]]]


@dataclass
class Groups:
    """Records grouped by field (measurement, key): ``order[starts[g]:ends[g]]`` are
    the records of group ``g``, in source order."""

    order: Ints
    starts: Ints
    ends: Ints
    measurement: Ints  # per group, index into measurements
    measurements: list[str]


def field_groups(p: Points) -> Groups:
    """Group the records of ``p`` by (measurement, field key)."""
    names: dict[str, int] = {}
    meas_of_series = [names.setdefault(m, len(names)) for m, _ in p.series_names]
    nkeys = max(len(p.keys), 1)
    if len(names) == 1:
        composite = p.key
    else:
        composite = np.array(meas_of_series, np.int64)[p.series[p.row]] * nkeys + p.key
    # Small codes sort by radix: several times faster than int64 merge sort.
    small = composite.astype(np.uint16) if len(names) * nkeys <= 65536 else composite
    order = np.argsort(small, kind="stable")
    ordered = composite[order]
    starts = np.flatnonzero(np.concatenate([[len(order) > 0], ordered[1:] != ordered[:-1]]))
    ends = np.append(starts[1:], len(order))
    return Groups(order, starts, ends, ordered[starts] // nkeys, list(names))


def reject_conflicts(p: Points, wrong: Ints, expected: Ints) -> tuple[Points, list[PointError]]:
    """Drop rows holding a ``wrong`` record (whose kind should be ``expected``).

    Each rejected row is reported once, naming its first conflicting field.
    """
    errors: dict[int, PointError] = {}
    for rec, kind in sorted(zip(wrong.tolist(), expected.tolist(), strict=True)):
        row = int(p.row[rec])
        if row not in errors:
            message = conflict_message(p.keys[p.key[rec]], kind, int(p.kind[rec]))
            errors[row] = PointError(int(p.line[row]), message)
    keep = np.ones(len(p.line), bool)
    keep[list(errors)] = False
    return p.take_rows(keep), list(errors.values())


def first_kind_wins(p: Points, groups: Groups) -> tuple[Points, list[PointError]]:
    """Line-protocol rule: a field's type is the type of its first value in the body."""
    kinds = p.kind[groups.order]
    expected = np.repeat(kinds[groups.starts], groups.ends - groups.starts)
    wrong = np.flatnonzero(kinds != expected)
    if not len(wrong):
        return p, []
    return reject_conflicts(p, groups.order[wrong], expected[wrong])


def majority_kind_wins(p: Points, groups: Groups) -> tuple[Points, list[PointError]]:
    """JSON-family rule: integers join a float field (JSON writers print 75 for 75.0);
    otherwise the type most values of a field have wins (ties: the first seen)."""
    p = _promote_integers(p, groups)
    kinds = p.kind[groups.order]
    first = np.repeat(kinds[groups.starts], groups.ends - groups.starts)
    wrong, expected = [], []
    for g in _groups_with(kinds != first, groups).tolist():
        recs = groups.order[groups.starts[g] : groups.ends[g]]
        counts = np.bincount(p.kind[recs], minlength=len(KIND_TYPES))
        seen = list(dict.fromkeys(p.kind[recs].tolist()))  # kinds in order of appearance
        winner = max(seen, key=lambda k: (counts[k], -seen.index(k)))
        bad = recs[p.kind[recs] != winner]
        wrong.append(bad)
        expected.append(np.full(len(bad), winner, np.int64))
    if not wrong:
        return p, []
    return reject_conflicts(p, np.concatenate(wrong), np.concatenate(expected))


def _groups_with(mask: Bools, groups: Groups) -> Ints:
    """Groups holding at least one record marked in ``mask`` (given in group order)."""
    if not len(mask):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.add.reduceat(mask, groups.starts) > 0)


def _promote_integers(p: Points, groups: Groups) -> Points:
    kinds = p.kind[groups.order]
    both = np.intersect1d(
        _groups_with(kinds == FLOAT, groups), _groups_with(kinds == INTEGER, groups)
    )
    if not len(both):
        return p
    recs = np.concatenate([groups.order[groups.starts[g] : groups.ends[g]] for g in both])
    recs = recs[p.kind[recs] == INTEGER]
    # Unsafe cast: rounding 2**53 + 1 to the nearest float is what promotion means.
    floats = p.values[INTEGER].take(pa.array(p.slot[recs])).cast(pa.float64(), safe=False)
    kind, slot, values = p.kind.copy(), p.slot.copy(), list(p.values)
    kind[recs] = FLOAT
    slot[recs] = len(values[FLOAT]) + np.arange(len(recs))
    values[FLOAT] = pa.concat_arrays([values[FLOAT], floats])
    return Points(p.line, p.series, p.series_names, p.time, p.has_time, p.row, p.key, p.keys,
                  p.pos, kind, slot, values)  # fmt: skip


def assemble(
    points: Points, errors: list[PointError], rule: Rule, *, coerce_numbers: bool = False
) -> Decoded:
    """Every codec ends here: apply its type ``rule``, build frames, merge the errors.

    ``coerce_numbers`` marks JSON-family frames, whose integers may later join an existing
    float field (see :class:`Frame`).
    """
    groups = field_groups(points)
    points, conflicts = rule(points, groups)
    if conflicts:
        groups = field_groups(points)
        errors = sorted([*errors, *conflicts], key=lambda e: e.line or 0)
    frames = to_frames(points, groups)
    for frame in frames:
        frame.coerce_numbers = coerce_numbers
    return Decoded(frames=frames, errors=errors)


# -- frames -----------------------------------------------------------------------------------


def to_frames(p: Points, groups: Groups | None = None) -> list[Frame]:
    """Canonical frames for ``p`` (whose rows are in source-line order)."""
    if not len(p.line):
        return []
    groups = groups or field_groups(p)
    layout, frame_row = _layout(p, groups.measurements)
    # Groups are sorted by measurement, so each measurement's groups are a slice.
    bounds = np.searchsorted(groups.measurement, np.arange(len(groups.measurements) + 1)).tolist()
    _check_density(sum(len(rows) * (bounds[m + 1] - bounds[m]) for m, rows in layout), len(p.row))
    frames = []
    for m, rows in layout:
        fields = {}
        for g in range(bounds[m], bounds[m + 1]):
            recs = groups.order[groups.starts[g] : groups.ends[g]]
            fields[p.keys[p.key[recs[0]]]] = _column(p, recs, frame_row, len(rows))
        frames.append(_frame(p, groups.measurements[m], rows, dict(sorted(fields.items()))))
    return frames


def _layout(p: Points, measurements: list[str]) -> tuple[list[tuple[int, Ints]], Ints]:
    """Rows of each measurement (in order of first appearance) and each row's frame row."""
    if len(measurements) == 1:
        rows = np.arange(len(p.line))
        return [(0, rows)], rows
    ids = {name: i for i, name in enumerate(measurements)}
    meas = np.array([ids[m] for m, _ in p.series_names], np.int64)[p.series]
    by_meas = np.argsort(meas, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(meas, minlength=len(ids)))])
    frame_row = np.empty(len(meas), np.int64)
    layout = []
    for m in np.flatnonzero(np.diff(bounds)).tolist():  # measurements that kept rows
        rows = by_meas[bounds[m] : bounds[m + 1]]
        frame_row[rows] = np.arange(len(rows))
        layout.append((m, rows))
    layout.sort(key=lambda item: int(item[1][0]))  # by first row: order of first appearance
    return layout, frame_row


def _check_density(cells: int, points: int) -> None:
    # Columns are dense: a body where every point has its own field names would need
    # rows x fields cells, quadratic in its size. Refuse it rather than exhaust memory.
    if cells > max(MAX_CELLS_PER_POINT * points, MIN_CELLS_LIMIT):
        raise DecodeError(
            f"too sparse: {points} field values under {cells // max(points, 1)}x as many"
            " row/field slots; send points with different field names in separate bodies"
        )


def _column(p: Points, recs: Ints, frame_row: Ints, size: int) -> pa.Array:
    """The column of one field: its records' values at their rows, null elsewhere."""
    index = np.full(size, -1, np.int64)
    index[frame_row[p.row[recs]]] = p.slot[recs]
    indices = pa.array(index, mask=index < 0) if len(recs) < size else pa.array(index)
    return p.values[int(p.kind[recs[0]])].take(indices)


def _frame(p: Points, measurement: str, rows: Ints, fields: dict[str, pa.Array]) -> Frame:
    if len(p.series_names) == 1:
        indices = pa.array(np.zeros(len(rows), np.int32))
        dictionary = pa.array([p.series_names[0][1]], pa.string())
    else:
        distinct, first, inverse = np.unique(p.series[rows], return_index=True, return_inverse=True)
        by_first = np.argsort(first)
        rank = np.empty_like(by_first)
        rank[by_first] = np.arange(len(by_first))
        indices = pa.array(rank[inverse].astype(np.int32))
        dictionary = pa.array([p.series_names[s][1] for s in distinct[by_first].tolist()])
    has_time = p.has_time[rows]
    return Frame(
        measurement=measurement,
        tagsets=pa.DictionaryArray.from_arrays(indices, dictionary),
        time=pa.array(p.time[rows], mask=None if has_time.all() else ~has_time),
        fields=fields,
        lines=pa.array(p.line[rows].astype(np.int32)),
    )
