"""Line protocol, vectorised: the lines pyarrow.compute can prove simple, as arrays.

Each step is one Arrow or NumPy call over the whole body (pyarrow releases the GIL); the
lines it cannot prove simple go to the reference parser (:mod:`.lpref`), and both end in
the same assembly, so the result is identical to :func:`.lineprotocol.decode_reference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.columns import INT64_MAX, Bools, Ints, Reject
from motes.telemetry.codecs.lpref import (
    _SERIES_CACHE,
    _reference_points_each,
    assemble,
    parse_series_key,
)
from motes.telemetry.models import Decoded, PointError

# -- fast path --------------------------------------------------------------------------------
# A line is "simple" when this RE2 pattern proves its syntax: no escapes, no strings, single
# spaces, every field value well formed. What the pattern cannot check (series keys, value
# ranges, duplicate field keys) is checked on arrays, and lines failing it go to the
# reference parser too, which then names the problem.

_KEY = r'[^\s,="\\_][^\s,="\\]*'
_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|-?\d+i|\d+u"
_VALUE = rf"(?:{_NUMBER}|[tT]|true|True|TRUE|[fF]|false|False|FALSE)"
_SIMPLE_LINE = rf"^[^\s\\#][^\s\\]* {_KEY}={_VALUE}(?:,{_KEY}={_VALUE})*(?: -?\d+)?$"
# Kind of a simple value from its last byte: i, u, a boolean letter, else a float.
_KIND_BY_LAST = np.full(256, col.FLOAT, np.int64)
_KIND_BY_LAST[[ord("i")]] = col.INTEGER
_KIND_BY_LAST[[ord("u")]] = col.UNSIGNED
_KIND_BY_LAST[[ord(c) for c in "tTeEfF"]] = col.BOOLEAN
_MAX_DIGITS = {col.INTEGER: 18, col.UNSIGNED: 19}  # always in range, so cast cannot fail


def decode_fast(text: str, factor: int, device: str | None) -> Decoded:
    """Simple lines as arrays, the others through the reference parser."""
    parts, errors = fast_points(text, factor, [device])
    return assemble(parts, errors)


def fast_points(
    text: str, factor: int, devices: Sequence[str | None], line_device: Ints | None = None
) -> tuple[list[col.Points], list[PointError]]:
    """The points of ``text`` (to be assembled) and its bad lines, in line order.

    Line ``n`` belongs to ``devices[line_device[n - 1]]``; without ``line_device`` every
    line to ``devices[0]``.
    """
    lines = stripped = pc.split_pattern(pa.array([text]), "\n").flatten()
    if "\r" in text:
        stripped = pc.replace_substring_regex(lines, "\r$", "", max_replacements=1)
    simple = pc.match_substring_regex(stripped, _SIMPLE_LINE).to_numpy(zero_copy_only=False)
    numbers = np.flatnonzero(simple) + 1
    simple_lines = stripped.filter(pa.array(simple))
    simple_device = None if line_device is None else line_device[numbers - 1]
    points, fallback = _fast_points(simple_lines, numbers, factor, devices, simple_device)
    if fallback.any():
        points = points.take_rows(~fallback)
    others = np.sort(np.concatenate([np.flatnonzero(~simple), numbers[fallback] - 1]))
    others = others[np.diff(_offsets(lines))[others] > 0]  # empty lines hold nothing
    if not len(others):
        return [points], []
    # The reference parser gets the lines as sent (it strips "\r" itself).
    raw = lines.take(pa.array(others)).to_pylist()
    if line_device is None:
        leftovers = zip((others + 1).tolist(), raw, repeat(devices[0]))
    else:
        owners = [devices[d] for d in line_device[others].tolist()]
        leftovers = zip((others + 1).tolist(), raw, owners, strict=True)
    reference, errors = _reference_points_each(leftovers, factor)
    return [points, reference], errors


def _fast_points(
    lines: pa.StringArray,
    numbers: Ints,
    factor: int,
    devices: Sequence[str | None],
    line_device: Ints | None,
) -> tuple[col.Points, Bools]:
    """Points of simple lines, and the rows the reference parser must redo."""
    parts = pc.split_pattern(lines, " ")  # series key, field set[, timestamp]
    starts = _offsets(parts)[:-1]
    flat = parts.values
    fallback = np.zeros(len(lines), bool)
    series_keys = flat.take(pa.array(starts))
    series, series_names = _series(series_keys, devices, line_device, fallback)
    has_time = np.diff(_offsets(parts)) == 3
    time = _times(flat.take(pa.array(starts[has_time] + 2)), factor, has_time, fallback)
    row, key, keys, pos, values = _field_pairs(flat.take(pa.array(starts + 1)))
    kind, slot, typed = _typed_values(values, row, fallback)
    _mark_duplicate_keys(row, key, len(keys), fallback)
    points = col.Points(numbers, series, series_names, time, has_time, row, key, keys, pos,
                        kind, slot, typed)  # fmt: skip
    return points, fallback


def _offsets(array: pa.Array) -> Ints:
    """The offsets buffer of a list or string array, as int64."""
    raw = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)
    return raw.astype(np.int64)


def _series(
    keys: pa.StringArray,
    devices: Sequence[str | None],
    line_device: Ints | None,
    fallback: Bools,
) -> tuple[Ints, list[tuple[str, str]]]:
    """Series per line: each distinct (key, device) pair is parsed once."""
    encoded = pc.dictionary_encode(keys)
    codes = encoded.indices.to_numpy()
    dictionary = encoded.dictionary.to_pylist()
    pairs: list[tuple[str, str | None]]
    if line_device is None or len(devices) == 1:
        pairs = [(key, devices[0]) for key in dictionary]
    else:
        ndev = len(devices)
        distinct, codes = np.unique(
            codes.astype(np.int64) * ndev + line_device, return_inverse=True
        )
        pairs = [(dictionary[c // ndev], devices[c % ndev]) for c in distinct.tolist()]
    names: dict[tuple[str, str], int] = {}
    ids = np.full(len(pairs), -1, np.int64)
    cache = _SERIES_CACHE
    for i, pair in enumerate(pairs):
        found = cache.get(pair)  # the common case, without a call per key
        if found is None or isinstance(found, str):
            try:
                found = parse_series_key(*pair)
            except Reject:
                continue  # bad keys stay -1: the reference parser says why
        ids[i] = names.setdefault(found, len(names))
    series = ids[codes]
    fallback |= series < 0
    return np.maximum(series, 0), list(names)


def _times(stamps: pa.StringArray, factor: int, has_time: Bools, fallback: Bools) -> Ints:
    time = np.zeros(len(has_time), np.int64)
    if not len(stamps):
        return time
    lengths = np.diff(_offsets(stamps))
    negative = _bytes(stamps)[_offsets(stamps)[:-1]] == ord("-")
    # Nanosecond stamps have 19 digits: those up to INT64_MAX are as safe as shorter ones.
    below_max = pc.less_equal(stamps, str(INT64_MAX)).to_numpy(zero_copy_only=False)
    short = (lengths - negative <= 18) | ((lengths == 19) & ~negative & below_max)
    safe = pc.if_else(pa.array(short), stamps, "0")
    values = pc.cast(safe, pa.int64()).to_numpy()
    limit = INT64_MAX // factor
    ok = short & (values <= limit) & (values >= -limit)
    where = np.flatnonzero(has_time)
    fallback[where[~ok]] = True
    time[where] = np.where(ok, values, 0) * factor
    return time


def _bytes(strings: pa.StringArray) -> npt.NDArray[np.uint8]:
    return np.frombuffer(strings.buffers()[2], np.uint8)


@dataclass
class _Values:
    """Field values as slices of one buffer: value ``i`` is ``data[start[i]:end[i]]``."""

    tokens: pa.StringArray  # key, "=", value for each pair, over the same buffer
    start: Ints
    end: Ints
    data: npt.NDArray[np.uint8]

    def strings(self, mask: Bools) -> pa.StringArray:
        """The values marked in ``mask``, as strings."""
        return self.tokens.take(pa.array(np.flatnonzero(mask) * 3 + 2))


def _field_pairs(field_sets: pa.StringArray) -> tuple[Ints, Ints, list[str], Ints, _Values]:
    """Split ``k=v,k2=v2`` field sets: (row, key code, keys, position, values) per pair."""
    pairs = pc.split_pattern(field_sets, ",")
    counts = np.diff(_offsets(pairs))
    row = np.repeat(np.arange(len(field_sets)), counts)
    pos = np.arange(len(row)) - np.repeat(_offsets(pairs)[:-1], counts)
    flat = pairs.values
    bounds, data = _offsets(flat), _bytes(flat)
    # A simple pair holds exactly one "=" (the line pattern says so): the n-th "=" in the
    # buffer is the n-th pair's. Cutting there gives keys and values without copying.
    eq = np.flatnonzero(data[bounds[0] : bounds[-1]] == ord("=")) + bounds[0]
    cuts = np.empty(3 * len(eq) + 1, np.int32)
    cuts[0:-1:3], cuts[1:-1:3], cuts[2:-1:3], cuts[-1] = bounds[:-1], eq, eq + 1, bounds[-1]
    tokens = pa.StringArray.from_buffers(len(cuts) - 1, pa.py_buffer(cuts), flat.buffers()[2])
    keys = pc.dictionary_encode(tokens.take(pa.array(np.arange(0, len(cuts) - 1, 3))))
    key = keys.indices.to_numpy().astype(np.int64)
    values = _Values(tokens, eq + 1, bounds[1:], data)
    return row, key, keys.dictionary.to_pylist(), pos, values


def _typed_values(values: _Values, row: Ints, fallback: Bools) -> tuple[Ints, Ints, list[pa.Array]]:
    """Kind and slot per value, and one typed array per kind."""
    kind = _KIND_BY_LAST[values.data[values.end - 1]]
    slot = np.zeros(len(kind), np.int64)
    typed = []
    for k in range(len(col.KIND_TYPES)):
        mask = kind == k
        slot[mask] = np.arange(np.count_nonzero(mask))
        if k == col.BOOLEAN:
            first = values.data[values.start[mask]]
            typed.append(pa.array((first == ord("t")) | (first == ord("T"))))
        elif k == col.FLOAT:
            floats = pc.cast(values.strings(mask), pa.float64())
            fallback[row[mask][np.isinf(floats.to_numpy())]] = True  # overflow: "out of range"
            typed.append(floats)
        elif k in _MAX_DIGITS:
            typed.append(_cast_integers(values, mask, row, k, fallback))
        else:
            typed.append(col.EMPTY_VALUES[k])
    return kind, slot, typed


def _cast_integers(values: _Values, mask: Bools, row: Ints, kind: int, fallback: Bools) -> pa.Array:
    start, end = values.start[mask], values.end[mask]
    digits = end - start - 1 - (values.data[start] == ord("-"))
    short = digits <= _MAX_DIGITS[kind]
    fallback[row[mask][~short]] = True  # maybe out of range: the reference parser decides
    stripped = pc.utf8_slice_codeunits(values.strings(mask), 0, -1)
    return pc.cast(pc.if_else(pa.array(short), stripped, "0"), col.KIND_TYPES[kind])


def _mark_duplicate_keys(row: Ints, key: Ints, nkeys: int, fallback: Bools) -> None:
    # Pairs are in row order, so after a stable sort by key equal (key, row) pairs touch.
    codes = key.astype(np.uint16) if nkeys <= 65536 else key
    order = np.argsort(codes, kind="stable")
    same = (key[order][1:] == key[order][:-1]) & (row[order][1:] == row[order][:-1])
    fallback[row[order][1:][same]] = True
