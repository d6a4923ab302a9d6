"""HTTP plumbing shared by every API module: one error shape, auth, bounded bodies.

Every error leaves as ``{"code": "...", "message": "...", "errors": [...]?}`` — the shape
InfluxDB's v2 API uses, so its clients show our messages — and exceptions are mapped to
status codes in exactly one place, :func:`error_response`.
"""

from __future__ import annotations

import base64
import logging
import zlib
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from motes.registry.common import Actor
from motes.registry.models import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Principal,
    RegistryError,
    Throttled,
    Unauthorized,
)
from motes.telemetry.codecs import UnsupportedMediaType
from motes.telemetry.models import (
    DecodeError,
    Overloaded,
    QueryError,
    StoreUnavailable,
    TelemetryError,
    UnknownBucket,
    UnknownMeasurement,
    WriteRejected,
)

log = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 100


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: the limit is {limit} bytes")
        self.limit = limit


class BadRequest(Exception):
    """A request-level problem (bad parameter, bad encoding) -> 400."""


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def error_body(
    code: str, message: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors[:MAX_LISTED_ERRORS]
        if len(errors) > MAX_LISTED_ERRORS:
            body["errors_truncated"] = len(errors) - MAX_LISTED_ERRORS
    return body


STATUS: list[tuple[type[Exception], int, str]] = [
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not found"),
    (UnknownBucket, 404, "not found"),
    (UnknownMeasurement, 404, "not found"),
    (Conflict, 409, "conflict"),
    (Throttled, 429, "too many requests"),
    (BodyTooLarge, 413, "request too large"),
    (UnsupportedMediaType, 415, "unsupported media type"),
    (Overloaded, 503, "unavailable"),
    (StoreUnavailable, 503, "unavailable"),
    (WriteRejected, 400, "invalid"),
    (DecodeError, 400, "invalid"),
    (QueryError, 400, "invalid"),
    (Invalid, 400, "invalid"),
    (BadRequest, 400, "invalid"),
    (RegistryError, 400, "invalid"),
    (TelemetryError, 500, "internal error"),
]


#: exception bases answered as 4xx/503 without being treated as server errors
HANDLED: tuple[type[Exception], ...] = (TelemetryError, RegistryError, BodyTooLarge, BadRequest)


def error_response(request: Request, exc: Exception) -> Response:
    """The one place exceptions become HTTP statuses."""
    match = next(((s, c) for kind, s, c in STATUS if isinstance(exc, kind)), None)
    if match is None:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal error", "internal server error"), status_code=500)
    status, code = match
    message = getattr(exc, "message", None) or str(exc)
    errors = [e.to_dict() for e in getattr(exc, "errors", [])]
    headers = {}
    if isinstance(exc, Overloaded | StoreUnavailable | Throttled):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Token realm="motes"'
    return JSONResponse(error_body(code, message, errors), status_code=status, headers=headers)


def credentials_from(request: Request) -> tuple[str, str]:
    """``(scheme, secret)`` from ``Authorization: Token|Bearer|Thing|Device <secret>``, v1
    Basic auth or ``?p=<token>``; the scheme is lower case (``token`` for Basic and ``p``)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme in ("token", "bearer", "thing", "device") and value.strip():
        return scheme, value.strip()
    if scheme == "basic" and value:
        try:
            _, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise Unauthorized("unauthorized access: malformed Basic credentials") from exc
        if password:
            return "token", password
    if request.query_params.get("p"):
        return "token", request.query_params["p"]
    if header:
        raise Unauthorized(
            'unauthorized access: use "Authorization: Token <token>", "Bearer <access token>" '
            'or "Thing <device key>"'
        )
    raise Unauthorized("unauthorized access: missing Authorization header")


def authenticate(request: Request, org: str | None = None) -> Principal:
    """Who the request acts as, in the org it names (``org``, else ``?orgID=``/``?org=``)
    or its own."""
    scheme, secret = credentials_from(request)
    params = request.query_params
    org_id, org_name = (org, org) if org else (params.get("orgID"), params.get("org"))
    principal: Principal = request.app.state.registry.authenticate(
        scheme, secret, org_id or None, org_name or None
    )
    request.state.principal = principal
    return principal


def remote_of(request: Request) -> str | None:
    return request.client.host if request.client else None


def actor_of(request: Request, principal: Principal) -> Actor:
    return Actor(principal.actor, remote_of(request), principal.label)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped if sent so, refused past ``limit`` bytes either way."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        return await run_in_threadpool(gunzip, body, limit)
    if encoding not in ("identity", ""):
        raise UnsupportedMediaType(f'unsupported Content-Encoding "{encoding}": use gzip or none')
    return body


GZIP_CHUNK = 64 * 1024


def gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip stream (concatenated members are one body), at most ``limit``.

    Input goes in fixed-size slices so a body of many tiny members costs linear time.
    """
    view = memoryview(body)
    parts: list[bytes] = []
    size = pos = 0
    while pos < len(view):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof and pos < len(view):
            chunk = view[pos : pos + GZIP_CHUNK]
            pos += len(chunk)
            try:
                out = inflater.decompress(chunk, limit - size + 1)
            except zlib.error as exc:
                raise BadRequest(f"invalid gzip body: {exc}") from exc
            size += len(out)
            if size > limit or inflater.unconsumed_tail:
                raise BodyTooLarge(limit)
            parts.append(out)
        if not inflater.eof:
            raise BadRequest("invalid gzip body: truncated")
        pos -= len(inflater.unused_data)  # the next member starts there
    return b"".join(parts)


def json_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON body: {exc}") from exc
