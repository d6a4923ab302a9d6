"""MQTT 3.1, 3.1.1 and 5.0 control packets: framing, decoding and encoding.

    frames, used = split(buffer, max_size)          # complete packets at the buffer's start
    for first, body in frames:
        packet = decode(first, body, version)       # Connect | Publish | Ack | Subscribe | ...
    transport.write(encode_publish(...))

Decoding raises :class:`MalformedPacket` (with the MQTT 5 reason code to disconnect with)
for anything the specification calls malformed or a protocol error; the broker answers it
and closes only that connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}  # fmt: skip

# MQTT 5 reason codes (3.1.1 CONNACK return codes are mapped in connack_code)
SUCCESS = 0x00
GRANTED_QOS_1, GRANTED_QOS_2 = 0x01, 0x02
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_IDENTIFIER_IN_USE = 0x91
PACKET_IDENTIFIER_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
ADMINISTRATIVE_ACTION = 0x98
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
CONNECTION_RATE_EXCEEDED = 0x9F
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

# property identifiers (MQTT 5, 2.2.2.2)
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_AVAILABLE = 0x28
SUBSCRIPTION_ID_AVAILABLE = 0x29
SHARED_AVAILABLE = 0x2A

_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
PROPERTY_TYPES = {
    PAYLOAD_FORMAT: _BYTE, MESSAGE_EXPIRY: _FOUR, CONTENT_TYPE: _UTF8, RESPONSE_TOPIC: _UTF8,
    CORRELATION_DATA: _BINARY, SUBSCRIPTION_ID: _VARINT, SESSION_EXPIRY: _FOUR,
    ASSIGNED_CLIENT_ID: _UTF8, SERVER_KEEP_ALIVE: _TWO, AUTH_METHOD: _UTF8, AUTH_DATA: _BINARY,
    REQUEST_PROBLEM_INFO: _BYTE, WILL_DELAY: _FOUR, REQUEST_RESPONSE_INFO: _BYTE,
    RESPONSE_INFO: _UTF8, SERVER_REFERENCE: _UTF8, REASON_STRING: _UTF8, RECEIVE_MAXIMUM: _TWO,
    TOPIC_ALIAS_MAXIMUM: _TWO, TOPIC_ALIAS: _TWO, MAXIMUM_QOS: _BYTE, RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR, MAXIMUM_PACKET_SIZE: _FOUR, WILDCARD_AVAILABLE: _BYTE,
    SUBSCRIPTION_ID_AVAILABLE: _BYTE, SHARED_AVAILABLE: _BYTE,
}  # fmt: skip
# the packets each property may appear in (a property elsewhere is a protocol error)
_WILL_PROPERTIES = frozenset(
    {PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, WILL_DELAY,
     USER_PROPERTY}
)  # fmt: skip
_PUBLISH_PROPERTIES = frozenset(
    {PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA,
     SUBSCRIPTION_ID, TOPIC_ALIAS, USER_PROPERTY}
)  # fmt: skip

Properties = dict[int, Any]
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class MalformedPacket(Exception):
    """Bytes that are not a valid packet; ``code`` is the MQTT 5 reason to disconnect with."""

    def __init__(self, message: str, code: int = MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    version: int  # 3 (3.1), 4 (3.1.1) or 5
    client_id: str
    clean_start: bool
    keep_alive: int
    username: str | None
    password: bytes | None
    will: Will | None
    properties: Properties


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: Properties


@dataclass(slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int
    code: int
    properties: Properties


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]  # filter, options byte (QoS in bits 0-1)
    properties: Properties


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    filters: list[str]
    properties: Properties


@dataclass(slots=True)
class Disconnect:
    code: int
    properties: Properties


@dataclass(slots=True)
class Simple:
    """PINGREQ, and AUTH (which the broker refuses)."""

    kind: int


Packet = Connect | Publish | Ack | Subscribe | Unsubscribe | Disconnect | Simple


# -- framing ------------------------------------------------------------------------------


def split(buf: bytes | bytearray, max_size: int) -> tuple[list[tuple[int, bytes]], int]:
    """The complete packets at the start of ``buf`` as (first byte, body), and bytes used.

    Raises MalformedPacket for a bad length and PACKET_TOO_LARGE past ``max_size``.
    """
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        first = buf[pos]
        length = buf[pos + 1]
        i = pos + 2
        if length & 0x80:
            length &= 0x7F
            shift = 7
            while True:
                if i >= end:
                    return out, pos
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    if out:  # the complete packets before it are answered first
                        return out, pos
                    raise MalformedPacket("remaining length longer than four bytes")
        if length + (i - pos) > max_size:
            if out:
                return out, pos
            raise MalformedPacket(
                f"packet of {length + i - pos} bytes exceeds the maximum of {max_size}",
                PACKET_TOO_LARGE,
            )
        if end - i < length:
            return out, pos
        out.append((first, bytes(buf[i : i + length])))
        pos = i + length
    return out, pos


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return bytes((first,)) + varint(n) + body


# -- decoding -----------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise MalformedPacket("packet ends early")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise MalformedPacket("packet ends early")
        self.pos += 2
        return int(_U16.unpack_from(self.data, self.pos - 2)[0])

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise MalformedPacket("packet ends early")
        self.pos += 4
        return int(_U32.unpack_from(self.data, self.pos - 4)[0])

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 21:
                raise MalformedPacket("variable byte integer longer than four bytes")

    def binary(self) -> bytes:
        n = self.u16()
        if self.pos + n > len(self.data):
            raise MalformedPacket("packet ends early")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def utf8(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("string is not valid UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("string contains U+0000")
        return text

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def properties(self, allowed: frozenset[int] | None = None) -> Properties:
        n = self.varint()
        end = self.pos + n
        if end > len(self.data):
            raise MalformedPacket("properties run past the packet")
        props: Properties = {}
        while self.pos < end:
            pid = self.varint()
            kind = PROPERTY_TYPES.get(pid)
            if kind is None or (allowed is not None and pid not in allowed):
                raise MalformedPacket(f"property 0x{pid:02X} is not allowed here")
            value = self._value(kind)
            if pid in (USER_PROPERTY, SUBSCRIPTION_ID):
                props.setdefault(pid, []).append(value)
            elif pid in props:
                raise MalformedPacket(f"property 0x{pid:02X} given twice", PROTOCOL_ERROR)
            else:
                props[pid] = value
        if self.pos != end:
            raise MalformedPacket("properties run past their length")
        return props

    def _value(self, kind: int) -> Any:
        if kind == _BYTE:
            return self.byte()
        if kind == _TWO:
            return self.u16()
        if kind == _FOUR:
            return self.u32()
        if kind == _VARINT:
            return self.varint()
        if kind == _UTF8:
            return self.utf8()
        if kind == _BINARY:
            return self.binary()
        return (self.utf8(), self.utf8())


def decode(first: int, body: bytes, version: int) -> Packet:
    """One packet from its first byte and body; ``version`` is the connection's (0 before
    CONNECT)."""
    kind = first >> 4
    flags = first & 0x0F
    if kind == PUBLISH:
        return decode_publish(flags, body, version)
    expected = 0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
    if flags != expected:
        raise MalformedPacket(f"{NAMES.get(kind, kind)} with reserved flags 0x{flags:X}")
    r = _Reader(body)
    if kind == CONNECT:
        return _connect(r)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _ack(kind, r, version)
    if kind == SUBSCRIBE:
        return _subscribe(r, version)
    if kind == UNSUBSCRIBE:
        return _unsubscribe(r, version)
    if kind == PINGREQ:
        _empty(r, "PINGREQ")
        return Simple(PINGREQ)
    if kind == DISCONNECT:
        if version == 5 and r.left():
            code = r.byte()
            props = r.properties() if r.left() else {}
            return Disconnect(code, props)
        _empty(r, "DISCONNECT")
        return Disconnect(SUCCESS, {})
    if kind == AUTH and version == 5:
        return Simple(AUTH)
    raise MalformedPacket(f"a client may not send {NAMES.get(kind, f'packet type {kind}')}")


def _empty(r: _Reader, name: str) -> None:
    if r.left():
        raise MalformedPacket(f"{name} carries {r.left()} unexpected bytes")


def _connect(r: _Reader) -> Connect:
    name = r.utf8()
    version = r.byte()
    if (name, version) not in (("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)):
        raise MalformedPacket(
            f"unsupported protocol {name!r} level {version}", UNSUPPORTED_PROTOCOL_VERSION
        )
    flags = r.byte()
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    keep_alive = r.u16()
    props = r.properties() if version == 5 else {}
    client_id = r.utf8()
    will = None
    if flags & 0x04:
        will_props = r.properties(_WILL_PROPERTIES) if version == 5 else {}
        topic = r.utf8()
        payload = r.binary()
        qos = (flags >> 3) & 0x03
        if qos == 3:
            raise MalformedPacket("will QoS 3")
        will = Will(topic, payload, qos, bool(flags & 0x20), will_props)
    elif flags & 0x38:
        raise MalformedPacket("will QoS or retain set without a will")
    username = r.utf8() if flags & 0x80 else None
    password = r.binary() if flags & 0x40 else None
    if password is not None and username is None and version < 5:
        raise MalformedPacket("password without a user name")
    _empty(r, "CONNECT")
    return Connect(version, client_id, bool(flags & 0x02), keep_alive, username, password, will,
                   props)  # fmt: skip


def decode_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH with DUP set at QoS 0")
    if version < 5 and len(body) >= 2:  # the hot path: no properties, no reader object
        end = 2 + (body[0] << 8 | body[1])
        if end + (2 if qos else 0) <= len(body):
            try:
                topic = body[2:end].decode()
            except UnicodeDecodeError:
                raise MalformedPacket("string is not valid UTF-8") from None
            if "\x00" in topic:
                raise MalformedPacket("string contains U+0000")
            packet_id = 0
            if qos:
                packet_id = body[end] << 8 | body[end + 1]
                if packet_id == 0:
                    raise MalformedPacket("PUBLISH with packet identifier 0")
                end += 2
            return Publish(topic, body[end:], qos, bool(flags & 0x01), dup, packet_id, {})
    r = _Reader(body)
    topic = r.utf8()
    packet_id = 0
    if qos:
        packet_id = r.u16()
        if packet_id == 0:
            raise MalformedPacket("PUBLISH with packet identifier 0")
    props = r.properties(_PUBLISH_PROPERTIES) if version == 5 else {}
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), dup, packet_id, props)


def _ack(kind: int, r: _Reader, version: int) -> Ack:
    packet_id = r.u16()
    code, props = SUCCESS, {}
    if version == 5 and r.left():
        code = r.byte()
        if r.left():
            props = r.properties()
    _empty(r, NAMES[kind])
    return Ack(kind, packet_id, code, props)


def _subscribe(r: _Reader, version: int) -> Subscribe:
    packet_id = r.u16()
    props = r.properties() if version == 5 else {}
    filters: list[tuple[str, int]] = []
    while r.left():
        topic = r.utf8()
        options = r.byte()
        if (
            options & 0x03 == 3
            or (version == 5 and options & 0xC0)
            or (version < 5 and options & 0xFC)
        ):
            raise MalformedPacket(f"subscription options 0x{options:02X} for {topic!r}")
        if version == 5 and (options >> 4) & 0x03 == 3:
            raise MalformedPacket("retain handling 3")
        filters.append((topic, options))
    if not filters:
        raise MalformedPacket("SUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return Subscribe(packet_id, filters, props)


def _unsubscribe(r: _Reader, version: int) -> Unsubscribe:
    packet_id = r.u16()
    props = r.properties() if version == 5 else {}
    filters = []
    while r.left():
        filters.append(r.utf8())
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without a topic filter", PROTOCOL_ERROR)
    return Unsubscribe(packet_id, filters, props)


# -- encoding -----------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def encode_properties(props: Properties) -> bytes:
    out = bytearray()
    for pid, value in props.items():
        kind = PROPERTY_TYPES[pid]
        for item in value if pid in (USER_PROPERTY, SUBSCRIPTION_ID) else (value,):
            out += varint(pid)
            if kind == _BYTE:
                out.append(item)
            elif kind == _TWO:
                out += _U16.pack(item)
            elif kind == _FOUR:
                out += _U32.pack(item)
            elif kind == _VARINT:
                out += varint(item)
            elif kind == _UTF8:
                out += _utf8(item)
            elif kind == _BINARY:
                out += _U16.pack(len(item)) + item
            else:
                out += _utf8(item[0]) + _utf8(item[1])
    return varint(len(out)) + bytes(out)


def encode_connack(session_present: bool, code: int, version: int, props: Properties) -> bytes:
    if version == 5:
        return _frame(0x20, bytes((int(session_present), code)) + encode_properties(props))
    return _frame(0x20, bytes((int(session_present and code == 0), connack_code(code))))


def connack_code(code: int) -> int:
    """The MQTT 3.1.1 CONNACK return code for an MQTT 5 reason code."""
    if code == SUCCESS:
        return 0
    return {
        UNSUPPORTED_PROTOCOL_VERSION: 1,
        CLIENT_IDENTIFIER_NOT_VALID: 2,
        SERVER_UNAVAILABLE: 3,
        SERVER_BUSY: 3,
        CONNECTION_RATE_EXCEEDED: 3,
        BAD_USER_NAME_OR_PASSWORD: 4,
        NOT_AUTHORIZED: 5,
    }.get(code, 5)


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int,
    version: int,
    props: Properties | None = None,
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    head = _utf8(topic)
    if qos:
        head += _U16.pack(packet_id)
    if version == 5:
        head += encode_properties(props or {})
    return _frame(first, head + payload)


_ACK_FIRST = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70}


def encode_ack(
    kind: int, packet_id: int, version: int, code: int = SUCCESS, reason: str | None = None
) -> bytes:
    if version == 5 and (code or reason):
        props = encode_properties({REASON_STRING: reason}) if reason else b""
        return _frame(_ACK_FIRST[kind], _U16.pack(packet_id) + bytes((code,)) + props)
    return bytes((_ACK_FIRST[kind], 2)) + _U16.pack(packet_id)


def encode_suback(packet_id: int, codes: list[int], version: int) -> bytes:
    if version < 5:
        codes = [c if c < 0x80 else 0x80 for c in codes]
    props = encode_properties({}) if version == 5 else b""
    return _frame(0x90, _U16.pack(packet_id) + props + bytes(codes))


def encode_unsuback(packet_id: int, codes: list[int], version: int) -> bytes:
    if version < 5:
        return _frame(0xB0, _U16.pack(packet_id))
    return _frame(0xB0, _U16.pack(packet_id) + encode_properties({}) + bytes(codes))


PINGRESP_PACKET = b"\xd0\x00"


def encode_disconnect(code: int, reason: str | None = None) -> bytes:
    """MQTT 5 only: 3.1.1 servers just close the connection."""
    props = {REASON_STRING: reason[:200]} if reason else {}
    return _frame(0xE0, bytes((code,)) + encode_properties(props))


# -- client side (external-broker mode) ---------------------------------------------------


def encode_connect(
    client_id: str,
    username: str | None,
    password: str | None,
    keep_alive: int,
    clean_start: bool,
    version: int = 4,
    properties: Properties | None = None,
) -> bytes:
    flags = (0x02 if clean_start else 0) | (0x80 if username else 0) | (0x40 if password else 0)
    body = _utf8("MQTT") + bytes((version, flags)) + _U16.pack(keep_alive)
    if version == 5:
        body += encode_properties(properties or {})
    body += _utf8(client_id)
    if username:
        body += _utf8(username)
    if password:
        body += _utf8(password)
    return _frame(0x10, body)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]], version: int = 4) -> bytes:
    body = _U16.pack(packet_id)
    if version == 5:
        body += encode_properties({})
    for topic_filter, options in filters:
        body += _utf8(topic_filter) + bytes((options,))
    return _frame(0x82, body)


def decode_connack(body: bytes) -> tuple[bool, int]:
    """(session present, return/reason code) of a CONNACK body."""
    if len(body) < 2:
        raise MalformedPacket("CONNACK ends early")
    return bool(body[0] & 0x01), body[1]


PINGREQ_PACKET = b"\xc0\x00"
