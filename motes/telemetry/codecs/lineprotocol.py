"""InfluxDB line protocol -> frames, vectorised.

Usage::

    decoded = decode(b"env,device=d1 temperature=21.5,count=3i 1700000000000000000")
    decoded.frames[0].fields["temperature"]  # <pyarrow.DoubleArray> [21.5]

The syntax is InfluxDB 2's: ``measurement[,tag=value...] field=value[,...] [timestamp]``.

- ``\\,`` ``\\=`` ``\\ `` and ``\\\\`` are escapes in measurements, tag keys and values and
  field keys; ``\\"`` and ``\\\\`` in string field values; any other backslash is literal.
- Field values: floats (``1``, ``-1.5e3``; ``inf``/``nan`` rejected), integers ``12i``,
  unsigned ``12u``, booleans ``t T true True TRUE f F false False FALSE``, strings
  ``"..."`` (one line: an unterminated quote is an error).
- Timestamps are integers in ``precision`` units; a point without one gets a null time.
- Leading spaces/tabs, blank lines and ``#`` comment lines are skipped, ``\\r\\n`` accepted.
- Tag and field keys must not start with ``_`` (reserved, as in InfluxDB); duplicate tag
  keys are an error, duplicate field keys in a line: the last one wins.
- A field's type is the type of its first value in the body; later lines giving it another
  type are rejected. Lines are checked in syntax first, so a line rejected for its
  syntax does not decide a type.
- When ``device`` is given every point gets the tag ``device=<device>`` and a point tagged
  with another device is rejected.

A bad line becomes a ``PointError(line, message)`` and the other lines are still decoded,
like InfluxDB's partial writes. Two decoders share one output: :func:`decode_reference`
parses line by line in Python (clear, precise, ~0.2M points/s); :func:`decode` sends the
lines it can prove simple through pyarrow.compute (GIL released, several M points/s) and
the rest through the reference parser, then both go through the same assembly, so they
return identical results for any input (tested by a differential property test).
"""

from __future__ import annotations

from motes.telemetry.codecs import columns as col
from motes.telemetry.codecs.lpfast import decode_fast
from motes.telemetry.codecs.lpref import _reference_points, assemble, parse_line, parse_series_key
from motes.telemetry.models import Decoded, DecodeError

__all__ = ["FAST_PATH_MIN_BYTES", "decode", "decode_reference", "parse_line", "parse_series_key"]

# Below this size (~40 lines) the fixed cost of the Arrow calls outweighs their speed.
FAST_PATH_MIN_BYTES = 4096
MAX_BODY_BYTES = 2**30  # Arrow string offsets are int32; servers cap bodies far lower anyway


def decode(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode a line-protocol body whose timestamps are in ``precision`` units (ns, us,
    ms, s); bad lines become ``Decoded.errors``, the others frames."""
    factor = col.precision_factor(precision)
    if len(body) > MAX_BODY_BYTES:
        raise DecodeError(f"body of {len(body)} bytes: split it into bodies under 1 GiB")
    if len(body) < FAST_PATH_MIN_BYTES:
        return decode_reference(body, precision, device=device)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return decode_reference(body, precision, device=device)  # rare: a broken client
    return decode_fast(text, factor, device)


def decode_reference(body: bytes, precision: str = "ns", *, device: str | None = None) -> Decoded:
    """Decode line by line in Python: the specification :func:`decode` must match."""
    factor = col.precision_factor(precision)
    points, errors = _reference_points(enumerate(body.split(b"\n"), 1), factor, device)
    return assemble([points], errors)
