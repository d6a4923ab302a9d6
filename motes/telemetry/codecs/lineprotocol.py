"""InfluxDB line protocol -> frames, vectorised.

Usage::

    decoded = decode(b"env,device=d1 temperature=21.5,count=3i 1700000000000000000")
    decoded.frames[0].fields["temperature"]  # <pyarrow.DoubleArray> [21.5]

The syntax is InfluxDB 2's: ``measurement[,tag=value...] field=value[,...] [timestamp]``.

- ``\\,`` ``\\=`` ``\\ `` and ``\\\\`` are escapes in measurements, tag keys and values and
  field keys; ``\\"`` and ``\\\\`` in string field values; any other backslash is literal.
- Field values: floats (``1``, ``-1.5e3``; ``inf``/``nan`` rejected), integers ``12i``,
  unsigned ``12u``, booleans ``t T true True TRUE f F false False FALSE``, strings
  ``"..."`` (one line: an unterminated quote is an error).
- Timestamps are integers in ``precision`` units; a point without one gets a null time.
- Leading spaces/tabs, blank lines and ``#`` comment lines are skipped, ``\\r\\n`` accepted.
- Tag and field keys must not start with ``_`` (reserved, as in InfluxDB); duplicate tag
  keys are an error, duplicate field keys in a line: the last one wins.
- A field's type is the type of its first value in the body; later lines giving it another
  type are rejected. Lines are checked in syntax first, so a line rejected for its
  syntax does not decide a type.
- When ``device`` is given every point gets the tag ``device=<device>`` and a point tagged
  with another device is rejected.

A bad line becomes a ``PointError(line, message)`` and the other lines are still decoded,
like InfluxDB's partial writes. Two decoders share one output: :func:`decode_reference`
parses line by line in Python (clear, precise, ~0.2M points/s); :func:`decode` sends the
lines it can prove simple through pyarrow.compute (GIL released, several M points/s) and
the rest through the reference parser, then both go through the same assembly, so they
return identical results for any input (tested by a differential property test).

:func:`decode_batch` decodes many small bodies (MQTT messages), each with its own device,
in one pass: the result equals decoding each body alone, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.columns import Ints
from motes.telemetry.codecs.lpfast import decode_fast, fast_points
from motes.telemetry.codecs.lpref import (
    _reference_points,
    _reference_points_each,
    assemble,
    parse_line,
    parse_series_key,
)
from motes.telemetry.models import Decoded, DecodeError, Frame, PointError

__all__ = [
    "FAST_PATH_MIN_BYTES",
    "decode",
    "decode_batch",
    "decode_reference",
    "parse_line",
    "parse_series_key",
]

# Below this size (~40 lines) the fixed cost of the Arrow calls outweighs their speed
# (measured for decode_batch too: its crossover is at 4-6 KB of joined bodies).
FAST_PATH_MIN_BYTES = 4096
MAX_BODY_BYTES = 2**30  # Arrow string offsets are int32; servers cap bodies far lower anyway


def decode(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode a line-protocol body whose timestamps are in ``precision`` units (ns, us,
    ms, s); bad lines become ``Decoded.errors``, the others frames."""
    factor = col.precision_factor(precision)
    if len(body) > MAX_BODY_BYTES:
        raise DecodeError(_too_big(body))
    if len(body) < FAST_PATH_MIN_BYTES:
        return decode_reference(body, precision, device=device)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return decode_reference(body, precision, device=device)  # rare: a broken client
    return decode_fast(text, factor, device)


def _too_big(body: bytes) -> str:
    return f"body of {len(body)} bytes: split it into bodies under 1 GiB"


def decode_reference(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode line by line in Python: the specification :func:`decode` must match."""
    factor = col.precision_factor(precision)
    points, errors = _reference_points(enumerate(body.split(b"\n"), 1), factor, device)
    return assemble([points], errors)


# -- many bodies at once ----------------------------------------------------------------------


def decode_batch(
    bodies: Sequence[bytes],
    devices: Sequence[str | None],
    precision: str = "ns",
    *,
    joined_lines: bool = False,
) -> tuple[Decoded, list[list[PointError]]]:
    """Decode many bodies, ``devices[i]`` being the device of ``bodies[i]`` (as
    ``decode(bodies[i], precision, device=devices[i])`` takes it).

    Returns the frames of every good point (``errors`` empty) and each body's errors, with
    line numbers relative to that body. The same as decoding each body alone and
    concatenating the frames: field types are settled per body, so two bodies may give a
    field different types (their points then land in different frames of the same
    measurement), and ``Frame.lines`` are line numbers within each point's own body.
    Points of one series may come in another order. A body that :func:`decode` would
    refuse whole (over 1 GiB, too sparse) gets the single error ``PointError(None, why)``.
    An unknown ``precision`` raises :class:`DecodeError` for the whole batch.

    ``joined_lines``: ``Frame.lines`` count on across bodies, as if they were joined by
    newlines in order (body *i* starts at 1 + the lines of the bodies before it, a body
    having its newlines + 1), so that what a later stage refuses can be traced back to its
    body (:func:`joined_firsts`). The errors returned stay per body.
    """
    col.precision_factor(precision)  # an unknown one fails the whole batch, up front
    if len(bodies) != len(devices):
        raise ValueError(f"{len(bodies)} bodies but {len(devices)} devices")
    errors: list[list[PointError]] = [[] for _ in bodies]
    if not bodies:
        return Decoded(), errors
    counts = _line_counts(bodies)
    bases = np.cumsum(counts) - counts if joined_lines else np.zeros(len(bodies), np.int64)
    if sum(map(len, bodies)) + len(bodies) <= MAX_BODY_BYTES:  # the common case: one pass
        everything = list(range(len(bodies)))
        return Decoded(
            frames=_decode_chunk(bodies, devices, everything, precision, errors, bases, counts)
        ), errors
    frames: list[Frame] = []
    chunk: list[int] = []
    size = 0
    for i, body in enumerate(bodies):
        if len(body) > MAX_BODY_BYTES:
            errors[i] = [PointError(None, _too_big(body))]
            continue
        if size + len(body) + 1 > MAX_BODY_BYTES:  # Arrow string offsets are int32
            frames += _decode_chunk(bodies, devices, chunk, precision, errors, bases, counts)
            chunk, size = [], 0
        chunk.append(i)
        size += len(body) + 1
    if chunk:
        frames += _decode_chunk(bodies, devices, chunk, precision, errors, bases, counts)
    return Decoded(frames=frames), errors


def joined_firsts(bodies: Sequence[bytes]) -> Ints:
    """The number of each body's first line in the bodies joined by newlines (1-based)."""
    counts = _line_counts(bodies)
    firsts: Ints = np.cumsum(counts) - counts + 1
    return firsts


def _line_counts(bodies: Sequence[bytes]) -> Ints:
    counts: Ints = np.fromiter((body.count(b"\n") for body in bodies), np.int64, len(bodies))
    return counts + 1


def _decode_chunk(
    all_bodies: Sequence[bytes],
    all_devices: Sequence[str | None],
    which: list[int],
    precision: str,
    errors: list[list[PointError]],
    bases: Ints,
    all_counts: Ints,
) -> list[Frame]:
    """Decode the bodies numbered ``which`` together; fill their ``errors``. Frame lines
    are within each body, plus that body's ``bases`` entry; ``all_counts`` are the
    bodies' line counts."""
    if len(which) == 1:
        try:
            decoded = decode(all_bodies[which[0]], precision, device=all_devices[which[0]])
        except DecodeError as exc:
            errors[which[0]] = [PointError(None, exc.message)]
            return []
        errors[which[0]] = decoded.errors
        base = int(bases[which[0]])
        if base:
            for frame in decoded.frames:
                if frame.lines is not None:
                    frame.lines = pc.add(frame.lines, pa.scalar(base, frame.lines.type))
        return decoded.frames
    factor = col.precision_factor(precision)
    everything = len(which) == len(all_bodies)
    bodies = list(all_bodies) if everything else [all_bodies[i] for i in which]
    counts = all_counts if everything else all_counts[which]  # lines per body
    firsts = np.cumsum(counts) - counts + 1  # number of each body's first line, joined
    owners: dict[str | None, int] = {}
    chunk_devices = all_devices if everything else [all_devices[i] for i in which]
    body_device = np.fromiter(
        (owners.setdefault(d, len(owners)) for d in chunk_devices), np.int64, len(bodies)
    )
    devices = list(owners)
    line_device = np.repeat(body_device, counts)
    joined = b"\n".join(bodies)
    extra: list[tuple[int, bytes | str, str | None]] = []
    try:
        text = joined.decode("utf-8")
    except UnicodeDecodeError:  # rare: such bodies go line by line, as decode() does
        text, extra = _without_broken_bodies(bodies, counts, firsts, devices, body_device)
    if len(text) >= FAST_PATH_MIN_BYTES:
        parts, line_errors = fast_points(text, factor, devices, line_device)
    else:
        lines = text.split("\n")
        numbered = [
            (n, raw, devices[d])
            for n, raw, d in zip(range(1, len(lines) + 1), lines, line_device.tolist(), strict=True)
            if raw
        ]
        part, line_errors = _reference_points_each(numbered, factor)
        parts = [part]
    if extra:
        part, more = _reference_points_each(extra, factor)
        parts.append(part)
        line_errors += more
    points, conflicts = _first_kind_per_body(col.concat(parts), firsts)
    points, refused = _drop_too_sparse(points, firsts)
    for b, message in refused.items():
        errors[which[b]] = [PointError(None, message)]
    try:
        frames = _to_frames(points, firsts, bases[which])
    except DecodeError:  # too sparse together, though no body is alone: halve the batch
        half = len(which) // 2
        return [
            *_decode_chunk(all_bodies, all_devices, which[:half], precision, errors, bases,
                           all_counts),
            *_decode_chunk(all_bodies, all_devices, which[half:], precision, errors, bases,
                           all_counts),
        ]  # fmt: skip
    for error in sorted([*line_errors, *conflicts], key=lambda e: e.line or 0):
        line = error.line or 0  # line protocol errors always have one
        b = int(np.searchsorted(firsts, line, "right")) - 1
        if b not in refused:
            errors[which[b]].append(PointError(line - int(firsts[b]) + 1, error.message))
    return frames


def _without_broken_bodies(
    bodies: list[bytes],
    counts: Ints,
    firsts: Ints,
    devices: list[str | None],
    body_device: Ints,
) -> tuple[str, list[tuple[int, bytes | str, str | None]]]:
    """The joined text with each body that is not UTF-8 replaced by as many empty lines,
    and those bodies' lines, numbered, for the reference parser."""
    texts: list[str] = []
    extra: list[tuple[int, bytes | str, str | None]] = []
    for b, body in enumerate(bodies):
        try:
            texts.append(body.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append("\n" * int(counts[b] - 1))
            device = devices[body_device[b]]
            first = int(firsts[b])
            extra += [(first + k, line, device) for k, line in enumerate(body.split(b"\n"))]
    return "\n".join(texts), extra


def _body_of(lines: Ints, firsts: Ints) -> Ints:
    return np.searchsorted(firsts, lines, "right") - 1


def _first_kind_per_body(p: col.Points, firsts: Ints) -> tuple[col.Points, list[PointError]]:
    """:func:`columns.first_kind_wins` within each body (line numbers stay joined)."""
    groups = col.field_groups(p)
    kinds = p.kind[groups.order]
    sizes = groups.ends - groups.starts
    if (kinds == np.repeat(kinds[groups.starts], sizes)).all():
        return p, []  # every field has one type in the whole batch: the common case
    group = np.repeat(np.arange(len(sizes)), sizes)  # per record in groups.order
    body = _body_of(p.line, firsts)[p.row[groups.order]]
    # Records are in source order, so after a stable sort each (field, body) starts
    # with its first value in that body.
    order = np.argsort(group * len(firsts) + body, kind="stable")
    code = (group * len(firsts) + body)[order]
    starts = np.flatnonzero(np.concatenate([[True], code[1:] != code[:-1]]))
    expected = np.repeat(kinds[order][starts], np.diff(np.append(starts, len(code))))
    wrong = np.flatnonzero(kinds[order] != expected)
    if not len(wrong):
        return p, []
    return col.reject_conflicts(p, groups.order[order][wrong], expected[wrong])


def _drop_too_sparse(p: col.Points, firsts: Ints) -> tuple[col.Points, dict[int, str]]:
    """Drop the bodies :func:`decode` would refuse as too sparse: (points left, why per
    refused body)."""
    if len(p.line) * len(p.keys) <= col.MIN_CELLS_LIMIT:
        return p, {}  # no body can reach the limit
    names: dict[str, int] = {}
    meas = np.array([names.setdefault(m, len(names)) for m, _ in p.series_names], np.int64)
    body = _body_of(p.line, firsts)
    # Cells of a body: for each of its measurements, rows x distinct field keys.
    body_meas, inverse = np.unique(body * len(names) + meas[p.series], return_inverse=True)
    rows = np.bincount(inverse, minlength=len(body_meas))
    pairs = np.unique(inverse[p.row] * max(len(p.keys), 1) + p.key) // max(len(p.keys), 1)
    fields = np.bincount(pairs, minlength=len(body_meas))
    cells = np.bincount(body_meas // len(names), rows * fields, minlength=len(firsts))
    points = np.bincount(body[p.row], minlength=len(firsts))
    bad = np.flatnonzero(cells > np.maximum(col.MAX_CELLS_PER_POINT * points, col.MIN_CELLS_LIMIT))
    refused = {}
    for b in bad.tolist():
        try:
            col._check_density(int(cells[b]), int(points[b]))
        except DecodeError as exc:
            refused[b] = exc.message
    if not refused:
        return p, {}
    return p.take_rows(~np.isin(body, list(refused))), refused


def _to_frames(p: col.Points, firsts: Ints, bases: Ints) -> list[Frame]:
    """Canonical frames, one per measurement and field types; lines within each body
    (plus the body's entry in ``bases``)."""
    groups = col.field_groups(p)
    kinds = p.kind[groups.order]
    sizes = groups.ends - groups.starts
    split = not (kinds == np.repeat(kinds[groups.starts], sizes)).all()
    body = _body_of(p.line, firsts)
    if split:
        p = _split_by_types(p, groups, body)
        groups = col.field_groups(p)
    frames = col.to_frames(replace(p, line=p.line - firsts[body] + 1 + bases[body]), groups)
    if split:
        for frame in frames:
            frame.measurement = frame.measurement.partition("\n")[0]
    return frames


def _split_by_types(p: col.Points, groups: col.Groups, body: Ints) -> col.Points:
    """Give a measurement whose fields have different types in different bodies one
    variant per combination of those types: ``"name\\n<variant>"`` (no line holds a
    newline, so no real measurement is named so)."""
    sizes = groups.ends - groups.starts
    group = np.repeat(np.arange(len(sizes)), sizes)
    kinds = p.kind[groups.order]
    mixed = np.zeros(len(sizes), bool)
    mixed[group[kinds != np.repeat(kinds[groups.starts], sizes)]] = True
    recs = groups.order[mixed[group]]
    in_mixed = mixed[group]
    triples = zip(
        body[p.row[recs]].tolist(), group[in_mixed].tolist(), p.kind[recs].tolist(), strict=True
    )
    nmeas = len(groups.measurements)
    signatures: dict[int, list[tuple[int, int]]] = {}  # body * nmeas + measurement -> types
    for b, g, kind in sorted(set(triples)):
        signatures.setdefault(b * nmeas + int(groups.measurement[g]), []).append((g, kind))
    variants: dict[tuple[int, tuple[tuple[int, int], ...]], int] = {}
    keys = np.array(sorted(signatures), np.int64)
    values = np.array(
        [variants.setdefault((k % nmeas, tuple(signatures[k])), len(variants) + 1) for k in keys]
    )
    ids = {name: i for i, name in enumerate(groups.measurements)}
    meas = np.array([ids[m] for m, _ in p.series_names], np.int64)[p.series]
    where = np.minimum(np.searchsorted(keys, body * nmeas + meas), len(keys) - 1)
    variant = np.where(keys[where] == body * nmeas + meas, values[where], 0)
    width = len(variants) + 1
    distinct, series = np.unique(p.series * width + variant, return_inverse=True)
    names = []
    for code in distinct.tolist():
        measurement, tagset = p.series_names[code // width]
        names.append((f"{measurement}\n{code % width}" if code % width else measurement, tagset))
    return replace(p, series=series, series_names=names)
