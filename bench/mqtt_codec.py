"""The few MQTT packets the MQTT benchmark sends and reads, MQTT 3.1.1 (level 4) and 5.

Written here rather than taken from a client library so that the load generator encodes
its packets once, up front, and sends them as raw bytes (``bench/mqtt_load.py``); it does
not use ``motes.mqtt``. Only what the benchmark needs: CONNECT (clean session, optional
username/password), PUBLISH at QoS 0 or 1, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT, and a
splitter that cuts a received byte stream into packets.
"""

from __future__ import annotations

import struct

V311, V5 = 4, 5  # protocol levels
CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ_TYPE, PINGRESP, DISCONNECT_TYPE = 0x82, 0x90, 0xC0, 0xD0, 0xE0
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

_U16 = struct.Struct(">H")


def varint(n: int) -> bytes:
    """The remaining-length encoding: 7 bits a byte, low bits first, high bit = more."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    """Fixed header (type and flags, remaining length) followed by ``body``."""
    return bytes([first]) + varint(len(body)) + body


def string(text: str | bytes) -> bytes:
    """A UTF-8 string (or binary data) with its two-byte length in front."""
    raw = text.encode() if isinstance(text, str) else text
    return _U16.pack(len(raw)) + raw


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    keepalive: int = 60,
    version: int = V311,
) -> bytes:
    """CONNECT with a clean session (clean start in MQTT 5) and no will."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    header = string("MQTT") + bytes([version, flags]) + _U16.pack(keepalive)
    if version == V5:
        header += b"\x00"  # no properties
    body = header + string(client_id)
    if username is not None:
        body += string(username)
    if password is not None:
        body += string(password)
    return packet(CONNECT, body)


def publish(
    topic: bytes, payload: bytes, *, qos: int = 1, packet_id: int = 0, version: int = V311
) -> bytes:
    """PUBLISH of ``payload``; ``topic`` is already length-prefixed (see ``string``)."""
    body = topic + (_U16.pack(packet_id) if qos else b"") + (b"\x00" if version == V5 else b"")
    return packet(PUBLISH | (qos << 1), body + payload)


def subscribe(topic_filter: str, *, qos: int = 1, packet_id: int = 1, version: int = V311) -> bytes:
    """SUBSCRIBE to one topic filter at ``qos``."""
    props = b"\x00" if version == V5 else b""
    return packet(SUBSCRIBE, _U16.pack(packet_id) + props + string(topic_filter) + bytes([qos]))


def puback(packet_id: bytes) -> bytes:
    """PUBACK for a packet id given as its two bytes (success; valid in 3.1.1 and 5)."""
    return b"\x40\x02" + packet_id


def split(buf: bytes | bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """The complete packets at the start of ``buf`` and the offset after the last of them.

    Each packet is ``(first byte, body start, body end)``; a packet cut off at the end of
    ``buf`` is left for the next call, once more bytes arrived.
    """
    out: list[tuple[int, int, int]] = []
    n, i = len(buf), 0
    while i + 1 < n:
        length, shift, j = 0, 0, i + 1
        while True:
            if j >= n:
                return out, i
            byte = buf[j]
            length |= (byte & 0x7F) << shift
            j += 1
            if byte < 0x80:
                break
            shift += 7
        end = j + length
        if end > n:
            break
        out.append((buf[i], j, end))
        i = end
    return out, i


def connack_code(buf: bytes | bytearray, start: int, end: int) -> int:
    """The CONNACK's return code (3.1.1) or reason code (5): 0 is accepted."""
    return buf[start + 1] if end - start >= 2 else 0xFF


def ack_reason(buf: bytes | bytearray, start: int, end: int) -> int:
    """A PUBACK's reason code: 0 unless an MQTT 5 broker refused the message (≥ 0x80)."""
    return buf[start + 2] if end - start >= 3 else 0


def packet_id(buf: bytes | bytearray, start: int) -> int:
    """The packet id at ``start`` (PUBACK and SUBACK bodies begin with it)."""
    return (buf[start] << 8) | buf[start + 1]
