"""SenML (RFC 8428) packs in JSON and CBOR -> frames.

Usage::

    decode_senml_json(b'[{"bn": "urn:dev:ow:10e2073a:", "bt": 1.7e9, "n": "temp", "v": 21.5}]')
    decode_senml_cbor(body, device="s1", measurement="env")

Each record becomes one point (one row) of ``measurement``, after resolving the base
fields as RFC 8428 section 4.6 says: ``bn`` + ``n`` is the name, ``bt`` + ``t`` the time,
``bv`` + ``v`` the value, ``bs`` + ``s`` the sum; base fields carry over to later records.

- **Device and field name.** Without ``device`` the base name names the device (the tag
  is ``bn`` without its trailing ``:``, ``/`` or ``.``, e.g. ``urn:dev:ow:10e2073a``) and
  the field is ``n``; a record with no base name is rejected. With ``device``, the field
  is ``n`` when ``bn`` names that device (``bn`` is the device, or ends in ``:<device>``
  or ``/<device>``) and the full name ``bn + n`` otherwise (so a gateway's per-sensor base
  names stay distinguishable). Full names must follow RFC 8428's name rules.
- **Values.** ``v`` -> float field, ``vs`` -> string, ``vb`` -> boolean, ``vd`` (data)
  -> string holding its base64url text (CBOR byte strings are encoded the same way),
  ``s`` (sum) -> float field named ``<field>_sum``. A record has at most one of v/vs/vb/vd.
  A record with only base fields just sets them. Units (``u``, ``bu``) are not stored.
- **Time.** Seconds; values below 2**28 are relative to now (RFC 8428 section 4.5.3):
  a resulting relative time of exactly 0 (no ``t``/``bt``) gives a null time, which the
  server stamps on receipt. ``ut`` is ignored.
- Records with an unknown field whose label ends in ``_`` (must-understand) or ``bver``
  above 10 are rejected, per the RFC.

CBOR packs use the RFC's integer labels (bn=-2, bt=-3, bu=-4, bv=-5, bs=-16, bver=-1,
n=0, u=1, v=2, vs=3, vb=4, s=5, t=6, ut=7, vd=8); string labels are accepted too.
A single record object is accepted as a one-record pack.
"""

from __future__ import annotations

import base64
import math
import re
import time
from decimal import Decimal
from typing import Any

import cbor2
import orjson

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.columns import Reject
from motes.telemetry.models import DEVICE_TAG, Decoded, DecodeError, PointError, format_tagset

__all__ = ["decode_senml", "decode_senml_cbor", "decode_senml_json"]

CBOR_LABELS = {-2: "bn", -3: "bt", -4: "bu", -5: "bv", -16: "bs", -1: "bver", 0: "n",
               1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}  # fmt: skip
RELATIVE_LIMIT = 2**28
MAX_INTEGER = 2**64  # bigger CBOR bignums would overflow float arithmetic
SENML_VERSION = 10
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_VALUE_KEYS = ("v", "vs", "vb", "vd")


def decode_senml_json(
    body: bytes,
    *,
    device: str | None = None,
    measurement: str = "telemetry",
    now_ns: int | None = None,
) -> Decoded:
    """Decode a SenML JSON pack (``application/senml+json``)."""
    try:
        pack = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}") from None
    return decode_senml(pack, device=device, measurement=measurement, now_ns=now_ns)


def decode_senml_cbor(
    body: bytes,
    *,
    device: str | None = None,
    measurement: str = "telemetry",
    now_ns: int | None = None,
) -> Decoded:
    """Decode a SenML CBOR pack (``application/senml+cbor``)."""
    try:
        pack = cbor2.loads(body)
    except Exception as exc:  # CBORDecodeError, but also ValueError/OverflowError from tags
        raise DecodeError(f"invalid CBOR: {exc or type(exc).__name__}") from None
    return decode_senml(pack, device=device, measurement=measurement, now_ns=now_ns)


def decode_senml(
    pack: object, *, device: str | None, measurement: str = "telemetry", now_ns: int | None = None
) -> Decoded:
    """Decode a parsed pack: a list of records (dicts with string or CBOR integer labels)."""
    if isinstance(pack, dict):
        pack = [pack]
    if not isinstance(pack, list):
        raise DecodeError("a SenML pack must be an array of records")
    resolver = _Resolver(device, time.time_ns() if now_ns is None else now_ns)
    builder = col.PointsBuilder()
    errors = []
    for number, record in enumerate(pack, 1):
        try:
            point = resolver.resolve(record)
        except Reject as exc:
            errors.append(PointError(number, str(exc)))
            continue
        if point is not None:
            builder.add(number, measurement, *point)
    return col.assemble(builder.build(), errors, col.majority_kind_wins, coerce_numbers=True)


class _Resolver:
    """Resolves records one after the other, carrying the base fields along."""

    def __init__(self, device: str | None, now_ns: int) -> None:
        self.device = device
        self.now_ns = now_ns
        self.base: dict[str, Any] = {"bn": "", "bt": 0, "bv": 0, "bs": 0}
        self.tagsets: dict[str, str] = {}  # device -> tag set: most packs name one device

    def resolve(
        self, record: object
    ) -> tuple[str, int | None, dict[str, tuple[int, object]]] | None:
        """(tag set, time ns, fields) of a record, None for a base-only record, or Reject."""
        if not isinstance(record, dict):
            raise Reject("a SenML record must be an object")
        record = {CBOR_LABELS.get(k, k): v for k, v in record.items()}
        self._update_base(record)
        values = [key for key in _VALUE_KEYS if key in record]
        if not values and "s" not in record:
            if "n" in record or "t" in record:
                raise Reject("record has no value (v, vs, vb, vd or s)")
            return None
        if len(values) > 1:
            raise Reject(f"record has more than one value ({', '.join(values)})")
        tag, field = self._names(record.get("n", ""))
        fields = {}
        if values:
            fields[field] = self._value(values[0], record[values[0]])
        if "s" in record:
            fields[f"{field}_sum"] = (col.FLOAT, _finite(self.base["bs"] + _number(record, "s")))
        tagset = self.tagsets.get(tag) or self.tagsets.setdefault(
            tag, format_tagset({DEVICE_TAG: tag})
        )
        return tagset, self._time(record), fields

    def _update_base(self, record: dict[Any, Any]) -> None:
        for key in record:
            if isinstance(key, str) and key.endswith("_"):
                raise Reject(f'unsupported must-understand field "{key}"')
        if "bn" in record:
            self.base["bn"] = _text(record, "bn")
        for key in ("bt", "bv", "bs"):
            if key in record:
                self.base[key] = _number(record, key)
        version = record.get("bver", SENML_VERSION)
        if type(version) is not int or version > SENML_VERSION:
            raise Reject(f"unsupported SenML version {version!r} (this server reads 10)")

    def _names(self, n: object) -> tuple[str, str]:
        if type(n) is not str:
            raise Reject('"n" must be a string')
        bn: str = self.base["bn"]
        if not bn + n:
            raise Reject('record has no name ("bn" or "n")')
        if not _NAME.fullmatch(bn + n):
            raise Reject(f'invalid SenML name "{bn + n}"')
        if self.device is None:
            if not bn.rstrip(":/."):
                raise Reject(
                    "no device: post the pack to /api/v1/devices/{device}/telemetry"
                    " or name the device in a base name (bn)"
                )
            return bn.rstrip(":/."), _field_name(n)
        named = bn.rstrip(":/.")
        if named == self.device or named.endswith((f":{self.device}", f"/{self.device}")):
            return self.device, _field_name(n)
        return self.device, _field_name(bn + n)

    def _value(self, key: str, value: object) -> tuple[int, object]:
        if key == "v":
            return col.FLOAT, _finite(self.base["bv"] + _number({"v": value}, "v"))
        if key == "vb" and type(value) is bool:
            return col.BOOLEAN, value
        if key == "vs" and type(value) is str:
            return col.STRING, value
        if key == "vd" and type(value) is bytes:
            return col.STRING, base64.urlsafe_b64encode(value).rstrip(b"=").decode()
        if key == "vd" and type(value) is str and _BASE64URL.fullmatch(value):
            return col.STRING, value
        expected = {"vb": "a boolean", "vs": "a string", "vd": "base64url data"}[key]
        raise Reject(f'"{key}" must be {expected}')

    def _time(self, record: dict[Any, Any]) -> int | None:
        seconds = self.base["bt"] + (_number(record, "t") if "t" in record else 0)
        if not math.isfinite(seconds):
            raise Reject(f"time {seconds} is out of range")
        ns = _seconds_to_ns(seconds)
        if seconds < RELATIVE_LIMIT:
            if ns == 0:
                return None  # "now": the server stamps it on receipt
            ns += self.now_ns
        result = col.scale_time(ns, 1)
        if result is None:
            raise Reject(f"time {seconds} is out of range")
        return result


def _field_name(name: str) -> str:
    if not name:
        raise Reject('record has no name ("n")')
    if name.startswith("_"):
        raise Reject(f'field name "{name}" is reserved (starts with "_")')
    return name


def _finite(number: int | float) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise Reject(f"value {number} is out of range")
    return value


def _text(record: dict[Any, Any], key: str) -> str:
    value = record[key]
    if type(value) is not str:
        raise Reject(f'"{key}" must be a string')
    return value


def _number(record: dict[Any, Any], key: str) -> int | float:
    value = record[key]
    if type(value) is int and -MAX_INTEGER <= value <= MAX_INTEGER:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    raise Reject(f'"{key}" must be a finite number')


def _seconds_to_ns(seconds: int | float) -> int:
    if type(seconds) is int:
        return seconds * 1_000_000_000
    # Through the shortest decimal repr: 1700000000.123 s is ...123000000 ns, not ...122999808.
    return int((Decimal(repr(seconds)) * 1_000_000_000).to_integral_value())
