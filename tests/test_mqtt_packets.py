"""MQTT framing, packet decoding/encoding (motes/mqtt/packets.py) and topics
(motes/mqtt/topics.py), checked against the byte layouts of MQTT 3.1.1 and 5.0.

Packets here are built by hand from the specification (helpers ``s``, ``bn``, ``vbi``,
``frame`` and ``props`` below), not with the encoders under test, so an encoder and the
decoder cannot agree on a mistake.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motes.mqtt import packets as pk
from motes.mqtt.topics import (
    MAX_LEVELS,
    MAX_TOPIC_BYTES,
    Subscription,
    SubscriptionTree,
    TopicError,
    TopicIndex,
    check_filter,
    check_name,
    matches,
    split_shared,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
BIG = 1 << 28


# -- the wire format, by hand ----------------------------------------------------------------


def vbi(n: int) -> bytes:
    """Variable Byte Integer (MQTT 1.5.5)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text: str) -> bytes:
    """UTF-8 Encoded String (1.5.4): two-byte length, then the bytes."""
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def bn(data: bytes) -> bytes:
    """Binary Data (1.5.6)."""
    return len(data).to_bytes(2, "big") + data


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def props(*items: bytes) -> bytes:
    """A property list: Property Length, then the properties."""
    raw = b"".join(items)
    return vbi(len(raw)) + raw


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + vbi(len(body)) + body


def decode_one(data: bytes, version: int) -> pk.Packet:
    frames, used = pk.split(data, BIG)
    assert used == len(data)
    assert len(frames) == 1
    return pk.decode(frames[0][0], frames[0][1], version)


def malformed(data: bytes, version: int) -> pk.MalformedPacket:
    with pytest.raises(pk.MalformedPacket) as info:
        decode_one(data, version)
    return info.value


def connect_body(
    name: str = "MQTT",
    level: int = 4,
    flags: int = 0x02,
    properties: bytes = b"",
    client_id: str = "cid",
    tail: bytes = b"",
) -> bytes:
    head = s(name) + bytes([level, flags]) + u16(60)
    if level == 5:
        head += properties or props()
    return head + s(client_id) + tail


# -- PUBLISH round trips --------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(
    ("qos", "retain", "dup", "packet_id"),
    [
        (0, False, False, 0),
        (0, True, False, 0),
        (1, False, False, 1),
        (1, True, True, 65535),
        (2, False, True, 300),
        (2, True, False, 7),
    ],
)
def test_publish_round_trip(version: int, qos: int, retain: bool, dup: bool, packet_id: int):
    data = pk.encode_publish(
        "sport/tennis/ü", b"\x00payload\xff", qos, retain, dup, packet_id, version
    )
    p = decode_one(data, version)
    assert isinstance(p, pk.Publish)
    assert (p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.properties) == (
        "sport/tennis/ü",
        b"\x00payload\xff",
        qos,
        retain,
        dup,
        packet_id,
        {},
    )
    assert data[0] == 0x30 | (dup << 3) | (qos << 1) | retain


def test_publish_v5_properties_round_trip():
    properties = {
        pk.PAYLOAD_FORMAT: 1,
        pk.MESSAGE_EXPIRY: 3600,
        pk.CONTENT_TYPE: "application/json",
        pk.RESPONSE_TOPIC: "replies/d1",
        pk.CORRELATION_DATA: b"\x00\x01\xfe",
        pk.USER_PROPERTY: [("k", "1"), ("k", "2"), ("ключ", ""), ("k", "1")],
        pk.SUBSCRIPTION_ID: [1, 300, 268_435_455],
    }
    data = pk.encode_publish("a/b", b"{}", 1, True, False, 42, 5, properties)
    p = decode_one(data, 5)
    assert isinstance(p, pk.Publish)
    assert (p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id) == (
        "a/b",
        b"{}",
        1,
        True,
        False,
        42,
    )
    assert p.properties == properties  # user properties: repeated, in order, duplicates kept


def test_publish_v5_without_properties_has_property_length_zero():
    # 3.3.2.3.1: the Property Length is always there in an MQTT 5 PUBLISH
    assert pk.encode_publish("a/b", b"hi", 0, False, False, 0, 5) == (
        b"\x30\x08" + s("a/b") + b"\x00" + b"hi"
    )
    assert pk.encode_publish("a/b", b"hi", 1, False, False, 10, 4) == (
        b"\x32\x09" + s("a/b") + b"\x00\x0a" + b"hi"
    )


def test_publish_v4_ignores_properties():
    data = pk.encode_publish("t", b"x", 0, False, False, 0, 4, {pk.MESSAGE_EXPIRY: 5})
    assert data == b"\x30\x04" + s("t") + b"x"


@pytest.mark.parametrize("size", [0, 120, 121, 122, 16_379, 16_380, 200_000])
def test_publish_round_trip_across_length_sizes(size: int):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = pk.encode_publish("t", payload, 0, False, False, 0, 4)
    body_len = 3 + size
    assert data[1 : 1 + len(vbi(body_len))] == vbi(body_len)
    p = decode_one(data, 4)
    assert isinstance(p, pk.Publish)
    assert p.payload == payload


def test_publish_v5_topic_alias_with_empty_topic_decodes():
    data = frame(0x30, s("") + props(b"\x23" + u16(3)) + b"x")
    p = decode_one(data, 5)
    assert isinstance(p, pk.Publish)
    assert (p.topic, p.properties, p.payload) == ("", {pk.TOPIC_ALIAS: 3}, b"x")


_TOPIC = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40
)
_PAIRS = st.lists(st.tuples(_TOPIC, _TOPIC), max_size=4)


@FUZZ
@given(
    version=st.sampled_from([4, 5]),
    topic=_TOPIC,
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    dup=st.booleans(),
    packet_id=st.integers(1, 65535),
    user=_PAIRS,
    expiry=st.none() | st.integers(0, 2**32 - 1),
    correlation=st.none() | st.binary(max_size=20),
)
def test_publish_round_trip_property(
    version: int,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int,
    user: list[tuple[str, str]],
    expiry: int | None,
    correlation: bytes | None,
) -> None:
    dup = dup and qos > 0
    packet_id = packet_id if qos else 0
    properties: dict[int, Any] = {}
    if user:
        properties[pk.USER_PROPERTY] = user
    if expiry is not None:
        properties[pk.MESSAGE_EXPIRY] = expiry
    if correlation is not None:
        properties[pk.CORRELATION_DATA] = correlation
    data = pk.encode_publish(topic, payload, qos, retain, dup, packet_id, version, properties)
    p = decode_one(data, version)
    assert isinstance(p, pk.Publish)
    assert (p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id) == (
        topic,
        payload,
        qos,
        retain,
        dup,
        packet_id,
    )
    assert p.properties == (properties if version == 5 else {})


# -- encoders against the specification's byte layout ----------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_varint_matches_the_spec_table(n: int, encoded: str):
    assert pk.varint(n).hex() == encoded == vbi(n).hex()


def test_connack_v311():
    assert pk.encode_connack(False, pk.SUCCESS, 4, {}).hex() == "20020000"
    assert pk.encode_connack(True, pk.SUCCESS, 4, {}).hex() == "20020100"
    # a refusal never claims a session (3.2.2.2); 5.0 reasons map to 3.1.1 return codes
    assert pk.encode_connack(True, pk.BAD_USER_NAME_OR_PASSWORD, 4, {}).hex() == "20020004"
    assert pk.encode_connack(False, pk.UNSUPPORTED_PROTOCOL_VERSION, 3, {}).hex() == "20020001"
    assert pk.encode_connack(False, pk.CLIENT_IDENTIFIER_NOT_VALID, 4, {}).hex() == "20020002"
    assert pk.encode_connack(False, pk.SERVER_UNAVAILABLE, 4, {}).hex() == "20020003"
    assert pk.encode_connack(False, pk.SERVER_BUSY, 4, {}).hex() == "20020003"
    assert pk.encode_connack(False, pk.NOT_AUTHORIZED, 4, {}).hex() == "20020005"
    assert pk.encode_connack(False, pk.UNSPECIFIED_ERROR, 4, {}).hex() == "20020005"


def test_connack_v5():
    assert pk.encode_connack(False, pk.SUCCESS, 5, {}).hex() == "2003000000"
    assert pk.encode_connack(True, pk.SUCCESS, 5, {}).hex() == "2003010000"
    assert pk.encode_connack(False, pk.NOT_AUTHORIZED, 5, {}).hex() == "2003008700"
    data = pk.encode_connack(
        False, pk.SUCCESS, 5, {pk.RECEIVE_MAXIMUM: 10, pk.ASSIGNED_CLIENT_ID: "auto-1"}
    )
    assert data == frame(0x20, b"\x00\x00" + props(b"\x21" + u16(10), b"\x12" + s("auto-1")))


@pytest.mark.parametrize(
    ("kind", "first"),
    [(pk.PUBACK, 0x40), (pk.PUBREC, 0x50), (pk.PUBREL, 0x62), (pk.PUBCOMP, 0x70)],
)
def test_acks_v311_and_v5_success(kind: int, first: int):
    expected = bytes([first, 2, 0, 1])
    assert pk.encode_ack(kind, 1, 4) == expected
    # 3.4.2.1: reason 0x00 without properties may drop both -> remaining length 2
    assert pk.encode_ack(kind, 1, 5) == expected
    back = decode_one(expected, 5)
    assert back == pk.Ack(kind, 1, pk.SUCCESS, {})


def test_ack_v5_with_reason_code_only():
    # 3.4.2.2.1: remaining length < 4 means no property length; 40 03 00 01 87 is valid
    data = pk.encode_ack(pk.PUBACK, 1, 5, pk.NOT_AUTHORIZED)
    assert data.hex() == "4003000187"
    assert decode_one(data, 5) == pk.Ack(pk.PUBACK, 1, pk.NOT_AUTHORIZED, {})


def test_ack_v5_with_reason_string():
    data = pk.encode_ack(pk.PUBACK, 0x0102, 5, pk.QUOTA_EXCEEDED, "slow down")
    assert data == frame(0x40, b"\x01\x02\x97" + props(b"\x1f" + s("slow down")))
    assert decode_one(data, 5) == pk.Ack(
        pk.PUBACK, 0x0102, pk.QUOTA_EXCEEDED, {pk.REASON_STRING: "slow down"}
    )


def test_ack_v311_drops_the_reason():
    assert pk.encode_ack(pk.PUBACK, 9, 4, pk.NOT_AUTHORIZED, "no").hex() == "40020009"


def test_suback():
    assert pk.encode_suback(1, [0, 1, 2, 0x80], 4).hex() == "9006000100010280"
    # 3.1.1 has only 0x80 for failure: every 5.0 failure code becomes it
    assert pk.encode_suback(1, [0x87, 0x8F, 1], 4).hex() == "90050001808001"
    # 5.0: property length (0) before the reason codes (3.9.2.1)
    assert pk.encode_suback(1, [0, 0x87], 5).hex() == "900500010000" + "87"
    assert pk.encode_suback(0xABCD, [2], 5).hex() == "9004abcd0002"


def test_unsuback():
    assert pk.encode_unsuback(1, [0, 0x11], 4).hex() == "b0020001"
    assert pk.encode_unsuback(1, [0, 0x11], 5).hex() == "b00500010000" + "11"


def test_disconnect_and_pingresp():
    assert pk.encode_disconnect(pk.SESSION_TAKEN_OVER).hex() == "e0028e00"
    data = pk.encode_disconnect(pk.PROTOCOL_ERROR, "bad")
    assert data == frame(0xE0, b"\x82" + props(b"\x1f" + s("bad")))
    long = pk.encode_disconnect(pk.PROTOCOL_ERROR, "é" * 500)
    assert long == frame(0xE0, b"\x82" + props(b"\x1f" + s("é" * 200)))
    assert pk.PINGRESP_PACKET.hex() == "d000"
    assert decode_one(b"\xc0\x00", 4) == pk.Simple(pk.PINGREQ)


# -- CONNECT, built by hand -----------------------------------------------------------------


def test_connect_v311_minimal():
    # 3.1.2: "MQTT", level 4, flags (clean session), keep alive 60; payload: client id
    data = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03cid"
    assert decode_one(data, 0) == pk.Connect(4, "cid", True, 60, None, None, None, {})


def test_connect_v311_with_will_and_credentials():
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04  # user, password, will retain, will QoS 1, will
    body = (
        s("MQTT")
        + bytes([4, flags])
        + u16(0)
        + s("dev-1")
        + s("status/dev-1")
        + bn(b"offline")
        + s("alice")
        + bn(b"s3cr\x00t")
    )
    c = decode_one(frame(0x10, body), 0)
    assert isinstance(c, pk.Connect)
    assert (c.version, c.client_id, c.clean_start, c.keep_alive) == (4, "dev-1", False, 0)
    assert (c.username, c.password) == ("alice", b"s3cr\x00t")
    assert c.will == pk.Will("status/dev-1", b"offline", 1, True, {})


def test_connect_v5_with_properties_will_properties_and_credentials():
    flags = 0x80 | 0x40 | 0x20 | 0x10 | 0x04 | 0x02  # will QoS 2, retain, clean start
    body = (
        s("MQTT")
        + bytes([5, flags])
        + u16(30)
        + props(
            b"\x11" + u32(120),
            b"\x21" + u16(20),
            b"\x26" + s("k") + s("v"),
            b"\x26" + s("k") + s("w"),
        )
        + s("")  # empty client id: the server assigns one
        + props(
            b"\x18" + u32(5),
            b"\x02" + u32(60),
            b"\x03" + s("text/plain"),
            b"\x08" + s("resp"),
            b"\x09" + bn(b"\x01\x02"),
            b"\x01\x01",
            b"\x26" + s("a") + s("b"),
        )
        + s("last/will")
        + bn(b"bye")
        + s("user")
        + bn(b"pw")
    )
    c = decode_one(frame(0x10, body), 0)
    assert isinstance(c, pk.Connect)
    assert (c.version, c.client_id, c.clean_start, c.keep_alive) == (5, "", True, 30)
    assert c.properties == {
        pk.SESSION_EXPIRY: 120,
        pk.RECEIVE_MAXIMUM: 20,
        pk.USER_PROPERTY: [("k", "v"), ("k", "w")],
    }
    assert (c.username, c.password) == ("user", b"pw")
    assert c.will == pk.Will(
        "last/will",
        b"bye",
        2,
        True,
        {
            pk.WILL_DELAY: 5,
            pk.MESSAGE_EXPIRY: 60,
            pk.CONTENT_TYPE: "text/plain",
            pk.RESPONSE_TOPIC: "resp",
            pk.CORRELATION_DATA: b"\x01\x02",
            pk.PAYLOAD_FORMAT: 1,
            pk.USER_PROPERTY: [("a", "b")],
        },
    )


def test_connect_mqisdp_level_3_is_accepted():
    c = decode_one(frame(0x10, connect_body("MQIsdp", 3)), 0)
    assert isinstance(c, pk.Connect)
    assert (c.version, c.client_id) == (3, "cid")


def test_connect_v5_password_without_user_name_is_allowed_but_not_in_311():
    c = decode_one(frame(0x10, connect_body(level=5, flags=0x42, tail=bn(b"pw"))), 0)
    assert isinstance(c, pk.Connect)
    assert (c.username, c.password) == (None, b"pw")
    exc = malformed(frame(0x10, connect_body(level=4, flags=0x42, tail=bn(b"pw"))), 0)
    assert exc.code == pk.MALFORMED_PACKET


@pytest.mark.parametrize(
    ("name", "level"),
    [("MQTT", 3), ("MQTT", 6), ("MQTT", 0), ("MQIsdp", 4), ("MQTX", 4), ("mqtt", 4), ("", 4)],
)
def test_connect_unknown_protocol_is_refused_with_0x84(name: str, level: int):
    exc = malformed(frame(0x10, connect_body(name, level)), 0)
    assert exc.code == pk.UNSUPPORTED_PROTOCOL_VERSION == 0x84


@pytest.mark.parametrize(
    ("flags", "tail"),
    [
        (0x03, b""),  # reserved flag (3.1.2.3)
        (0x1E, s("t") + bn(b"x")),  # will QoS 3
        (0x08 | 0x02, b""),  # will QoS without will flag
        (0x20 | 0x02, b""),  # will retain without will flag
    ],
)
@pytest.mark.parametrize("level", [4, 5])
def test_connect_bad_flags_are_malformed(flags: int, tail: bytes, level: int):
    if level == 5 and flags & 0x04:
        tail = props() + tail  # will properties
    exc = malformed(frame(0x10, connect_body(level=level, flags=flags, tail=tail)), 0)
    assert exc.code == pk.MALFORMED_PACKET


def test_connect_other_malformations():
    assert malformed(frame(0x11, connect_body()), 0).code == pk.MALFORMED_PACKET  # fixed flags
    assert malformed(frame(0x10, connect_body(tail=b"\x00")), 0).code == pk.MALFORMED_PACKET
    assert malformed(frame(0x10, connect_body()[:-1]), 0).code == pk.MALFORMED_PACKET
    # a will property that belongs to CONNECT, not to the will (3.1.3.2)
    bad_will = props(b"\x11" + u32(1)) + s("t") + bn(b"")
    assert malformed(frame(0x10, connect_body(level=5, flags=0x06, tail=bad_will)), 0)


# -- split(): framing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "header"),
    [(0, 2), (1, 2), (127, 2), (128, 3), (16_383, 3), (16_384, 4), (2_097_151, 4), (2_097_152, 5)],
)
def test_split_remaining_length_boundaries(n: int, header: int):
    body = b"\x5a" * n
    data = frame(0x30, body)
    assert len(data) == header + n
    frames, used = pk.split(data, BIG)
    assert frames == [(0x30, body)]
    assert used == len(data)
    if n:  # one byte short: nothing yet, nothing consumed
        assert pk.split(data[:-1], BIG) == ([], 0)
    # the header alone (even part of it) is not a packet
    for cut in range(1, header):
        assert pk.split(data[:cut], BIG) == ([], 0)


def test_split_largest_length_waits_for_the_body():
    assert pk.split(b"\x30\xff\xff\xff\x7f", 1 << 29) == ([], 0)


def test_split_every_prefix_of_a_stream():
    a = frame(0x30, s("t") + b"one")
    b = frame(0xC0, b"")
    c = frame(0x32, s("t/u") + u16(1) + b"x" * 200)
    stream = a + b + c
    for cut in range(len(stream) + 1):
        frames, used = pk.split(stream[:cut], BIG)
        done = [p for p, end in ((a, len(a)), (b, len(a + b)), (c, len(stream))) if end <= cut]
        assert used == sum(len(p) for p in done)
        assert [bytes([f]) + vbi(len(body)) + body for f, body in frames] == done


def test_split_several_packets_and_a_partial_one_in_a_bytearray():
    packets = [frame(0xC0, b""), frame(0x30, s("a") + b"1"), frame(0x62, u16(5))]
    buf = bytearray(b"".join(packets) + b"\x30\x05\x00")
    frames, used = pk.split(buf, BIG)
    assert frames == [(0xC0, b""), (0x30, s("a") + b"1"), (0x62, u16(5))]
    assert used == len(buf) - 3
    assert all(type(body) is bytes for _, body in frames)


@pytest.mark.parametrize(
    "data", [b"\x30\x80\x80\x80\x80\x01", b"\x30\xff\xff\xff\xff", b"\x30\xff\xff\xff\xff\x7f"]
)
def test_split_five_byte_length_is_malformed(data: bytes):
    with pytest.raises(pk.MalformedPacket) as info:
        pk.split(data + b"\x00" * 16, BIG)
    assert info.value.code == pk.MALFORMED_PACKET
    with pytest.raises(pk.MalformedPacket):  # known as soon as the fourth byte continues
        pk.split(data[:5], BIG)


def test_split_too_large_is_refused_before_the_body_arrives():
    header = b"\x30" + vbi(16_384)  # 1 + 3 + 16384 bytes announced, none of them here
    with pytest.raises(pk.MalformedPacket) as info:
        pk.split(header, 1000)
    assert info.value.code == pk.PACKET_TOO_LARGE == 0x95
    # the limit counts the whole packet, fixed header included
    exact = frame(0x30, b"x" * 97)
    assert len(exact) == 99
    assert pk.split(exact, 99) == ([(0x30, b"x" * 97)], 99)
    with pytest.raises(pk.MalformedPacket) as info:
        pk.split(exact, 98)
    assert info.value.code == pk.PACKET_TOO_LARGE


# -- malformed packets ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize(
    ("first", "rest"),
    [
        (0x36, u16(1)),  # QoS 3
        (0x38, b""),  # DUP at QoS 0
        (0x32, u16(0)),  # packet identifier 0
        (0x34, u16(0)),
        (0x32, b""),  # packet identifier missing
    ],
)
def test_publish_header_errors(version: int, first: int, rest: bytes):
    body = s("a/b") + rest + (props() if version == 5 else b"") + b"x"
    assert malformed(frame(first, body), version).code == pk.MALFORMED_PACKET


@pytest.mark.parametrize(
    "topic",
    [b"\xff\xfe", b"a\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"a\x00b", b"\x00"],
    ids=["invalid", "truncated", "surrogate", "overlong", "nul-inside", "nul"],
)
@pytest.mark.parametrize("version", [4, 5])
def test_publish_topic_not_utf8_or_with_nul(topic: bytes, version: int):
    body = bn(topic) + (props() if version == 5 else b"") + b"x"
    assert malformed(frame(0x30, body), version).code == pk.MALFORMED_PACKET


def test_publish_topic_length_past_the_packet():
    assert malformed(frame(0x30, u16(10) + b"abc"), 4).code == pk.MALFORMED_PACKET


@pytest.mark.parametrize("version", [4, 5])
def test_subscribe_and_unsubscribe_without_filters(version: int):
    tail = props() if version == 5 else b""
    assert malformed(frame(0x82, u16(1) + tail), version).code == pk.PROTOCOL_ERROR == 0x82
    assert malformed(frame(0xA2, u16(1) + tail), version).code == pk.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "data",
    [
        frame(0x60, u16(1)),  # PUBREL must have flags 0010
        frame(0x63, u16(1)),
        frame(0x80, u16(1) + s("a") + b"\x00"),  # SUBSCRIBE
        frame(0x83, u16(1) + s("a") + b"\x00"),
        frame(0xA0, u16(1) + s("a")),  # UNSUBSCRIBE
        frame(0x42, u16(1)),  # PUBACK flags 0000
        frame(0x51, u16(1)),
        frame(0x78, u16(1)),
        frame(0xC1, b""),  # PINGREQ
        frame(0xE2, b""),  # DISCONNECT
    ],
)
@pytest.mark.parametrize("version", [4, 5])
def test_reserved_fixed_header_flags(data: bytes, version: int):
    assert malformed(data, version).code == pk.MALFORMED_PACKET


@pytest.mark.parametrize("version", [0, 4, 5])
@pytest.mark.parametrize("first", [0x00, 0x20, 0x90, 0xB0, 0xD0])
def test_server_only_and_reserved_packet_types(first: int, version: int):
    assert malformed(frame(first, b""), version)


def test_auth_only_in_v5():
    assert decode_one(frame(0xF0, b""), 5) == pk.Simple(pk.AUTH)
    assert malformed(frame(0xF0, b""), 4)


def test_packets_with_stray_bytes():
    assert malformed(frame(0xC0, b"\x00"), 4)  # PINGREQ
    assert malformed(frame(0xE0, b"\x00"), 4)  # DISCONNECT has no body in 3.1.1
    assert malformed(frame(0x40, u16(1) + b"\x00"), 4)  # PUBACK has no reason in 3.1.1
    assert malformed(frame(0x40, b"\x01"), 5)  # packet id cut short


@pytest.mark.parametrize(
    ("version", "options"),
    [(4, 0x03), (4, 0x04), (4, 0x80), (5, 0x03), (5, 0x40), (5, 0x80), (5, 0x30)],
)
def test_subscribe_bad_options(version: int, options: int):
    tail = props() if version == 5 else b""
    data = frame(0x82, u16(1) + tail + s("a/+") + bytes([options]))
    assert malformed(data, version).code == pk.MALFORMED_PACKET


def test_subscribe_and_unsubscribe_decode():
    data = frame(
        0x82, u16(7) + props(b"\x0b" + vbi(300)) + s("a/+") + b"\x2d" + s("$share/g/#") + b"\x00"
    )
    assert decode_one(data, 5) == pk.Subscribe(
        7, [("a/+", 0x2D), ("$share/g/#", 0)], {pk.SUBSCRIPTION_ID: [300]}
    )
    assert decode_one(frame(0x82, u16(8) + s("a") + b"\x02"), 4) == pk.Subscribe(8, [("a", 2)], {})
    assert decode_one(frame(0xA2, u16(9) + s("a") + s("b/#")), 4) == pk.Unsubscribe(
        9, ["a", "b/#"], {}
    )
    assert decode_one(frame(0xA2, u16(9) + props() + s("a")), 5) == pk.Unsubscribe(9, ["a"], {})


def test_disconnect_v5_decodes():
    assert decode_one(b"\xe0\x00", 5) == pk.Disconnect(pk.SUCCESS, {})
    assert decode_one(b"\xe0\x01\x04", 5) == pk.Disconnect(pk.DISCONNECT_WITH_WILL, {})
    data = frame(0xE0, b"\x00" + props(b"\x11" + u32(0)))
    assert decode_one(data, 5) == pk.Disconnect(0, {pk.SESSION_EXPIRY: 0})


def _publish_with(*properties: bytes) -> bytes:
    return frame(0x30, s("a/b") + props(*properties) + b"payload")


@pytest.mark.parametrize(
    "prop",
    [b"\x11" + u32(10), b"\x21" + u16(1), b"\x7f" + b"\x00", b"\x00\x00"],
    ids=["session-expiry", "receive-maximum", "unknown-0x7f", "unknown-0x00"],
)
def test_publish_property_not_allowed_is_refused(prop: bytes):
    exc = malformed(_publish_with(prop), 5)
    assert exc.code >= 0x80


@pytest.mark.parametrize(
    "prop", [b"\x11" + u32(10), b"\x7f\x00"], ids=["session-expiry", "unknown-0x7f"]
)
def test_publish_property_not_allowed_is_malformed_per_spec(prop: bytes):
    assert malformed(_publish_with(prop), 5).code == pk.MALFORMED_PACKET


@pytest.mark.parametrize(
    "prop",
    [b"\x02" + u32(1), b"\x03" + s("a"), b"\x01\x00", b"\x09" + bn(b""), b"\x23" + u16(1)],
    ids=["expiry", "content-type", "payload-format", "correlation", "alias"],
)
def test_duplicate_single_valued_property_is_a_protocol_error(prop: bytes):
    assert malformed(_publish_with(prop, prop), 5).code == pk.PROTOCOL_ERROR


def test_repeatable_properties_may_repeat():
    p = decode_one(_publish_with(b"\x26" + s("a") + s("1"), b"\x26" + s("a") + s("1")), 5)
    assert isinstance(p, pk.Publish)
    assert p.properties == {pk.USER_PROPERTY: [("a", "1"), ("a", "1")]}


@pytest.mark.parametrize(
    "body",
    [
        s("a") + vbi(50) + b"\x02" + u32(1),  # property length past the packet
        s("a") + b"\x02\x02" + u32(1) + b"xyz",  # a value past the property length
        s("a") + b"\x01\x26" + s("k") + s("v"),  # one byte of properties, a longer value
        s("a") + b"\x03\x26" + u16(9),  # user property name past the properties
        s("a") + b"\x80\x80\x80\x80\x01",  # property length of five bytes
        s("a") + b"\x01\x03",  # content type with no string at all
        s("a") + b"\x03\x03" + bn(b"\xff"),  # content type not UTF-8
        s("a"),  # no property length at all
    ],
)
def test_bad_property_lists_are_malformed(body: bytes):
    assert malformed(frame(0x30, body), 5).code == pk.MALFORMED_PACKET


def test_connect_property_length_past_the_packet():
    body = s("MQTT") + bytes([5, 0x02]) + u16(0) + vbi(100) + b"\x11" + u32(1) + s("c")
    assert malformed(frame(0x10, body), 0).code == pk.MALFORMED_PACKET


# -- fuzz: only MalformedPacket ever escapes ----------------------------------------------


def _valid_packets() -> list[bytes]:
    will5 = props(b"\x18" + u32(1), b"\x26" + s("k") + s("v")) + s("w/t") + bn(b"bye")
    return [
        frame(0x10, connect_body()),
        frame(0x10, connect_body("MQIsdp", 3)),
        frame(0x10, connect_body(flags=0xEE, tail=s("w/t") + bn(b"bye") + s("u") + bn(b"p"))),
        frame(
            0x10,
            connect_body(
                level=5,
                flags=0xF6,
                properties=props(b"\x11" + u32(9)),
                tail=will5 + s("u") + bn(b"p"),
            ),
        ),
        pk.encode_publish("a/b", b"x" * 5, 1, True, True, 3, 4),
        pk.encode_publish(
            "a/b",
            b"{}",
            2,
            False,
            False,
            4,
            5,
            {
                pk.USER_PROPERTY: [("a", "b")],
                pk.MESSAGE_EXPIRY: 5,
                pk.CONTENT_TYPE: "c",
                pk.CORRELATION_DATA: b"\x01",
                pk.SUBSCRIPTION_ID: [130],
            },
        ),
        frame(0x82, u16(1) + props(b"\x0b\x05") + s("a/+") + b"\x01" + s("$share/g/#") + b"\x2a"),
        frame(0x82, u16(1) + s("a/#") + b"\x02"),
        frame(0xA2, u16(2) + props(b"\x26" + s("a") + s("b")) + s("a/+")),
        pk.encode_ack(pk.PUBACK, 5, 5, pk.NOT_AUTHORIZED, "why"),
        pk.encode_ack(pk.PUBREL, 6, 4),
        frame(0xE0, b"\x04" + props(b"\x11" + u32(1), b"\x1f" + s("bye"))),
        b"\xc0\x00",
        b"\xf0\x00",
    ]


VALID = _valid_packets()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xED]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 3))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def _only_malformed(data: bytes) -> None:
    for version in (0, 4, 5):
        try:
            frames, used = pk.split(data, 1 << 16)
        except pk.MalformedPacket as exc:
            assert exc.code in (pk.MALFORMED_PACKET, pk.PACKET_TOO_LARGE)
            continue
        assert 0 <= used <= len(data)
        assert sum(1 + len(body) for _, body in frames) <= used
        for first, body in frames:
            try:
                pk.decode(first, body, version)
            except pk.MalformedPacket as exc:
                assert exc.code >= 0x80


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes):
    _only_malformed(data)


@FUZZ
@given(_mutated())
def test_fuzz_mutated_packets(data: bytes):
    _only_malformed(data)


@FUZZ
@given(st.sampled_from(VALID), st.integers(0, 255), st.data())
def test_fuzz_mutated_bodies_any_first_byte(packet: bytes, first: int, data: st.DataObject):
    """Past the framing: any first byte with a damaged body of a real packet."""
    frames, _ = pk.split(packet, BIG)
    body = bytearray(frames[0][1])
    for _ in range(data.draw(st.integers(0, 3))):
        if body:
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    for version in (0, 4, 5):
        for candidate in (bytes(body), bytes(body[:cut])):
            try:
                pk.decode(first, candidate, version)
            except pk.MalformedPacket as exc:
                assert exc.code >= 0x80


def _read_stream(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], bool]:
    """What a connection makes of a byte stream arriving in ``chunks``: the packets it
    answers, and whether it ended in an error (the connection closes there)."""
    buf = bytearray()
    frames: list[tuple[int, bytes]] = []
    for chunk in chunks:
        buf += chunk
        while True:
            try:
                got, used = pk.split(buf, 1 << 16)
            except pk.MalformedPacket:
                return frames, True
            frames += got
            del buf[:used]
            if not got:
                break
    return frames, False


@FUZZ
@given(_mutated(), st.integers(0, 300))
def test_fuzz_split_is_the_same_in_two_reads(data: bytes, cut: int):
    """A stream read in two pieces gives the same packets (and error) as read at once;
    complete packets before a bad one are still answered."""
    cut = min(cut, len(data))
    assert _read_stream([data[:cut], data[cut:]]) == _read_stream([data])


# -- topics: names, filters, matching -----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["sport/tennis/player1", "/", "/finance", "a//b", "sport/tennis/", "$SYS/x", " ", "ü/€"],
)
def test_check_name_accepts(name: str):
    check_name(name)


@pytest.mark.parametrize("name", ["", "+", "#", "sport/+", "sport/#", "sport/tennis#", "a+"])
def test_check_name_refuses(name: str):
    with pytest.raises(TopicError):
        check_name(name)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "sport/tennis/#",
        "sport/+",
        "+",
        "#",
        "/+",
        "+/+",
        "sport/+/player1",
        "+/tennis/#",
        "sport/tennis/player1",
        "/",
        "$SYS/#",
        "+/#",
        "a//+",
    ],
)
def test_check_filter_accepts(topic_filter: str):
    check_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    ["sport/tennis#", "sport+", "#/x", "", "sport/#/ranking", "a/b+/c", "++", "##", "+#", "a/#/"],
)
def test_check_filter_refuses(topic_filter: str):
    with pytest.raises(TopicError):
        check_filter(topic_filter)


def test_topic_limits():
    check_name("é" * (MAX_TOPIC_BYTES // 2))
    with pytest.raises(TopicError):
        check_name("é" * (MAX_TOPIC_BYTES // 2) + "x")
    check_filter("/".join(["a"] * MAX_LEVELS))
    with pytest.raises(TopicError):
        check_filter("/".join(["a"] * (MAX_LEVELS + 1)))


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis", True),
        ("#", "/", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+/tennis/#", "sport/tennis/x", True),
        ("#", "$SYS/x", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/broker/x", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("$SYS/#", "$SYS", True),
        ("ACCOUNTS", "Accounts", False),
        ("sport/tennis", "sport/tennis/", False),
        ("sport/tennis/", "sport/tennis", False),
        ("a/b", "a/b", True),
    ],
)
def test_matches_spec_examples(topic_filter: str, topic: str, expected: bool):
    assert matches(topic_filter, topic) is expected


def test_split_shared():
    assert split_shared("$share/g/a/b") == ("g", "a/b")
    assert split_shared("$share/g/#") == ("g", "#")
    assert split_shared("a/b") == (None, "a/b")
    assert split_shared("$SYS/#") == (None, "$SYS/#")
    for bad in ("$share/g", "$share//x", "$share/g+/x", "$share/g#/x", "$share/g/", "$share/"):
        with pytest.raises(TopicError):
            split_shared(bad)


def test_subscription_from_options():
    sub = Subscription.from_options("c", "$share/g/a/+", 0x01 | 0x08 | 0x20, 5)
    assert (
        sub.client,
        sub.filter,
        sub.qos,
        sub.no_local,
        sub.retain_as_published,
        sub.retain_handling,
        sub.identifier,
        sub.group,
    ) == ("c", "a/+", 1, False, True, 2, 5, "g")
    plain = Subscription.from_options("c", "a/#", 0x06, None)
    assert (plain.qos, plain.no_local, plain.group) == (2, True, None)


# -- the subscription tree ----------------------------------------------------------------


def sub(
    client: str, qos: int = 0, group: str | None = None, topic_filter: str = ""
) -> Subscription:
    return Subscription(client, topic_filter, qos, group=group)


def clients(result: tuple[list[Subscription], dict[str, list[Subscription]]]) -> set[str]:
    return {x.client for x in result[0]}


def test_tree_org_mounts():
    tree = SubscriptionTree()
    tree.add("o1/devices/+/telemetry", sub("a"))
    tree.add("o1/devices/#", sub("b"))
    tree.add("o1/#", sub("c"))
    tree.add("o1/devices/d2/telemetry", sub("d"))
    for f in ("o2/devices/+/telemetry", "o2/devices/#", "o2/#", "o2/devices/d1/telemetry"):
        tree.add(f, sub("other-org"))
    assert clients(tree.match("o1/devices/d1/telemetry")) == {"a", "b", "c"}
    assert clients(tree.match("o1/devices/d2/telemetry")) == {"a", "b", "c", "d"}
    assert clients(tree.match("o1/devices")) == {"b", "c"}  # "devices/#" matches "devices"
    assert clients(tree.match("o2/devices/d1/telemetry")) == {"other-org"}
    assert clients(tree.match("o3/devices/d1/telemetry")) == set()
    assert tree.count == 8


def test_tree_dollar_levels():
    tree = SubscriptionTree()
    tree.add("o1/#", sub("hash"))
    tree.add("o1/+/x", sub("plus"))
    tree.add("o1/$internal/#", sub("explicit"))
    tree.add("$SYS/#", sub("sys"))
    tree.add("$SYS/broker/+", sub("sys-plus"))
    # wildcards do not match a first level (of the org's own space) starting with $
    assert clients(tree.match("o1/$internal/x")) == {"explicit"}
    assert clients(tree.match("o1/a/x")) == {"hash", "plus"}
    assert clients(tree.match("o1/a/$x")) == {"hash"}  # deeper $ levels are ordinary
    assert clients(tree.match("$SYS/broker/uptime")) == {"sys", "sys-plus"}
    assert clients(tree.match("$SYS")) == {"sys"}


def test_tree_highest_qos_wins_per_client():
    tree = SubscriptionTree()
    tree.add("o1/devices/+/telemetry", sub("c", 0, topic_filter="devices/+/telemetry"))
    tree.add("o1/devices/#", sub("c", 2, topic_filter="devices/#"))
    tree.add("o1/devices/d1/telemetry", sub("c", 1, topic_filter="devices/d1/telemetry"))
    tree.add("o1/devices/d1/telemetry", sub("other", 1))
    plain, shared = tree.match("o1/devices/d1/telemetry")
    by_client = {x.client: x for x in plain}
    assert len(plain) == 2
    assert by_client["c"].qos == 2
    assert by_client["c"].filter == "devices/#"
    assert by_client["other"].qos == 1
    assert shared == {}
    plain, _ = tree.match("o1/devices/d2/telemetry")
    assert [(x.client, x.qos) for x in plain] == [("c", 2)]


def test_tree_shared_groups():
    tree = SubscriptionTree()
    tree.add("o1/devices/+/telemetry", sub("a", 1, "g", "devices/+/telemetry"))
    tree.add("o1/devices/+/telemetry", sub("b", 0, "g", "devices/+/telemetry"))
    tree.add("o1/devices/#", sub("c", 0, "h", "devices/#"))
    tree.add("o1/devices/#", sub("d", 0, "g", "devices/#"))  # same group, other filter
    tree.add("o1/devices/+/telemetry", sub("a"))  # the same client, unshared, too
    plain, shared = tree.match("o1/devices/d1/telemetry")
    assert [x.client for x in plain] == ["a"]
    # a shared subscription is group + filter: each gets its own copy (MQTT 5 4.8.2)
    assert {g: sorted(x.client for x in members) for g, members in shared.items()} == {
        "$share/g/devices/+/telemetry": ["a", "b"],
        "$share/g/devices/#": ["d"],
        "$share/h/devices/#": ["c"],
    }
    assert tree.count == 5
    assert tree.remove("o1/devices/+/telemetry", "a", "g")
    assert tree.remove("o1/devices/+/telemetry", "b", "g")
    _, shared = tree.match("o1/devices/d1/telemetry")
    assert set(shared) == {"$share/h/devices/#", "$share/g/devices/#"}
    assert not tree.remove("o1/devices/+/telemetry", "b", "g")  # gone already
    assert not tree.remove("o1/devices/#", "c", "g")  # wrong group
    assert not tree.remove("o1/devices/#", "c")  # not a plain subscription
    assert tree.count == 3


def test_tree_cache_follows_changes():
    tree = SubscriptionTree()
    tree.add("o1/a/+", sub("one", 0))
    assert clients(tree.match("o1/a/b")) == {"one"}
    assert tree.add("o1/a/#", sub("two", 0)) is True
    assert clients(tree.match("o1/a/b")) == {"one", "two"}
    assert tree.add("o1/a/+", sub("one", 2)) is False  # replaced, not added
    plain, _ = tree.match("o1/a/b")
    assert {x.client: x.qos for x in plain} == {"one": 2, "two": 0}
    assert tree.count == 2
    assert tree.remove("o1/a/+", "one")
    assert clients(tree.match("o1/a/b")) == {"two"}
    tree.add("o1/a/b", sub("g1", 0, "grp", "a/b"))
    assert set(tree.match("o1/a/b")[1]) == {"$share/grp/a/b"}


def test_tree_cache_size_bound():
    tree = SubscriptionTree(cache_size=3)
    tree.add("o1/#", sub("c"))
    for i in range(10):
        assert clients(tree.match(f"o1/t{i}")) == {"c"}
    assert len(tree._cache) <= 3


def test_tree_remove_prunes():
    tree = SubscriptionTree()
    filters = ["o1/a/b/c", "o1/a/b", "o1/a/+/c/#", "o1/#", "$SYS/#", "o2/x"]
    for f in filters:
        tree.add(f, sub("c"))
        tree.add(f, sub("s", group="g"))
    assert tree.count == 12
    assert not tree.remove("o1/a/b/c/d", "c")
    assert not tree.remove("o1/a", "c")  # an inner node, not a filter anyone holds
    assert not tree.remove("o1/a/b", "nobody")
    for f in filters:
        assert tree.remove(f, "c")
        assert tree.remove(f, "s", "g")
        assert not tree.remove(f, "c")
    assert tree.count == 0
    assert tree._root.children == {}
    assert tree.match("o1/a/b") == ([], {})


_LEVEL = st.sampled_from(["a", "b", "$s", ""])


@st.composite
def _filter(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "$s", "", "+"]), max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    joined = "/".join(levels)
    return joined or "#"


_TOPIC_NAME = st.lists(_LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)


@FUZZ
@given(
    st.lists(st.tuples(st.booleans(), _filter()), max_size=12),
    st.lists(st.tuples(st.booleans(), _TOPIC_NAME), min_size=1, max_size=8),
    st.data(),
)
def test_tree_agrees_with_matches(
    filters: list[tuple[bool, str]], topics: list[tuple[bool, str]], data: st.DataObject
):
    """Org filters are stored mounted (``o1/<filter>``), $SYS ones as they are."""

    def internal(sys: bool, text: str) -> str:
        return f"$SYS/{text}" if sys else f"o1/{text}"

    def client_side(sys: bool, text: str) -> str:
        return f"$SYS/{text}" if sys else text

    tree = SubscriptionTree()
    live: dict[str, tuple[bool, str]] = {}
    for i, (sys, f) in enumerate(filters):
        check_filter(f)
        tree.add(internal(sys, f), sub(f"c{i}", i % 3))
        tree.add(internal(sys, f), sub(f"s{i}", 0, "grp"))
        tree.add(f"o2/{f}", sub(f"x{i}"))  # another org's
        live[f"c{i}"] = (sys, f)

    def check() -> None:
        for sys_topic, t in topics:
            for _ in range(2):  # computed, then cached
                plain, shared = tree.match(internal(sys_topic, t))
                want = {
                    c
                    for c, (sys, f) in live.items()
                    if sys == sys_topic and matches(client_side(sys, f), client_side(sys, t))
                }
                assert {x.client for x in plain} == want
                in_group = {x.client for members in shared.values() for x in members}
                assert in_group == {"s" + c[1:] for c in want}

    check()
    for c in data.draw(
        st.lists(st.sampled_from(sorted(live)), unique=True) if live else st.just([])
    ):
        sys, f = live.pop(c)
        assert tree.remove(internal(sys, f), c)
        assert tree.remove(internal(sys, f), "s" + c[1:], "grp")
    check()
    for i, (_, f) in enumerate(filters):
        tree.remove(f"o2/{f}", f"x{i}")
    for c, (sys, f) in list(live.items()):
        tree.remove(internal(sys, f), c)
        tree.remove(internal(sys, f), "s" + c[1:], "grp")
    assert tree.count == 0
    assert tree._root.children == {}


# -- the connection's answer to an unsupported protocol ------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, key: str) -> Any:
        return ("127.0.0.1", 50000) if key == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answer_to(data: bytes) -> tuple[bytes, bool]:
    from motes.mqtt.broker import Broker
    from motes.mqtt.connection import Connection

    async def run() -> tuple[bytes, bool]:
        broker = Broker(hooks=None)  # type: ignore[arg-type]  # never reached
        conn = Connection(broker)
        transport = _Transport()
        conn.connection_made(transport)
        conn.data_received(data)
        await asyncio.sleep(0)
        return bytes(transport.written), transport.closed

    return asyncio.run(run())


def test_connect_with_reserved_flag_is_closed_without_answer():
    written, closed = _answer_to(frame(0x10, connect_body(flags=0x03)))
    assert (written, closed) == (b"", True)


@pytest.mark.parametrize(("name", "level"), [("MQTT", 6), ("MQTT", 3)])
def test_unsupported_protocol_level_gets_connack_0x01(name: str, level: int):
    written, closed = _answer_to(frame(0x10, connect_body(name, level)))
    assert written == b"\x20\x02\x00\x01"
    assert closed


@FUZZ
@given(
    st.lists(_TOPIC_NAME, max_size=12),
    st.lists(_filter(), min_size=1, max_size=6),
    st.data(),
)
def test_topic_index_agrees_with_matches(
    topics: list[str], filters: list[str], data: st.DataObject
):
    """The retained-message index finds by filter exactly what ``matches`` would, also after
    topics are removed (their branches pruned)."""
    index: TopicIndex[str] = TopicIndex()
    live: dict[str, str] = {}
    for n, topic in enumerate(topics):
        index.set(topic, f"v{n}")
        live[topic] = f"v{n}"
    for topic in data.draw(
        st.lists(st.sampled_from(topics), unique=True) if topics else st.just([])
    ):
        assert index.pop(topic) == live.pop(topic)
        assert index.pop(topic) is None
    assert len(index) == len(live) and dict(index.items()) == live
    for f in filters:
        check_filter(f)
        assert sorted(index.match(f)) == sorted((t, v) for t, v in live.items() if matches(f, t)), f
    for topic in list(live):
        index.pop(topic)
    assert index._root.children == {}  # nothing left behind
