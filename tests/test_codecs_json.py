"""JSON and MessagePack codecs, and the media-type registry."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from motes.telemetry import codecs
from motes.telemetry.codecs import UnsupportedMediaType
from motes.telemetry.codecs.jsonpoints import decode_json, decode_msgpack
from motes.telemetry.models import Decoded, DecodeError, Frame, PointError

# Seed 000's curl example, byte for byte (its odd spacing included).
SEED_000_CURL = b"""{ 
    "deviceinfo" : { "deviceid": "sample", "fw_ver" : "12345.009", "batt_lvl": 78 }, 

    "tsdata": [ 

            { "day": 18, "dayofweek": 2, "hour": 17, "humidity": 75.0,  

              "illuminance": 74.0, "month": 2, "motion": false, "temperature": 78.0, 

              "timestamp": 1582046738255 }, 

            { "day": 18, "dayofweek": 2, "hour": 17, "humidity": 66.0,  
              "illuminance": 96.0, "month": 2, "motion": false, "temperature": 82.0, 

              "timestamp": 1582046748255 },  
            { "day": 18, "dayofweek": 2, "hour": 17, "humidity": 67.0,  

              "illuminance": 93.0, "month": 2, "motion": false, "temperature": 81.0, 

              "timestamp": 1582046758255 },  

            { "day": 18, "dayofweek": 2, "hour": 17, "humidity": 77.0,  

              "illuminance": 95.0, "month": 2, "motion": true , "temperature": 80.0,  

              "timestamp": 1582046768255 },  

            { "day": 18, "dayofweek": 2, "hour": 17, "humidity": 70.0, 

               "illuminance": 90.0, "month": 2, "motion": false, "temperature": 79.0,  

               "timestamp": 1582046778255 },  

            { "day": 18, "dayofweek": 2, "hour": 17, "humidity": 66.0, 

               "illuminance": 86.0, "month": 2, "motion": false, "temperature": 77.0, 

               "timestamp": 1582046788255 } 

    ] 

}"""  # noqa: W291


def columns(frame: Frame) -> dict[str, list[object]]:
    return {name: col.to_pylist() for name, col in frame.fields.items()}


def batch(*rows: dict[str, object], **info: object) -> bytes:
    doc: dict[str, object] = {"tsdata": list(rows)}
    if info:
        doc["deviceinfo"] = info
    return orjson.dumps(doc)


def test_seed_000_curl_body() -> None:
    decoded = decode_json(SEED_000_CURL, device="sample")
    assert decoded.errors == []
    assert decoded.attributes == {"deviceid": "sample", "fw_ver": "12345.009", "batt_lvl": 78}
    (frame,) = decoded.frames
    assert len(frame) == 6 and frame.measurement == "telemetry"
    assert frame.field_types() == {
        "day": "integer",
        "dayofweek": "integer",
        "hour": "integer",
        "month": "integer",
        "humidity": "float",
        "illuminance": "float",
        "temperature": "float",
        "motion": "boolean",
    }
    assert frame.time.to_pylist() == [(1582046738255 + i * 10_000) * 10**6 for i in range(6)]
    assert frame.tagsets.to_pylist() == ["device=sample"] * 6
    assert columns(frame)["motion"] == [False, False, False, True, False, False]
    assert columns(frame)["temperature"] == [78.0, 82.0, 81.0, 80.0, 79.0, 77.0]
    assert frame.coerce_numbers


def test_seed_000_deviceid_mismatch() -> None:
    with pytest.raises(DecodeError) as info:
        decode_json(SEED_000_CURL, device="other")
    assert info.value.message == (
        "deviceinfo.deviceid 'sample' does not match device 'other' in the path"
    )


def test_deviceinfo_alone_and_device_required() -> None:
    decoded = decode_json(b'{"deviceinfo": {"fw_ver": "2"}}', device="d1")
    assert decoded == Decoded(attributes={"fw_ver": "2"})
    with pytest.raises(DecodeError, match="needs its device in the path"):
        decode_json(SEED_000_CURL, device=None)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"t": 1.0}, 'no "timestamp"'),
        ({"timestamp": "1582046738255", "t": 1.0}, '"timestamp" must be an integer'),
        ({"timestamp": 1.5, "t": 1.0}, '"timestamp" must be an integer'),
        ({"timestamp": 1}, 'no fields besides "timestamp"'),
        ({"timestamp": 1, "t": None}, 'no fields besides "timestamp"'),
        ({"timestamp": 1, "pos": {"x": 1}}, 'field "pos" is an object'),
        ({"timestamp": 1, "v": [1, 2]}, 'field "v" is an array'),
        ({"timestamp": 1, "_v": 1}, 'field name "_v" is reserved'),
        ({"timestamp": 1, "v": 2**63}, 'integer value 9223372036854775808 for field "v"'),
        ({"timestamp": 2**62, "v": 1}, '"timestamp" 4611686018427387904 is out of range'),
        (5, "a tsdata record must be an object"),
    ],
)
def test_seed_000_bad_record(row: object, message: str) -> None:
    body = orjson.dumps({"tsdata": [{"timestamp": 1, "t": 1.5}, row, {"timestamp": 3, "t": 2.5}]})
    decoded = decode_json(body, device="d1")
    assert [e.line for e in decoded.errors] == [2]
    assert decoded.errors[0].message.startswith(message)
    assert columns(decoded.frames[0]) == {"t": [1.5, 2.5]}


def test_integers_promote_to_float_and_nulls_are_skipped() -> None:
    decoded = decode_json(
        batch({"timestamp": 1, "h": 75, "x": None}, {"timestamp": 2, "h": 75.5}), device="d"
    )
    assert decoded.frames[0].field_types() == {"h": "float"}
    assert columns(decoded.frames[0]) == {"h": [75.0, 75.5]}


def test_mixed_types_reject_the_minority() -> None:
    rows = [{"timestamp": i, "m": v} for i, v in enumerate([True, 1, False, 2.5, "on"], 1)]
    decoded = decode_json(batch(*rows), device="d")
    assert decoded.errors == [
        PointError(2, 'field type conflict within batch: "m" is boolean and float'),
        PointError(4, 'field type conflict within batch: "m" is boolean and float'),
        PointError(5, 'field type conflict within batch: "m" is boolean and string'),
    ]
    assert columns(decoded.frames[0]) == {"m": [True, False]}


def test_array_of_points() -> None:
    points = [
        {"measurement": "env", "tags": {"device": "d1"}, "fields": {"t": 21.5}, "time": 1000},
        {"fields": {"t": 1, "on": True}, "time": "2023-11-14T22:13:20.5Z"},
        {"tags": {"room": "k"}, "fields": {"t": 2}},
    ]
    decoded = decode_json(orjson.dumps(points), measurement="m", precision="ms")
    assert decoded.errors == []
    env, m = decoded.frames
    assert (env.measurement, env.time.to_pylist(), columns(env)) == (
        "env",
        [10**9],
        {"t": [21.5]},
    )
    assert m.measurement == "m" and m.time.to_pylist() == [1700000000500000000, None]
    assert m.tagsets.to_pylist() == ["", "room=k"]
    assert columns(m) == {"on": [True, None], "t": [1, 2]}


def test_single_point_object_and_device_binding() -> None:
    point = {"tags": {"device": "d2"}, "fields": {"t": 1.0}}
    decoded = decode_json(orjson.dumps([{"fields": {"t": 1.0}}, point]), device="d1")
    assert decoded.errors == [PointError(2, 'tag device="d2" does not match device "d1"')]
    assert decoded.frames[0].tagsets.to_pylist() == ["device=d1"]
    assert decode_json(orjson.dumps({"fields": {"t": 1.0}})).point_count == 1


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"fields": {"t": 1}, "timestamp": 1}, 'unknown key "timestamp"'),
        ({"fields": {}}, "no fields"),
        ({"fields": {"t": None}}, "no fields (all null)"),
        ({"fields": [1]}, '"fields" must be an object'),
        ({"measurement": "", "fields": {"t": 1}}, '"measurement" must be a non-empty string'),
        ({"tags": {"a": 1}, "fields": {"t": 1}}, 'tag "a" must be a non-empty string'),
        ({"tags": {"_a": "x"}, "fields": {"t": 1}}, 'tag name "_a" is reserved'),
        ({"fields": {"t": 1}, "time": "yesterday"}, '"time" "yesterday" is not an RFC 3339 time'),
        ({"fields": {"t": 1}, "time": 1.5}, '"time" must be an integer or an RFC 3339 string'),
        ({"fields": {"t": 1}, "time": 2**62}, '"time" 4611686018427387904 is out of range'),
        ("point", "a point must be an object"),
    ],
)
def test_bad_point(point: object, message: str) -> None:
    decoded = decode_json(orjson.dumps([{"fields": {"t": 0}}, point]), precision="ms")
    assert [e.line for e in decoded.errors] == [2]
    assert decoded.errors[0].message.startswith(message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b'"text"', "expected a device batch"),
        (b'{"tsdata": 5}', '"tsdata" must be an array'),
        (b'{"deviceinfo": [1]}', '"deviceinfo" must be an object'),
        (b'{"other": 1}', "expected a device batch"),
    ],
)
def test_whole_body_errors(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_json(body, device="d1")


def test_msgpack_shapes_and_types() -> None:
    doc = {"deviceinfo": {"deviceid": "m1"}, "tsdata": [{"timestamp": 1000, "t": 1.5, "n": 2}]}
    decoded = decode_msgpack(msgpack.packb(doc), device="m1")
    assert decoded.attributes == {"deviceid": "m1"}
    assert decoded.frames[0].field_types() == {"n": "integer", "t": "float"}
    stamp = msgpack.Timestamp.from_unix_nano(1700000000123456789)
    points = [{"fields": {"b": b"raw"}}, {"fields": {"t": 1.0}, "time": stamp}]
    decoded = decode_msgpack(msgpack.packb(points, datetime=False))
    assert decoded.errors[0].message.startswith('field "b" is of type bytes')
    assert decoded.frames[0].time.to_pylist() == [1700000000123456789]


def test_msgpack_nan_and_bad_bodies() -> None:
    nan = msgpack.packb([{"fields": {"x": float("nan")}}])
    assert decode_msgpack(nan).errors == [PointError(1, 'field "x" is not a finite number')]
    for body in (b"\xc1", msgpack.packb([1]) + b"\x00", b"\xdd\xff\xff\xff\xff"):
        with pytest.raises(DecodeError, match="invalid MessagePack"):
            decode_msgpack(body)
    with pytest.raises(DecodeError, match="cannot be stored"):
        decode_msgpack(msgpack.packb({"deviceinfo": {"k": b"\x00"}}), device="d")


# -- registry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("", b"m f=1"),
        ("text/plain; charset=utf-8", b"m f=1"),
        ("application/vnd.influx.line-protocol", b"m f=1"),
        ("Application/JSON", b'[{"fields": {"f": 1.0}}]'),
        ("application/x-msgpack", msgpack.packb([{"fields": {"f": 1.0}}])),
        ("application/vnd.msgpack", msgpack.packb([{"fields": {"f": 1.0}}])),
        ("application/msgpack", msgpack.packb([{"fields": {"f": 1.0}}])),
        ("application/senml+json", b'[{"n": "f", "v": 1}]'),
        ("application/senml+cbor", bytes.fromhex("81a20061660201")),
        ("application/cbor", bytes.fromhex("81a20061660201")),
    ],
)
def test_registry_picks_codec_by_media_type(content_type: str, body: bytes) -> None:
    decoded = codecs.decode(content_type, body, device="d1", measurement="m", precision=None)
    assert decoded.errors == [] and decoded.point_count == 1
    assert codecs.is_line_protocol(content_type) == (b"f=1" in body)


def test_registry_rejects_unknown_media_types() -> None:
    with pytest.raises(UnsupportedMediaType, match='"application/xml"'):
        codecs.decode("application/xml", b"<x/>", device=None, measurement="m", precision="ms")
    with pytest.raises(UnsupportedMediaType):
        codecs.check_media_type("text/csv")
    codecs.check_media_type("application/json; charset=utf-8")
