"""decode_batch: many small line-protocol bodies (MQTT messages), each with its own device,
decoded in one pass, must equal decoding each body alone."""

from __future__ import annotations

from collections import Counter
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motes.telemetry.codecs import lineprotocol
from motes.telemetry.codecs.lineprotocol import decode, decode_batch
from motes.telemetry.models import Decoded, DecodeError, PointError
from tests.test_codecs_properties import SCALE, _lp_line

DEVICES = [None, "d1", "d2", "x"]


def point_multiset(frames: Decoded | list[Decoded]) -> Counter[tuple[Any, ...]]:
    """(line, measurement, tag set, time, {field: (type, value)}) of every point."""
    out: Counter[tuple[Any, ...]] = Counter()
    for decoded in frames if isinstance(frames, list) else [frames]:
        for frame in decoded.frames:
            assert frame.lines is not None
            for i, line in enumerate(frame.lines.to_pylist()):
                fields = tuple(
                    sorted(
                        (k, str(c.type), c[i].as_py())
                        for k, c in frame.fields.items()
                        if c[i].is_valid
                    )
                )
                point = (line, frame.measurement, frame.tagsets[i].as_py(), frame.time[i].as_py())
                out[(*point, fields)] += 1
    return out


def one_by_one(
    bodies: list[bytes], devices: list[str | None], precision: str = "ns"
) -> tuple[list[Decoded], list[list[PointError]]]:
    decoded, errors = [], []
    for body, device in zip(bodies, devices, strict=True):
        try:
            alone = decode(body, precision, device=device)
        except DecodeError as exc:
            alone = Decoded(errors=[PointError(None, exc.message)])
        decoded.append(Decoded(frames=alone.frames))
        errors.append(alone.errors)
    return decoded, errors


def assert_same_as_one_by_one(
    bodies: list[bytes], devices: list[str | None], precision: str = "ns"
) -> Decoded:
    batch, errors = decode_batch(bodies, devices, precision)
    expected, expected_errors = one_by_one(bodies, devices, precision)
    assert batch.errors == []
    assert errors == expected_errors
    assert point_multiset(batch) == point_multiset(expected)
    for frame in batch.frames:  # well formed: one type per column, columns as long as rows
        assert "\n" not in frame.measurement
        assert all(len(column) == len(frame) for column in frame.fields.values())
        assert frame.point_count > 0
    return batch


# -- property ---------------------------------------------------------------------------------

_DEVICE_LINE = st.builds(
    lambda m, d, v: f"{m},device={d} f={v}",
    st.sampled_from(["m", "env"]),
    st.sampled_from(["d1", "d2", "x"]),
    st.sampled_from(["1", "2i", "t", "3u"]),
)
_LINES = st.lists(_lp_line() | _DEVICE_LINE, max_size=5)


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    lines = draw(_LINES)
    body = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    body += draw(st.sampled_from(["", "", "\n", "\r\n", "\n\n"]))
    raw = body.encode()
    if draw(st.integers(0, 19)) == 0:  # a broken client: not UTF-8
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + b"\xff" + raw[at:]
    return raw


_BATCHES = st.lists(st.tuples(_body(), st.sampled_from(DEVICES)), max_size=12)


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(_BATCHES, st.sampled_from(["ns", "ms"]), st.booleans())
def test_batch_equals_one_body_at_a_time(
    batch: list[tuple[bytes, str | None]], precision: str, fast: bool
) -> None:
    bodies, devices = [b for b, _ in batch], [d for _, d in batch]
    with mock.patch.object(lineprotocol, "FAST_PATH_MIN_BYTES", 0 if fast else 2**20):
        assert_same_as_one_by_one(bodies, devices, precision)


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(_BATCHES, st.booleans())
def test_joined_lines_number_every_body_on_from_the_last(
    batch: list[tuple[bytes, str | None]], fast: bool
) -> None:
    """With ``joined_lines`` the points are the same, each line shifted by the lines of the
    bodies before it: a point's body is found again from its line number alone."""
    bodies, devices = [b for b, _ in batch], [d for _, d in batch]
    with mock.patch.object(lineprotocol, "FAST_PATH_MIN_BYTES", 0 if fast else 2**20):
        joined, errors = decode_batch(bodies, devices, joined_lines=True)
        expected, expected_errors = one_by_one(bodies, devices)
    assert errors == expected_errors  # errors stay per body
    firsts = lineprotocol.joined_firsts(bodies).tolist() if bodies else []
    shifted = Counter()
    for first, decoded in zip(firsts, expected, strict=True):
        for (line, *rest), n in point_multiset(decoded).items():
            shifted[(line + first - 1, *rest)] += n
    assert point_multiset(joined) == shifted


# -- examples ---------------------------------------------------------------------------------


def test_error_lines_are_relative_to_their_body() -> None:
    bodies = [b"m f=1\nm f=x", b"m f=2\n\nm g=\n", b"m f=3", b""]
    batch, errors = decode_batch(bodies, ["a", "b", "c", "d"])
    assert errors == [
        [PointError(2, 'invalid field value "x" for field "f"')],
        [PointError(3, 'missing value for field "g"')],
        [],
        [],
    ]
    (frame,) = batch.frames
    assert frame.lines is not None and frame.lines.to_pylist() == [1, 1, 1]
    assert frame.tagsets.to_pylist() == ["device=a", "device=b", "device=c"]
    joined, _ = decode_batch(bodies, ["a", "b", "c", "d"], joined_lines=True)
    assert lineprotocol.joined_firsts(bodies).tolist() == [1, 3, 7, 8]
    assert joined.frames[0].lines.to_pylist() == [1, 3, 7]


def test_device_tag_mismatch_rejects_only_that_line() -> None:
    bodies = [b"m,device=d1 f=1", b"m f=2\nm,device=d1 f=3\nm,device=d2 f=4", b"m f=5"]
    batch, errors = decode_batch(bodies, ["d1", "d2", None])
    assert errors == [[], [PointError(2, 'tag device="d1" does not match device "d2"')], []]
    (frame,) = batch.frames
    assert frame.tagsets.to_pylist() == ["device=d1", "device=d2", "device=d2", ""]
    assert frame.fields["f"].to_pylist() == [1.0, 2.0, 4.0, 5.0]


def test_field_types_are_settled_per_body() -> None:
    bodies = [b"m f=1 1", b"m f=1i 2\nm f=2 3", b"m f=2 4", b"cpu f=t 5"]
    batch, errors = decode_batch(bodies, ["a", "b", "c", "d"])
    assert errors == [
        [],
        [PointError(2, 'field type conflict within batch: "f" is integer and float')],
        [],
        [],
    ]
    frames = {(f.measurement, f.field_types()["f"]): f for f in batch.frames}
    assert sorted(frames) == [("cpu", "boolean"), ("m", "float"), ("m", "integer")]
    assert frames["m", "float"].time.to_pylist() == [1, 4]
    assert frames["m", "integer"].time.to_pylist() == [2]
    assert_same_as_one_by_one(bodies, ["a", "b", "c", "d"])


def test_many_tiny_messages_take_the_fast_path() -> None:
    bodies = [f"m,sensor=a v={i}.5 {1700000000000000000 + i}".encode() for i in range(1000)]
    devices = [f"dev{i % 100:03d}" for i in range(1000)]
    bodies[7] = b"m,device=other v=1"
    bodies[8] = b"m v=\xff"
    bodies[9] = b"m v=1i 9\nm v=2 10\n"
    assert sum(map(len, bodies)) > lineprotocol.FAST_PATH_MIN_BYTES
    with mock.patch.object(lineprotocol, "fast_points", wraps=lineprotocol.fast_points) as spy:
        batch = assert_same_as_one_by_one(bodies, devices)
    spy.assert_called_once()
    assert batch.point_count == 997 + 1
    assert len(batch.frames) == 2  # v is a float in every body but one


def test_a_body_refused_whole_does_not_sink_the_others() -> None:
    sparse = "\n".join(f"m f{i}=1" for i in range(2100)).encode()  # too sparse alone
    bodies = [b"m f0=1", sparse, b"m f1=2\nm f1=x"]
    batch, errors = decode_batch(bodies, [None, None, None])
    assert errors[0] == []
    assert errors[1][0].line is None and errors[1][0].message.startswith("too sparse")
    assert errors[2] == [PointError(2, 'invalid field value "x" for field "f1"')]
    assert batch.point_count == 2


def test_oversized_bodies_and_chunks() -> None:
    bodies = [b"m f=1 1", b"m f=" + b"1" * 60, b"m f=2 2\nm f=3 3", b"m f=x", b"m f=4 4"]
    with mock.patch.object(lineprotocol, "MAX_BODY_BYTES", 20):  # chunks of 2 bodies at most
        batch, errors = decode_batch(bodies, ["a", "b", "c", "d", "e"])
    assert errors == [
        [],
        [PointError(None, "body of 64 bytes: split it into bodies under 1 GiB")],
        [],
        [PointError(1, 'invalid field value "x" for field "f"')],
        [],
    ]
    assert sorted(t for f in batch.frames for t in f.time.to_pylist()) == [1, 2, 3, 4]


def test_bodies_too_sparse_only_together_are_split() -> None:
    bodies = [f"m f{i}=1 {i}".encode() for i in range(2100)]  # 2100 x 2100 cells as one frame
    batch = assert_same_as_one_by_one(bodies, [None] * len(bodies))
    assert batch.point_count == 2100


def test_edge_cases() -> None:
    assert decode_batch([], []) == (Decoded(), [])
    with pytest.raises(ValueError, match="1 bodies but 2 devices"):
        decode_batch([b"m f=1"], ["a", "b"])
    with pytest.raises(DecodeError, match="unknown precision"):
        decode_batch([b"m f=1"], ["a"], "h")
    batch, errors = decode_batch([b"m f=1 1582046738255", b"m f=1 2"], ["a", "b"], "ms")
    assert errors == [[], []]
    assert batch.frames[0].time.to_pylist() == [1582046738255 * 10**6, 2 * 10**6]
