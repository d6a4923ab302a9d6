"""HTTP client of the Motes API, as the CLI uses it.

    with MotesClient("http://127.0.0.1:8086", token="...", org="main") as client:
        client.list_buckets()
        rejected = client.write(b"env,device=d1 t=21.5", bucket="telemetry", precision="ns")
        client.query_json([("bucket", "telemetry"), ("measurement", "env")])

Every failure is a :class:`MotesError` whose message is fit to show the user:
:class:`Unreachable` (no answer at the URL) or :class:`ApiError` (the server refused; it
carries ``status`` and the server's ``message``). Only writes are retried — on 429/503,
honouring Retry-After, and on network errors once the server has answered — because a
write batch is what a long upload must not lose; other calls fail fast so that a typo
in --url shows at once.

Identity endpoints go through one generic call, paths built with :func:`api_path`:

    client.call("GET", api_path("devices"), params=[("tag", "lab")])   # ?org= added
    client.call("POST", api_path("devices", "d1", "key"))              # {} on 204

A client made with a :class:`Session` (a ``motes login`` sign-in) sends its token as
``Bearer``; on a 401 it trades the refresh token for a new pair at ``/oauth/token``,
hands the pair to ``Session.save`` and sends the request once more.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from motes import __version__

DEFAULT_URL = "http://127.0.0.1:8086"
CLIENT_ID = "motes-cli"  # recorded by the server for sign-ins (RFC 6749 public client)
WRITE_PATH = "/api/v2/write"
RETRY_STATUSES = frozenset({429, 503})
MAX_WAIT_SECONDS = 60.0  # caps both Retry-After and the backoff: a CLI should not hang

Params = Sequence[tuple[str, str | int]]


class MotesError(Exception):
    """A failure to report as ``Error: <message>``, without a traceback."""


class Unreachable(MotesError):
    """No HTTP answer: connection refused, timeout, DNS, ..."""


class ApiError(MotesError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @classmethod
    def from_response(cls, response: httpx.Response, suffix: str = "") -> ApiError:
        """The server's message (``error_description`` from ``/oauth/*``), then each
        listed error on a line of its own."""
        body = _json_or_none(response)
        body = body if isinstance(body, dict) else {}
        message = body.get("message") or body.get("error_description") or body.get("error")
        code = body.get("code") or body.get("error")
        if not isinstance(message, str):
            text = response.text.strip()[:200]
            message = f"HTTP {response.status_code} {response.reason_phrase}" + (
                f": {text}" if text else ""
            )
        details = [_describe(e) for e in _line_errors(body)]
        text = "\n".join([message + suffix, *details])
        return cls(response.status_code, text, code if isinstance(code, str) else None)


def _describe(error: LineError) -> str:
    return error.message if error.line is None else f"line {error.line}: {error.message}"


@dataclass(frozen=True)
class LineError:
    """One line the server rejected: its 1-based number within the batch body, and why."""

    line: int | None
    message: str


@dataclass
class Session:
    """A ``motes login`` sign-in: its refresh token, and how to keep a rotated pair.

    ``save(access_token, refresh_token)`` is called after every refresh: refresh tokens
    rotate, and presenting a retired one ends the whole session on the server.
    """

    refresh_token: str
    save: Callable[[str, str], None]


@dataclass(frozen=True)
class WriteOutcome:
    """The answer to a write: rejected lines (sorted by line) and how many more went unlisted.

    The server lists at most 100 errors; ``unlisted`` counts the rest, which all come
    after the last listed line.
    """

    errors: list[LineError] = field(default_factory=list)
    unlisted: int = 0


class MotesClient:
    """The Motes HTTP API with the CLI's policy: base URL, token, org, write retries.

    ``transport`` and ``sleep`` are for tests (an ``httpx.MockTransport``, a recorder).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        org: str = "main",
        *,
        retries: int = 5,
        backoff: float = 0.5,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        session: Session | None = None,
    ) -> None:
        # "localhost:8086" is what people type; httpx would read "localhost" as the scheme.
        self.url = url if "://" in url else f"http://{url}"
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL as exc:
            raise MotesError(f"invalid URL {url!r}: {exc}") from exc
        self.org = org
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._answered = False  # has the server answered this client yet?
        self._session = session
        self._http = httpx.Client(
            base_url=self.url,
            headers={"User-Agent": f"motes-cli/{__version__}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )
        if token:
            self.authorize(token, "Bearer" if session else "Token")

    def authorize(self, token: str, scheme: str = "Bearer") -> None:
        """Send ``Authorization: <scheme> <token>`` from now on."""
        self._http.headers["Authorization"] = f"{scheme} {token}"

    def __enter__(self) -> MotesClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plain calls -----------------------------------------------------------------------

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        """``GET /health``: ``{"status": "pass", "version": "..."}``."""
        return _json_object(self._send("GET", "/health", timeout=timeout))

    def list_buckets(self) -> list[dict[str, Any]]:
        body = _json_object(self._send("GET", "/api/v1/buckets", params={"org": self.org}))
        buckets = body.get("buckets", [])
        if not isinstance(buckets, list):
            raise MotesError("unexpected answer from the server: 'buckets' is not a list")
        return [b for b in buckets if isinstance(b, dict)]

    def create_bucket(self, name: str, retention: str) -> dict[str, Any]:
        payload = {"name": name, "org": self.org, "retention": retention}
        return _json_object(self._send("POST", "/api/v1/buckets", json=payload))

    def delete_bucket(self, name: str) -> None:
        self._send("DELETE", f"/api/v1/buckets/{quote(name, safe='')}", params={"org": self.org})

    def query_json(self, params: Params) -> dict[str, Any]:
        return _json_object(self._send("GET", "/api/v1/query", params=params))

    def query_csv(self, params: Params) -> str:
        headers = {"Accept": "text/csv"}
        return self._send("GET", "/api/v1/query", params=params, headers=headers).text

    def call(
        self, method: str, path: str, *, params: Params = (), in_org: bool = True, **kwargs: Any
    ) -> dict[str, Any]:
        """A call answered with a JSON object, or ``{}`` for an empty answer (204).

        ``?org=`` names the client's org unless ``in_org`` is false (calls about the
        credentials themselves, such as listing one's orgs). ``kwargs`` go to httpx:
        ``json=``, ``content=``, ``headers=``.
        """
        query = [*params, ("org", self.org)] if in_org else list(params)
        response = self._send(method, path, params=query, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        return _json_object(response)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._request(self._http.build_request(method, path, **kwargs))
        if response.status_code == 401 and self._refresh():
            response = self._request(self._http.build_request(method, path, **kwargs))
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._answered = True
        return response

    # -- OAuth2 sign-in --------------------------------------------------------------------

    def grant(self, **form: str) -> dict[str, Any]:
        """``POST /oauth/token`` (form-encoded, no credentials): the token response.

        ``client.grant(grant_type="password", username="ana@example.com", password=...)``
        """
        return _json_object(self._oauth("/oauth/token", form))

    def revoke(self, token: str) -> None:
        """``POST /oauth/revoke`` (RFC 7009): ends the sign-in session of ``token``."""
        self._oauth("/oauth/revoke", {"token": token})

    def _oauth(self, path: str, form: dict[str, str]) -> httpx.Response:
        request = self._http.build_request("POST", path, data={**form, "client_id": CLIENT_ID})
        request.headers.pop("Authorization", None)  # a stale access token has no place here
        response = self._request(request)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _refresh(self) -> bool:
        """Trade the session's refresh token for a new pair; False without a session."""
        session = self._session
        if session is None:
            return False
        try:
            answer = self.grant(grant_type="refresh_token", refresh_token=session.refresh_token)
        except ApiError as exc:
            if exc.status in (400, 401):  # expired, revoked or retired: the session is over
                raise ApiError(401, f"sign-in expired: {exc}", exc.code) from exc
            raise
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise MotesError("unexpected answer from /oauth/token: no access_token")
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            session.refresh_token = rotated
        session.save(access, session.refresh_token)
        self.authorize(access, "Bearer")
        return True

    def _unreachable(self, exc: httpx.TransportError) -> Unreachable:
        if isinstance(exc, httpx.ConnectError):
            return Unreachable(f"cannot reach Motes at {self.url} (is `motes serve` running?)")
        if isinstance(exc, httpx.TimeoutException):
            return Unreachable(f"Motes at {self.url} did not answer in time")
        return Unreachable(f"connection to Motes at {self.url} failed: {exc}")

    # -- writes ----------------------------------------------------------------------------

    def write(
        self,
        body: bytes,
        *,
        bucket: str | None,
        precision: str,
        on_retry: Callable[[str], None] | None = None,
    ) -> WriteOutcome:
        """Send line protocol (gzip-compressed); the lines the server rejected, if any.

        A 400 that lists ``errors`` is a partial write: the other lines were stored, so
        it is a result, not an exception. Anything else that is not 2xx raises ApiError.
        """
        params: dict[str, str] = {"org": self.org, "precision": precision}
        if bucket:
            params["bucket"] = bucket
        # Level 1: four times the speed of the default for a ratio of ~8 instead of ~11 on line
        # protocol; compression must not be what limits an upload on a fast link.
        content = gzip.compress(body, compresslevel=1, mtime=0)
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
        attempt = 0
        refreshed = False
        while True:
            try:
                response = self._http.post(
                    WRITE_PATH, params=params, content=content, headers=headers
                )
            except httpx.TransportError as exc:
                # Refused by a server that never answered: most likely none is running, so
                # say so at once. Other errors, or any after an answer, are hiccups (or a
                # restart) worth waiting out; resending is safe, a point written twice
                # overwrites itself.
                refused = isinstance(exc, httpx.ConnectError) and not self._answered
                if attempt >= self.retries or refused:
                    raise self._unreachable(exc) from exc
                self._pause(attempt, None, str(self._unreachable(exc)), on_retry)
            else:
                self._answered = True
                if response.status_code == 401 and not refreshed and self._refresh():
                    refreshed = True  # a long upload outlives an access token
                    continue
                if response.status_code not in RETRY_STATUSES:
                    return _write_result(response)
                if attempt >= self.retries:
                    suffix = f" (gave up after {self.retries} retries)"
                    raise ApiError.from_response(response, suffix)
                reason = f"server busy (HTTP {response.status_code})"
                self._pause(attempt, retry_after(response), reason, on_retry)
            attempt += 1

    def _pause(
        self,
        attempt: int,
        hinted: float | None,
        reason: str,
        on_retry: Callable[[str], None] | None,
    ) -> None:
        delay = hinted if hinted is not None else self.backoff * 2**attempt
        delay = min(delay, MAX_WAIT_SECONDS)
        if on_retry is not None:
            on_retry(f"{reason}; retry {attempt + 1}/{self.retries} in {delay:.1f}s")
        self._sleep(delay)


def api_path(*parts: str) -> str:
    """``/api/v1/`` and the parts, each percent-encoded: ``api_path("devices", "d 1")``."""
    return "/api/v1/" + "/".join(quote(part, safe="") for part in parts)


def _write_result(response: httpx.Response) -> WriteOutcome:
    if response.is_success:
        return WriteOutcome()
    if response.status_code == 400:
        body = _json_or_none(response)
        errors = _line_errors(body)
        if errors:
            unlisted = body.get("errors_truncated", 0) if isinstance(body, dict) else 0
            return WriteOutcome(errors, unlisted if isinstance(unlisted, int) else 0)
    raise ApiError.from_response(response)


def _line_errors(body: object) -> list[LineError]:
    """The ``errors`` list of a partial-write answer; empty if there is none."""
    items = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return []
    errors: list[LineError] = []
    for item in items:
        if isinstance(item, dict):
            line = item.get("line")
            number = line if isinstance(line, int) and not isinstance(line, bool) else None
            errors.append(LineError(number, str(item.get("message", "rejected"))))
    return errors


def retry_after(response: httpx.Response) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _json_or_none(response: httpx.Response) -> object:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = _json_or_none(response)
    if not isinstance(body, dict):
        raise MotesError(
            f"unexpected answer from the server (HTTP {response.status_code}): "
            f"{response.text.strip()[:200]!r}"
        )
    return body
