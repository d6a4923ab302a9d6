"""SenML (RFC 8428) in JSON and CBOR, starting from the RFC's own examples."""

from __future__ import annotations

import cbor2
import orjson
import pytest

from motes.telemetry.codecs.senml import decode_senml_cbor, decode_senml_json
from motes.telemetry.models import Decoded, DecodeError, Frame, PointError

NOW = 1_700_000_000 * 10**9


def decode(pack: object, device: str | None = None) -> Decoded:
    return decode_senml_json(orjson.dumps(pack), device=device, now_ns=NOW)


def columns(frame: Frame) -> dict[str, list[object]]:
    return {name: col.to_pylist() for name, col in frame.fields.items()}


def test_rfc_single_datapoint_needs_a_device() -> None:
    pack = [{"n": "urn:dev:ow:10e2073a01080063", "u": "Cel", "v": 23.1}]
    assert decode(pack).errors[0].message.startswith("no device")
    (frame,) = decode(pack, device="thermo").frames
    assert columns(frame) == {"urn:dev:ow:10e2073a01080063": [23.1]}
    assert frame.time.to_pylist() == [None]  # "now": the server stamps it


def test_rfc_multiple_datapoints_base_name_is_the_device() -> None:
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "u": "A", "v": 1.2},
    ]
    decoded = decode(pack)
    assert decoded.errors == [] and decoded.attributes is None
    (frame,) = decoded.frames
    assert frame.tagsets.to_pylist() == ["device=urn:dev:ow:10e2073a01080063"] * 2
    assert columns(frame) == {"current": [None, 1.2], "voltage": [120.1, None]}
    assert frame.coerce_numbers


def test_rfc_base_time_and_relative_offsets() -> None:
    pack = [
        {"bn": "urn:dev:ow:10e2073a0108006:", "bt": 1.276020076001e09, "bu": "A", "bver": 5,
         "n": "voltage", "u": "V", "v": 120.1},
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
    ]  # fmt: skip
    (frame,) = decode(pack).frames
    assert frame.time.to_pylist() == [1276020076001000000, 1276020071001000000, 1276020072001000000]


def test_relative_times_are_from_now() -> None:
    (frame,) = decode([{"bn": "d:", "n": "t", "v": 1, "t": -10}]).frames
    assert frame.time.to_pylist() == [NOW - 10 * 10**9]


def test_value_kinds_base_value_and_sum() -> None:
    pack = [
        {"bn": "d1/", "bv": 10, "bs": 100, "n": "temp", "v": 1.5},
        {"n": "label", "vs": "kitchen"},
        {"n": "door", "vb": True},
        {"n": "blob", "vd": "AAEC"},
        {"n": "energy", "s": 5},
    ]
    (frame,) = decode(pack).frames
    assert frame.field_types() == {
        "blob": "string",
        "door": "boolean",
        "energy_sum": "float",
        "label": "string",
        "temp": "float",
    }
    assert columns(frame)["temp"][0] == 11.5 and columns(frame)["energy_sum"][4] == 105.0


def test_field_names_with_a_device_argument() -> None:
    mine = [{"bn": "urn:dev:mac:s1:", "n": "temp", "v": 1}]
    other = [{"bn": "urn:dev:x:", "n": "temp", "v": 1}]
    assert list(decode(mine, device="s1").frames[0].fields) == ["temp"]
    assert list(decode(other, device="s1").frames[0].fields) == ["urn:dev:x:temp"]
    assert decode(other, device="s1").frames[0].tagsets.to_pylist() == ["device=s1"]


def test_cbor_integer_labels_and_byte_data() -> None:
    pack = [
        {-2: "urn:dev:x:", -3: 1700000000, 0: "temp", 1: "Cel", 2: 21.5},
        {0: "raw", 8: b"\x00\x01"},
    ]
    decoded = decode_senml_cbor(cbor2.dumps(pack), device="s2", now_ns=NOW)
    assert decoded.errors == []
    (frame,) = decoded.frames
    assert columns(frame) == {"urn:dev:x:raw": [None, "AAE"], "urn:dev:x:temp": [21.5, None]}
    assert frame.time.to_pylist() == [NOW, NOW]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"n": "a", "v": 1, "vs": "x"}, "record has more than one value (v, vs)"),
        ({"n": "a"}, "record has no value"),
        ({"n": "a", "v": "1"}, '"v" must be a finite number'),
        ({"n": "a", "vb": 1}, '"vb" must be a boolean'),
        ({"n": "a", "vd": "not base64!"}, '"vd" must be base64url data'),
        ({"n": "a b", "v": 1}, 'invalid SenML name "d:a b"'),
        ({"n": "a", "v": 1, "t": "now"}, '"t" must be a finite number'),
        ({"n": "a", "v": 1, "foo_": 1}, 'unsupported must-understand field "foo_"'),
        ({"n": "a", "v": 1, "bver": 11}, "unsupported SenML version 11"),
        ({"n": "a", "v": 1, "t": 1e12}, "time 1000000000000.0 is out of range"),
        ("x", "a SenML record must be an object"),
    ],
)
def test_bad_record(record: object, message: str) -> None:
    decoded = decode([{"bn": "d:", "n": "ok", "v": 1}, record, {"n": "ok", "v": 2}])
    assert [e.line for e in decoded.errors] == [2]
    assert decoded.errors[0].message.startswith(message)
    assert columns(decoded.frames[0]) == {"ok": [1.0, 2.0]}


def test_type_conflict_between_records() -> None:
    decoded = decode([{"bn": "d:", "n": "x", "v": 1}, {"n": "x", "vs": "a"}, {"n": "x", "v": 2}])
    assert decoded.errors == [
        PointError(2, 'field type conflict within batch: "x" is float and string')
    ]


@pytest.mark.parametrize("body", [b"{", b"5", b'"pack"'])
def test_whole_body_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_senml_json(body)
    with pytest.raises(DecodeError):
        decode_senml_cbor(body)
