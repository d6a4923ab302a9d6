"""Properties of every codec: arbitrary bytes never crash one, encoded points come back
unchanged, and the line-protocol fast path always agrees with the reference parser."""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import cbor2
import msgpack
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motes.telemetry import codecs
from motes.telemetry.codecs import jsonpoints, lineprotocol, senml
from motes.telemetry.models import FIELD_TYPES, Decoded, DecodeError, format_tagset, parse_tagset

# Modest by default to keep the suite quick; MOTES_EXAMPLES_SCALE=50 for a deep run.
SCALE = int(os.environ.get("MOTES_EXAMPLES_SCALE", "1"))
FAST = settings(
    max_examples=60 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MEDIA_TYPES = sorted(codecs.CODECS)
Point = tuple[str, str, int | None, dict[str, Any]]


def points_of(decoded: Decoded) -> list[tuple[int, Point]]:
    """(source line, (measurement, tag set, time, {field: value})) for every decoded point."""
    out = []
    for frame in decoded.frames:
        assert frame.lines is not None
        for i, line in enumerate(frame.lines.to_pylist()):
            fields = {k: c[i].as_py() for k, c in frame.fields.items() if c[i].is_valid}
            point = (frame.measurement, frame.tagsets[i].as_py(), frame.time[i].as_py(), fields)
            out.append((line, point))
    return sorted(out, key=lambda item: item[0])


def decodes_safely(media_type: str, body: bytes, device: str | None) -> None:
    try:
        decoded = codecs.decode(media_type, body, device=device, measurement="m", precision=None)
    except DecodeError:
        return
    for frame in decoded.frames:
        assert set(frame.field_types()) == set(frame.fields)
        assert all(len(col) == len(frame) for col in frame.fields.values())


# -- robustness -------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(MEDIA_TYPES), st.binary(max_size=300), st.sampled_from([None, "d1"]))
def test_arbitrary_bytes_never_crash(media_type: str, body: bytes, device: str | None) -> None:
    decodes_safely(media_type, body, device)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "deviceinfo",
        "tsdata",
        "timestamp",
        "fields",
        "tags",
        "time",
        "measurement",
        "deviceid",
        "t",
        "bn",
        "n",
        "v",
        "vs",
        "bt",
        "s",
        "_x",
    ]
)
documents = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


@FAST
@given(documents, st.sampled_from([None, "d1", "sample"]))
def test_structured_documents_never_crash(doc: Any, device: str | None) -> None:
    """Near-miss documents of every shape, through JSON, MessagePack, SenML JSON and CBOR."""
    bodies = {"application/msgpack": msgpack.packb(doc), "application/cbor": cbor2.dumps(doc)}
    try:
        text = orjson.dumps(doc)
        bodies.update({"application/json": text, "application/senml+json": text})
    except TypeError:  # NaN-free JSON cannot hold every float or huge integer: fine
        pass
    for media_type, body in bodies.items():
        decodes_safely(media_type, body, device)


# -- line protocol: fast path == reference ----------------------------------------------------

_CHARS = st.sampled_from(list('ab_ ,="\\#\t\r1-.eEiutTfF0\u00e9+x'))
_JUNK = st.text(_CHARS, max_size=6)


def _mostly(clean: st.SearchStrategy[str], weird: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.integers(0, 29).flatmap(lambda i: weird if i == 0 else clean)


def _sep(clean: str, *weird: str) -> st.SearchStrategy[str]:
    return st.sampled_from([clean] * 30 + list(weird))


_NAME = _mostly(
    st.sampled_from(["m", "env", "cpu"]), st.sampled_from(["a\\ b", "_m", "a=b"]) | _JUNK
)
_TAG_KEY = _mostly(
    st.sampled_from(["device", "site", "a"]), st.sampled_from(["_t", "k\\=x", ""]) | _JUNK
)
_TAG_VALUE = _mostly(
    st.sampled_from(["d1", "d2", "x"]), st.sampled_from(["a\\ b", "", "a=b"]) | _JUNK
)
_FIELD_KEY = _mostly(
    st.sampled_from(["temp", "hum", "f"]), st.sampled_from(["_f", "a\\ b", ""]) | _JUNK
)
_CLEAN_VALUE = (
    st.sampled_from(
        ["1", "-1.5", "1e3", ".5", "5.", "12i", "-3i", "7u", "t", "FALSE", "True", "-0"]
    )
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.integers(-(2**63), 2**63 - 1).map(lambda i: f"{i}i")
    | st.integers(0, 2**64 - 1).map(lambda i: f"{i}u")
)
_WEIRD_VALUE = (
    st.sampled_from(['"s"', '"a b,c=d"', '"q\\"q"', '"open', "inf", "nan", "1e400", "+1", "1.5i"])
    | st.sampled_from(["9223372036854775808i", "18446744073709551616u", "-7u", "", "0x10", "1_0"])
    | st.integers(-(2**65), 2**65).map(lambda i: f"{i}i")
    | _JUNK
)  # fmt: skip
_TIMESTAMP = _mostly(
    st.just("") | st.integers(-(2**62), 2**62).map(lambda i: f" {i}"),
    st.sampled_from([" x", " 1 2", "  12 ", " 0x10", " 9223372036854775808", " +1", " "])
    | st.integers(-(2**64), 2**64).map(lambda i: f" {i}"),
)


@st.composite
def _lp_line(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 49)) == 0:
        return draw(st.text(_CHARS, max_size=30))
    line = draw(_NAME)
    for _ in range(draw(st.integers(0, 2))):
        line += draw(_sep(",", ", ", "")) + draw(_TAG_KEY) + draw(_sep("=", "")) + draw(_TAG_VALUE)
    line += draw(_sep(" ", "  ", "", "\t"))
    pairs = [
        draw(_FIELD_KEY) + draw(_sep("=", "", " = ")) + draw(_mostly(_CLEAN_VALUE, _WEIRD_VALUE))
        for _ in range(draw(st.integers(0, 4)))
    ]
    line += draw(_sep(",", ", ", ",,")).join(pairs) + draw(_TIMESTAMP)
    return draw(_sep("", " ", "#", "\t")) + line + draw(_sep("", "\r", " ", "\r\r"))


lp_bodies = st.lists(_lp_line(), max_size=15).map(lambda lines: "\n".join(lines).encode())


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
@given(lp_bodies, st.sampled_from(["ns", "ms"]), st.sampled_from([None, "d1"]))
def test_fast_path_matches_reference(body: bytes, precision: str, device: str | None) -> None:
    with mock.patch.object(lineprotocol, "FAST_PATH_MIN_BYTES", 0):
        fast = lineprotocol.decode(body, precision, device=device)
    assert fast == lineprotocol.decode_reference(body, precision, device=device)


# -- round trips ------------------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8)
_FIELD_VALUES = {
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "integer": st.integers(-(2**63), 2**63 - 1),
    "unsigned": st.integers(2**63, 2**64 - 1),  # the rest is written as integers anyway
    "boolean": st.booleans(),
    "string": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")),
}


@st.composite
def point_sets(draw: st.DrawFn, types: tuple[str, ...] = FIELD_TYPES) -> list[Point]:
    """Points whose fields keep one type each, as every codec requires within a body."""
    names = _TEXT.filter(lambda s: not s.startswith(("_", "#")))
    schema = draw(st.dictionaries(names, st.sampled_from(types), min_size=1, max_size=4))
    points = []
    for _ in range(draw(st.integers(1, 6))):
        fields = draw(st.lists(st.sampled_from(sorted(schema)), min_size=1, unique=True))
        tags = draw(st.dictionaries(names, _TEXT, max_size=2))
        time = draw(st.none() | st.integers(-(2**62), 2**62))
        values = {k: draw(_FIELD_VALUES[schema[k]]) for k in fields}
        points.append((draw(st.sampled_from(["env", "a b,c"])), format_tagset(tags), time, values))
    return points


def typed(points: list[tuple[int, Point]]) -> list[tuple[int, Point]]:
    """Field values paired with their Python type: True must not pass for 1."""
    return [
        (n, (m, t, time, {k: (type(v), v) for k, v in f.items()})) for n, (m, t, time, f) in points
    ]


def _escape(text: str, specials: str) -> str:
    for ch in "\\" + specials:
        text = text.replace(ch, "\\" + ch)
    return text


def to_line_protocol(point: Point) -> str:
    measurement, tagset, time, fields = point
    values = []
    for key, value in fields.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = f"{value}{'u' if value > 2**63 - 1 else 'i'}"
        values.append(f"{_escape(key, ',= ')}={text}")
    series = _escape(measurement, ", ") + ("," + tagset if tagset else "")
    return f"{series} {','.join(values)}" + ("" if time is None else f" {time}")


@FAST
@given(point_sets())
def test_line_protocol_round_trip(points: list[Point]) -> None:
    body = "\n".join(to_line_protocol(p) for p in points).encode()
    decoded = lineprotocol.decode(body)
    assert decoded.errors == []
    assert typed(points_of(decoded)) == typed(list(enumerate(points, 1)))


@FAST
@given(point_sets(types=("float", "integer", "boolean", "string")))
def test_json_and_msgpack_points_round_trip(points: list[Point]) -> None:
    records = [
        {"measurement": m, "tags": parse_tagset(tags), "fields": fields, "time": time}
        for m, tags, time, fields in points
    ]
    for decoded in (
        jsonpoints.decode_json(orjson.dumps(records), precision="ns"),
        jsonpoints.decode_msgpack(msgpack.packb(records), precision="ns"),
    ):
        assert decoded.errors == []
        assert typed(points_of(decoded)) == typed(list(enumerate(points, 1)))


@FAST
@given(point_sets(types=("float", "integer", "boolean", "string")))
def test_device_batch_round_trip_and_fast_path(points: list[Point]) -> None:
    rows = [{**fields, "timestamp": (time or 0) // 10**7} for _, _, time, fields in points]
    decoded = jsonpoints.decode_json(orjson.dumps({"tsdata": rows}), device="d1")
    assert decoded.errors == []
    expected = [
        (i, ("telemetry", "device=d1", row.pop("timestamp") * 10**6, row))
        for i, row in enumerate([dict(r) for r in rows], 1)
    ]
    assert typed(points_of(decoded)) == typed(expected)
    # The column-at-a-time path must equal the record-at-a-time one.
    slow = jsonpoints._records(
        rows, lambda row: ("telemetry", "device=d1", *jsonpoints._batch_row(row, 10**6))
    )
    assert slow == decoded


_SENML_NAMES = st.from_regex(r"[a-z][a-z0-9:./_-]{0,6}", fullmatch=True)
_SENML_VALUES = (
    st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.text(max_size=5)
)
_LABELS = {"bn": -2, "n": 0, "v": 2, "vs": 3, "vb": 4, "t": 6}


@FAST
@given(st.lists(st.tuples(_SENML_NAMES, _SENML_VALUES, st.integers(2**28, 2**33)), min_size=1))
def test_senml_round_trip(records: list[tuple[str, Any, int]]) -> None:
    first_type: dict[str, type] = {}
    records = [r for r in records if first_type.setdefault(r[0], type(r[1])) is type(r[1])]
    label = {bool: "vb", str: "vs", float: "v"}
    pack: list[dict[str, Any]] = [{"n": n, label[type(v)]: v, "t": t} for n, v, t in records]
    pack[0]["bn"] = "urn:dev:x:"
    cbor_pack = [{_LABELS[k]: v for k, v in record.items()} for record in pack]
    expected = [
        (i, ("m", "device=urn:dev:x", t * 10**9, {n: v})) for i, (n, v, t) in enumerate(records, 1)
    ]
    for decoded in (
        senml.decode_senml_json(orjson.dumps(pack), measurement="m"),
        senml.decode_senml_cbor(cbor2.dumps(cbor_pack), measurement="m"),
    ):
        assert decoded.errors == []
        assert typed(points_of(decoded)) == typed(expected)
