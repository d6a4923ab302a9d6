"""Codecs: request bodies -> :class:`~motes.telemetry.models.Decoded`, chosen by media type.

Usage::

    decoded = decode("application/json", body, device="sample", measurement="telemetry",
                     precision="ms")

=====================================================  ===========================================
Content-Type (parameters such as ``charset`` ignored)  codec
=====================================================  ===========================================
none, ``text/plain``,                                  InfluxDB line protocol
``application/vnd.influx.line-protocol``               (:mod:`.lineprotocol`)
``application/json``                                   seed-000 device batch or array of points
                                                       (:mod:`.jsonpoints`, told apart by shape)
``application/msgpack``, ``application/x-msgpack``,    the same two shapes in MessagePack
``application/vnd.msgpack``
``application/senml+json``                             SenML JSON (:mod:`.senml`)
``application/senml+cbor``, ``application/cbor``       SenML CBOR
=====================================================  ===========================================

``precision`` (ns, us, ms, s) gives the unit of integer times; None means the codec's
default: ns for line protocol (as InfluxDB), ms for JSON and MessagePack (as seed 000).
SenML times are seconds by definition. Anything else raises :class:`UnsupportedMediaType`;
a body that cannot be decoded at all raises ``DecodeError``.
"""

from __future__ import annotations

from collections.abc import Callable

from motes.telemetry.codecs import jsonpoints, lineprotocol, senml
from motes.telemetry.models import Decoded, TelemetryError

__all__ = ["UnsupportedMediaType", "check_media_type", "decode", "is_line_protocol", "media_type"]

Codec = Callable[[bytes, str | None, str, str | None], Decoded]


class UnsupportedMediaType(TelemetryError):
    """No codec for the request's Content-Type (415)."""


def _line_protocol(body: bytes, device: str | None, _: str, precision: str | None) -> Decoded:
    return lineprotocol.decode(body, precision or "ns", device=device)


def _json(body: bytes, device: str | None, measurement: str, precision: str | None) -> Decoded:
    return jsonpoints.decode_json(
        body, device=device, measurement=measurement, precision=precision or "ms"
    )


def _msgpack(body: bytes, device: str | None, measurement: str, precision: str | None) -> Decoded:
    return jsonpoints.decode_msgpack(
        body, device=device, measurement=measurement, precision=precision or "ms"
    )


def _senml_json(body: bytes, device: str | None, measurement: str, _: str | None) -> Decoded:
    return senml.decode_senml_json(body, device=device, measurement=measurement)


def _senml_cbor(body: bytes, device: str | None, measurement: str, _: str | None) -> Decoded:
    return senml.decode_senml_cbor(body, device=device, measurement=measurement)


LINE_PROTOCOL_TYPES = ("", "text/plain", "application/vnd.influx.line-protocol")
CODECS: dict[str, Codec] = {
    **dict.fromkeys(LINE_PROTOCOL_TYPES, _line_protocol),
    "application/json": _json,
    "application/msgpack": _msgpack,
    "application/x-msgpack": _msgpack,
    "application/vnd.msgpack": _msgpack,
    "application/senml+json": _senml_json,
    "application/senml+cbor": _senml_cbor,
    "application/cbor": _senml_cbor,
}


def media_type(content_type: str | None) -> str:
    """``"Text/Plain; charset=utf-8"`` -> ``"text/plain"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_line_protocol(content_type: str | None) -> bool:
    """Whether ``content_type`` selects the line-protocol codec."""
    return media_type(content_type) in LINE_PROTOCOL_TYPES


def check_media_type(content_type: str | None) -> None:
    """Raise :class:`UnsupportedMediaType` unless some codec reads ``content_type``."""
    if media_type(content_type) not in CODECS:
        known = ", ".join(sorted(t for t in CODECS if t))
        raise UnsupportedMediaType(f'unsupported Content-Type "{content_type}": use one of {known}')


def decode(
    content_type: str | None,
    body: bytes,
    *,
    device: str | None = None,
    measurement: str = "telemetry",
    precision: str | None = None,
) -> Decoded:
    """Decode ``body`` with the codec of ``content_type``."""
    check_media_type(content_type)
    return CODECS[media_type(content_type)](body, device, measurement, precision)
