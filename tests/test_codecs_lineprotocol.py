"""Line protocol: what users send (Telegraf, InfluxDB clients, Plant Buddy) and what they see."""

from __future__ import annotations

import random

import pytest

from motes.telemetry.codecs import lineprotocol
from motes.telemetry.codecs.lineprotocol import decode, decode_reference
from motes.telemetry.models import Decoded, DecodeError, Frame, PointError


def rows(frame: Frame) -> list[dict[str, object]]:
    """Frame rows as dicts (null fields left out), for readable assertions."""
    out = []
    for i in range(len(frame)):
        row: dict[str, object] = {
            "tags": frame.tagsets[i].as_py(),
            "time": frame.time[i].as_py(),
        }
        row.update({k: c[i].as_py() for k, c in frame.fields.items() if c[i].is_valid})
        out.append(row)
    return out


def only_frame(decoded: Decoded) -> Frame:
    assert not decoded.errors, decoded.errors
    assert len(decoded.frames) == 1
    return decoded.frames[0]


def test_types_tags_and_times() -> None:
    frame = only_frame(
        decode(
            b"env,site=s3,device=d1 temp=21.5,count=3i,big=18446744073709551615u,ok=t,"
            b'note="hi there" 1700000000000000000\n'
        )
    )
    assert frame.measurement == "env"
    assert frame.field_types() == {
        "big": "unsigned",
        "count": "integer",
        "note": "string",
        "ok": "boolean",
        "temp": "float",
    }
    assert rows(frame) == [
        {
            "tags": "device=d1,site=s3",
            "time": 1700000000000000000,
            "temp": 21.5,
            "count": 3,
            "big": 2**64 - 1,
            "ok": True,
            "note": "hi there",
        }
    ]
    assert frame.lines is not None and frame.lines.to_pylist() == [1]
    assert str(frame.tagsets.type) == "dictionary<values=string, indices=int32, ordered=0>"


def test_plant_buddy_shape_and_missing_timestamp() -> None:
    frame = only_frame(
        decode(b"light,user=rick,device_id=01 reading=26i 1621978469468115968\nlight reading=1i")
    )
    assert rows(frame) == [
        {"tags": "device_id=01,user=rick", "time": 1621978469468115968, "reading": 26},
        {"tags": "", "time": None, "reading": 1},
    ]


@pytest.mark.parametrize(
    ("line", "measurement", "tags", "fields"),
    [
        (rb"my\ m,t\,k=v\ 1\=2 f=1", "my m", r"t\,k=v\ 1\=2", {"f": 1.0}),
        (rb"m\,x f\=k\ 2=1", "m,x", "", {"f=k 2": 1.0}),
        (rb'm s="a \"q\" \\ b\n"', "m", "", {"s": 'a "q" \\ b\\n'}),
        (rb'm s="x,y=z w"', "m", "", {"s": "x,y=z w"}),
        (rb"m\\ f=1", "m\\", "", {"f": 1.0}),
        (rb"m,t=a\b f=1", "m", r"t=a\\b", {"f": 1.0}),
        (b"m,b=2,a=1 f=1", "m", "a=1,b=2", {"f": 1.0}),
        (b"m,t=\xc3\xa9 f=1", "m", "t=\u00e9", {"f": 1.0}),
    ],
)
def test_escapes(line: bytes, measurement: str, tags: str, fields: dict[str, object]) -> None:
    frame = only_frame(decode(line))
    assert frame.measurement == measurement
    assert rows(frame) == [{"tags": tags, "time": None, **fields}]


def test_number_and_boolean_spellings() -> None:
    values = "a=1,b=-1.5,c=1e3,d=-1E-2,e=.5,f=5.,g=0i,h=-9223372036854775808i,i=0u"
    booleans = ",".join(f"t{i}={v}" for i, v in enumerate(["t", "T", "true", "True", "TRUE"]))
    falses = ",".join(f"f{i}={v}" for i, v in enumerate(["f", "F", "false", "False", "FALSE"]))
    frame = only_frame(decode(f"m {values},{booleans},{falses}".encode()))
    (row,) = rows(frame)
    assert [row[k] for k in "abcdefghi"] == [1.0, -1.5, 1000.0, -0.01, 0.5, 5.0, 0, -(2**63), 0]
    assert all(row[f"t{i}"] is True and row[f"f{i}"] is False for i in range(5))


def test_comments_blank_lines_crlf_and_leading_space() -> None:
    body = b"# a comment\r\n\r\n   \n  m f=1 1\r\n\tm f=2 2\r\n#m f=3\n"
    frame = only_frame(decode(body))
    assert [r["f"] for r in rows(frame)] == [1.0, 2.0]
    assert frame.lines is not None and frame.lines.to_pylist() == [4, 5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"env,device=d1 temp=abc", 'invalid field value "abc" for field "temp"'),
        (b"env,device=d1", "missing field set"),
        (b"env,device=d1 ", "missing field set"),
        (b"env temp=1 12x", 'invalid timestamp "12x"'),
        (b"env temp=1 1 2", 'invalid timestamp "1 2"'),
        (b",t=1 f=1", "missing measurement"),
        (b"env,t f=1", 'invalid tag "t" (expected key=value)'),
        (b"env,=v f=1", "missing tag key"),
        (b"env,t= f=1", 'missing value for tag "t"'),
        (b"env,_t=1 f=1", 'tag key "_t" is reserved (starts with "_")'),
        (b"env,t=1,t=2 f=1", 'duplicate tag "t"'),
        (b"env f", 'missing "=" after field key "f"'),
        (b"env =1", "missing field key"),
        (b"env f=1,", "missing field key"),
        (b"env f=", 'missing value for field "f"'),
        (b"env _f=1", 'field key "_f" is reserved (starts with "_")'),
        (b'env s="open', 'unterminated string value for field "s"'),
        (b'env s="a"b', 'unexpected text after string value for field "s"'),
        (b"env f=inf", 'invalid field value "inf" for field "f"'),
        (b"env f=NaN", 'invalid field value "NaN" for field "f"'),
        (b"env f=+1", 'invalid field value "+1" for field "f"'),
        (b"env f=1.5i", 'invalid field value "1.5i" for field "f"'),
        (b"env f=-1u", 'invalid field value "-1u" for field "f"'),
        (b"env f=1e999", 'float value "1e999" for field "f" is out of range'),
        (b"env f=9223372036854775808i", 'integer value "9223372036854775808i" for field "f"'),
        (b"env f=18446744073709551616u", 'unsigned value "18446744073709551616u" for field'),
        (b"env f=1 9223372036854775808", 'timestamp "9223372036854775808" is out of range'),
        (b"env f=\xff", "invalid UTF-8"),
    ],
)
def test_bad_line_is_reported_and_others_kept(line: bytes, message: str) -> None:
    decoded = decode(b"env,device=d1 temp=1 1\n" + line + b"\nenv,device=d1 temp=3 3\n")
    assert len(decoded.errors) == 1
    assert decoded.errors[0].line == 2
    assert decoded.errors[0].message.startswith(message)
    assert [r["time"] for r in rows(decoded.frames[0])] == [1, 3]


def test_type_conflict_within_body_rejects_later_lines() -> None:
    decoded = decode(b"env temp=1 1\nenv temp=2i 2\nenv temp=3 3\ncpu temp=4i 4\n")
    assert decoded.errors == [
        PointError(2, 'field type conflict within batch: "temp" is float and integer')
    ]
    env, cpu = decoded.frames
    assert [r["temp"] for r in rows(env)] == [1.0, 3.0]
    assert cpu.field_types() == {"temp": "integer"}  # another measurement, another field


def test_duplicate_field_key_last_wins() -> None:
    frame = only_frame(decode(b"m f=1,g=2,f=3i"))
    assert rows(frame) == [{"tags": "", "time": None, "f": 3, "g": 2.0}]


@pytest.mark.parametrize(("precision", "factor"), [("ns", 1), ("us", 10**3), ("ms", 10**6)])
def test_precision(precision: str, factor: int) -> None:
    frame = only_frame(decode(b"m f=1 1582046738255", precision))
    assert frame.time.to_pylist() == [1582046738255 * factor]


def test_precision_overflow_and_unknown_precision() -> None:
    decoded = decode(b"m f=1 1582046738255", "s")
    assert decoded.errors == [PointError(1, 'timestamp "1582046738255" is out of range')]
    with pytest.raises(DecodeError, match="unknown precision"):
        decode(b"m f=1", "h")


def test_device_binding() -> None:
    decoded = decode(b"m,device=d1 f=1\nm f=2\nm,device=d2 f=3", device="d1")
    assert decoded.errors == [PointError(3, 'tag device="d2" does not match device "d1"')]
    assert decoded.frames[0].tagsets.to_pylist() == ["device=d1", "device=d1"]


def test_every_bad_line_is_reported() -> None:
    decoded = decode(b"m f=1\nm f=x\nm\nm f=2\n")
    assert [e.line for e in decoded.errors] == [2, 3]
    assert decoded.point_count == 2


def typical_body(lines: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    out = []
    for i in range(lines):
        d = rnd.randrange(1000)
        out.append(
            f"env,device=dev{d:04d},site=s{d % 10} temperature={rnd.uniform(10, 30):.2f},"
            f"humidity={rnd.uniform(30, 60):.1f},pressure=1013.2,co2=412.0,light=301.5 "
            f"{1700000000000000000 + i * 10**9}"
        )
    return "\n".join(out).encode()


def test_fast_path_matches_reference_on_large_bodies() -> None:
    body = typical_body(2000)
    mixed = body + b'\nenv,device=x temperature=1i\nenv,dev\\ ice=y s="a",co2=2 5\n# end\n'
    for data in (body, mixed):
        assert len(data) > lineprotocol.FAST_PATH_MIN_BYTES
        fast, reference = decode(data), decode_reference(data)
        assert fast == reference
    assert fast.point_count == 2000 * 5 + 2
    assert [e.line for e in fast.errors] == [2001]
    assert len(fast.frames[0].tagsets.dictionary) <= 1001


def test_frame_shape_of_typical_body() -> None:
    frame = only_frame(decode(typical_body(100)))
    assert list(frame.fields) == ["co2", "humidity", "light", "pressure", "temperature"]
    assert frame.point_count == 500
    assert frame.time.null_count == 0


def test_hostile_lines_stay_linear() -> None:
    digits = b"1" * 200_000
    body = b"m f=" + digits + b"x\nm f=" + digits + b'i\nm s="' + b"\\\\" * 100_000 + b"\n"
    decoded = decode_reference(body)  # quadratic backtracking would take minutes here
    assert [e.line for e in decoded.errors] == [1, 2, 3]


def test_too_sparse_body_is_refused() -> None:
    body = "\n".join(f"m f{i}=1" for i in range(2100)).encode()  # 2100 x 2100 cells
    with pytest.raises(DecodeError, match="too sparse"):
        decode(body)
