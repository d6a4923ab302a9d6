"""The ``motes`` CLI against a stand-in server (``FakeMotes``: http.server in a thread).

The stand-in speaks just enough of the HTTP API to check what the CLI sends and how it
reacts: batches, gzip, partial writes, busy answers, errors. End-to-end tests against the
real server live elsewhere.
"""

from __future__ import annotations

import functools
import gzip
import json
import shlex
import socket
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner, Result

from motes.cli.client import MotesClient, WriteOutcome
from motes.cli.csvconv import CsvConverter, CsvOptions, HeaderError, RowError
from motes.cli.duration import format_duration, parse_duration
from motes.cli.lineproto import count_fields, rfc3339_ns
from motes.cli.main import main
from motes.settings import Settings

TOKEN = "cli-test-token"

# -- the stand-in server ----------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> bytes:
        """The body, gunzipped when sent so."""
        if self.headers.get("content-encoding") == "gzip":
            return gzip.decompress(self.raw)
        return self.raw

    @property
    def lines(self) -> list[bytes]:
        return self.body.split(b"\n")


@dataclass
class Reply:
    status: int = 204  # 0: close the connection without answering
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def reject_bad_lines(request: Request, listed: int = 100) -> Reply:
    """Partial write: lines containing "bad" are rejected, like the server's WriteRejected."""
    errors = [
        {"line": n, "message": f"invalid field value in {line.decode()!r}"}
        for n, line in enumerate(request.lines, start=1)
        if b"bad" in line
    ]
    if not errors:
        return Reply(204)
    body: dict[str, Any] = {
        "code": "invalid",
        "message": "partial write",
        "errors": errors[:listed],
    }
    if len(errors) > listed:
        body["errors_truncated"] = len(errors) - listed
    return Reply(400, body)


class FakeMotes:
    """Records every request; answers from ``script`` first, then with ``respond``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: list[Reply] = []
        self.respond: Callable[[Request], Reply] = reject_bad_lines
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FakeMotes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def handle(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self.script:
                return self.script.pop(0)
        return self.respond(request)

    @property
    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/api/v2/write"]

    def written_lines(self) -> list[bytes]:
        return [line for r in self.writes for line in r.lines]


def _handler(fake: FakeMotes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                raw=self.rfile.read(length),
            )
            reply = fake.handle(request)
            if reply.status == 0:
                self.close_connection = True
                return
            payload = b""
            if isinstance(reply.body, bytes | str):
                payload = reply.body if isinstance(reply.body, bytes) else reply.body.encode()
            elif reply.body is not None:
                payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.body is not None and "Content-Type" not in reply.headers:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MOTES_URL", "MOTES_TOKEN", "MOTES_ORG", "MOTES_BUCKET", "MOTES_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MOTES_PROFILE", raising=False)
    # a developer's own ~/.config/motes/configs.toml must not steer these tests
    monkeypatch.setenv("MOTES_CONFIG_PATH", str(tmp_path / "no-configs.toml"))


@pytest.fixture
def fake() -> Iterator[FakeMotes]:
    with FakeMotes() as server:
        yield server


@pytest.fixture
def waits() -> list[float]:
    """Sleeps the client asked for (recorded instead of slept)."""
    return []


def run(
    fake: FakeMotes | None,
    args: list[str],
    *,
    waits: list[float] | None = None,
    factory: Callable[..., MotesClient] | None = None,
    input: bytes | None = None,
) -> Result:
    """``motes ARGS`` with the URL and token of the stand-in, without real sleeping."""
    recorder = waits if waits is not None else []
    make = factory or functools.partial(MotesClient, retries=3, sleep=recorder.append)
    url = fake.url if fake is not None else "http://127.0.0.1:9"
    env = {"MOTES_URL": url, "MOTES_TOKEN": TOKEN}
    return CliRunner().invoke(main, args, obj=make, env=env, input=input)


def argv(command: str) -> list[str]:
    """Arguments as a shell would split them: ``argv(f"write -f {path} --bucket b")``."""
    return shlex.split(command)


def write_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def lp_lines(count: int, start: int = 0) -> list[str]:
    return [
        f"env,device=d{i % 3} temperature={20 + i / 10},humidity=40 {i}"
        for i in range(start, start + count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- write: batching, gzip, summary -----------------------------------------------------------


def test_write_sends_gzip_batches_with_query_and_auth(fake: FakeMotes, tmp_path: Path) -> None:
    data = write_file(tmp_path / "data.lp", ["# header comment", *lp_lines(5), "", *lp_lines(7, 5)])

    result = run(
        fake,
        argv(f"write -f {data} --bucket plants --precision s --batch-size 5 --org acme"),
    )

    assert result.exit_code == 0, result.output
    assert [len(r.lines) for r in fake.writes] == [5, 5, 2]
    for request in fake.writes:
        assert request.method == "POST"
        assert request.headers["content-encoding"] == "gzip"
        assert request.headers["content-type"].startswith("text/plain")
        assert request.headers["authorization"] == f"Token {TOKEN}"
        assert request.query == {"org": ["acme"], "bucket": ["plants"], "precision": ["s"]}
        assert gzip.decompress(request.raw) == request.body  # really compressed on the wire
        assert len(request.raw) < len(request.body) or len(request.lines) < 3
    assert fake.written_lines() == [line.encode() for line in lp_lines(12)]
    assert "Wrote 12 lines (24 points)" in result.stdout
    assert not (tmp_path / "data.lp.motes-progress").exists()
    assert not (tmp_path / "data.lp.rejected").exists()


def test_write_reads_stdin(fake: FakeMotes, tmp_path: Path) -> None:
    body = "".join(line + "\r\n" for line in lp_lines(3)).encode()  # CRLF is fine too

    result = run(fake, ["write", "-f", "-", "--bucket", "b"], input=body)

    assert result.exit_code == 0, result.output
    assert fake.written_lines() == [line.encode() for line in lp_lines(3)]
    assert run(fake, ["write", "-f", "-", "--bucket", "b", "--resume"], input=body).exit_code == 1


def test_write_needs_a_bucket(fake: FakeMotes, tmp_path: Path) -> None:
    data = write_file(tmp_path / "data.lp", lp_lines(1))
    result = run(fake, ["write", "-f", str(data)])
    assert result.exit_code == 2
    assert "--bucket" in result.output


# -- write: rejected lines --------------------------------------------------------------------


def test_rejected_lines_go_to_the_report_under_their_file_line_numbers(
    fake: FakeMotes, tmp_path: Path
) -> None:
    lines = [
        "# comment",  # 1
        "env t=1 1",  # 2  batch 1, body line 1
        "",  # 3
        "env t=bad 2",  # 4  batch 1, body line 2
        "env t=3 3",  # 5  batch 1, body line 3
        "# another comment",  # 6
        "env t=4 4",  # 7  batch 2, body line 1
        "env t=bad 5",  # 8  batch 2, body line 2
        "env t=6 6",  # 9  batch 2, body line 3
    ]
    data = write_file(tmp_path / "data.lp", lines)

    result = run(fake, ["write", "-f", str(data), "--bucket", "b", "--batch-size", "3"])

    assert result.exit_code == 1  # not everything was written
    report = tmp_path / "data.lp.rejected"
    assert report.read_text() == (
        "# line 4: invalid field value in 'env t=bad 2'\n"
        "env t=bad 2\n"
        "# line 8: invalid field value in 'env t=bad 5'\n"
        "env t=bad 5\n"
    )
    assert "Wrote 4 lines (4 points)" in result.stdout
    assert f"Rejected 2 lines, listed in {report}" in result.stderr

    # The report is itself an input: fix the lines in place and write it.
    report.write_text(report.read_text().replace("bad", "7"))
    fake.requests.clear()
    again = run(fake, ["write", "-f", str(report), "--bucket", "b"])
    assert again.exit_code == 0, again.output
    assert fake.written_lines() == [b"env t=7 2", b"env t=7 5"]


def test_a_truncated_error_list_is_completed_by_resending_the_tail(
    fake: FakeMotes, tmp_path: Path
) -> None:
    fake.respond = functools.partial(reject_bad_lines, listed=2)
    lines = [f"env t={'bad' if i % 2 else i} {i}" for i in range(10)]  # 5 bad lines
    data = write_file(tmp_path / "data.lp", lines)

    result = run(fake, ["write", "-f", str(data), "--bucket", "b"])

    assert result.exit_code == 1
    report = (tmp_path / "data.lp.rejected").read_text().splitlines()
    assert [line for line in report if line.startswith("# line")] == [
        f"# line {n}: invalid field value in 'env t=bad {n - 1}'" for n in (2, 4, 6, 8, 10)
    ]
    # First request: all 10 lines; then what follows the last error listed each time.
    assert [len(r.lines) for r in fake.writes] == [10, 6, 2]
    assert "Wrote 5 lines" in result.stdout


# -- write: retries ---------------------------------------------------------------------------


def test_busy_server_is_retried_after_retry_after(
    fake: FakeMotes, tmp_path: Path, waits: list[float]
) -> None:
    fake.script = [
        Reply(503, {"code": "unavailable", "message": "queue full"}, {"Retry-After": "7"}),
        Reply(429, {"code": "too many", "message": "slow down"}),
    ]
    data = write_file(tmp_path / "data.lp", lp_lines(4))

    result = run(fake, ["write", "-f", str(data), "--bucket", "b"], waits=waits)

    assert result.exit_code == 0, result.output
    assert waits == [7.0, 1.0]  # Retry-After honoured; otherwise backoff (0.5 s * 2)
    assert len({r.raw for r in fake.writes}) == 1 and len(fake.writes) == 3  # same batch
    assert "server busy (HTTP 503)" in result.stderr


def test_network_errors_mid_write_are_retried_with_backoff(
    fake: FakeMotes, tmp_path: Path, waits: list[float]
) -> None:
    fake.script = [Reply(204), Reply(0), Reply(0), Reply(204), *[Reply(0)] * 4]
    data = write_file(tmp_path / "data.lp", lp_lines(6))

    result = run(
        fake, ["write", "-f", str(data), "--bucket", "b", "--batch-size", "2"], waits=waits
    )

    assert result.exit_code == 1
    assert waits == [0.5, 1.0, 0.5, 1.0, 2.0]  # batch 2: twice; batch 3: gave up after 3
    assert [len(r.lines) for r in fake.writes] == [2, 2, 2, 2, 2, 2, 2, 2]
    assert "continue from line 5" in result.stderr


@pytest.mark.parametrize("status", [401, 403, 404, 413])
def test_client_errors_stop_the_write_with_the_server_message(
    fake: FakeMotes, tmp_path: Path, status: int
) -> None:
    fake.script = [Reply(204), Reply(status, {"code": "nope", "message": f"refused ({status})"})]
    data = write_file(tmp_path / "data.lp", lp_lines(6))

    result = run(fake, ["write", "-f", str(data), "--bucket", "b", "--batch-size", "2"])

    assert result.exit_code == 1
    assert len(fake.writes) == 2  # no retry, no further batch
    assert f"Error: refused ({status})" in result.stderr
    assert "--resume to continue from line 3" in result.stderr
    assert "Traceback" not in result.output
    if status == 413:
        assert "lower --batch-size" in result.stderr


# -- write: resume ----------------------------------------------------------------------------


def test_resume_after_the_server_stayed_busy(
    fake: FakeMotes, tmp_path: Path, waits: list[float]
) -> None:
    data = write_file(tmp_path / "data.lp", lp_lines(10))
    busy = Reply(503, {"code": "unavailable", "message": "write queue full"}, {"Retry-After": "1"})
    fake.script = [Reply(204), Reply(204), *[busy] * 4]  # 2 batches, then busy beyond retries

    first = run(fake, ["write", "-f", str(data), "--bucket", "b", "--batch-size", "3"], waits=waits)

    assert first.exit_code == 1
    assert "write queue full (gave up after 3 retries)" in first.stderr
    assert "--resume to continue from line 7" in first.stderr
    progress = json.loads((tmp_path / "data.lp.motes-progress").read_text())
    assert progress["line"] == 6
    assert progress["offset"] == len("".join(line + "\n" for line in lp_lines(6)).encode())

    fake.requests.clear()
    second = run(fake, ["write", "-f", str(data), "--bucket", "b", "--batch-size", "3", "--resume"])

    assert second.exit_code == 0, second.output
    assert fake.written_lines() == [line.encode() for line in lp_lines(4, 6)]
    assert "Wrote 10 lines (20 points) in all; this run started at line 7" in second.stdout
    assert not (tmp_path / "data.lp.motes-progress").exists()


class ProcessDied(BaseException):
    """Nothing in the CLI catches this (CliRunner neither): like a kill, mid-write."""


class DyingClient(MotesClient):
    """A client whose process "dies" when it is about to send batch number ``die_at``."""

    def __init__(self, *args: Any, die_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.die_at = die_at
        self.calls = 0

    def write(self, body: bytes, **kwargs: Any) -> WriteOutcome:
        self.calls += 1
        if self.calls == self.die_at:
            raise ProcessDied
        return super().write(body, **kwargs)


def test_resume_after_a_crash_sends_only_what_was_not_acknowledged(
    fake: FakeMotes, tmp_path: Path
) -> None:
    lines = lp_lines(5)
    lines[1] = "env t=bad 1"
    data = write_file(tmp_path / "data.lp", [*lines, "# trailing comment", *lp_lines(6, 5)])
    args = ["write", "-f", str(data), "--bucket", "b", "--batch-size", "4"]

    with pytest.raises(ProcessDied):
        run(fake, args, factory=functools.partial(DyingClient, die_at=2))

    assert len(fake.writes) == 1  # batch 1 acknowledged (with one rejected line), then death
    progress = json.loads((tmp_path / "data.lp.motes-progress").read_text())
    assert progress["line"] == 4

    resumed = run(fake, [*args, "--resume"])

    assert resumed.exit_code == 1  # line 2 was rejected, in the first run: totals cover both
    sent = fake.written_lines()
    assert sorted(sent) == sorted(line.encode() for line in lines + lp_lines(6, 5))
    assert len(sent) == len(set(sent))  # every line exactly once
    assert "Wrote 10 lines (20 points) in all; this run started at line 5" in resumed.stdout
    assert "Rejected 1 lines" in resumed.stderr
    report = (tmp_path / "data.lp.rejected").read_text()
    assert report == "# line 2: invalid field value in 'env t=bad 1'\nenv t=bad 1\n"


def test_resume_refuses_a_file_that_changed(fake: FakeMotes, tmp_path: Path) -> None:
    data = write_file(tmp_path / "data.lp", lp_lines(4))
    (tmp_path / "data.lp.motes-progress").write_text(json.dumps({"offset": 7, "line": 1}))

    result = run(fake, ["write", "-f", str(data), "--bucket", "b", "--resume"])

    assert result.exit_code == 1
    assert "changed since data.lp.motes-progress was saved" in result.stderr
    assert fake.writes == []


def test_resume_at_the_end_of_a_file_without_a_final_newline(
    fake: FakeMotes, tmp_path: Path
) -> None:
    data = tmp_path / "data.lp"
    data.write_bytes(b"env t=1 1\nenv t=2 2")  # acknowledged in full, then the process died
    progress = {"offset": data.stat().st_size, "line": 2, "written": 2, "points": 2}
    (tmp_path / "data.lp.motes-progress").write_text(json.dumps(progress))

    result = run(fake, ["write", "-f", str(data), "--bucket", "b", "--resume"])

    assert result.exit_code == 0, result.output
    assert fake.writes == []
    assert "Wrote 2 lines (2 points) in all" in result.stdout
    assert not (tmp_path / "data.lp.motes-progress").exists()


def test_without_resume_an_old_progress_file_is_discarded(fake: FakeMotes, tmp_path: Path) -> None:
    data = write_file(tmp_path / "data.lp", lp_lines(4))
    (tmp_path / "data.lp.motes-progress").write_text(json.dumps({"offset": 0, "line": 0}))

    result = run(fake, ["write", "-f", str(data), "--bucket", "b"])

    assert result.exit_code == 0
    assert len(fake.written_lines()) == 4
    assert "discarding data.lp.motes-progress" in result.stderr


# -- write: CSV -------------------------------------------------------------------------------

CSV_ROWS = [
    "time,measurement,site,device,temp,count,ok,note",
    '2026-01-01T00:00:00Z,env,"north, east",d1,21.5,3,true,"said ""hi"", then \\ left"',
    "2026-01-01T01:00:00.5+01:00,env,,d 2,-1e3,,FALSE,",
    "1767225600,room temp,x=y,d3,7,12,,plain",
    "not-a-time,env,s,d4,1,1,true,x",
]


def test_csv_rows_become_escaped_line_protocol(fake: FakeMotes, tmp_path: Path) -> None:
    data = write_file(tmp_path / "data.csv", CSV_ROWS)

    result = run(
        fake,
        argv(
            f"write -f {data} --bucket b --precision s"
            " --tag-column site --tag-column device --integer-column count"
        ),
    )

    assert result.exit_code == 1  # the last row has a bad time
    assert fake.written_lines() == [
        b"env,device=d1,site=north\\,\\ east temp=21.5,count=3i,ok=true,"
        b'note="said \\"hi\\", then \\\\ left" 1767225600',
        b"env,device=d\\ 2 temp=-1000.0,ok=false 1767225600",
        b'room\\ temp,device=d3,site=x\\=y temp=7.0,count=12i,note="plain" 1767225600',
    ]
    # The report of a CSV file is CSV: header, then each bad row after its comment.
    report = tmp_path / "data.csv.rejected"
    assert report.read_text().splitlines() == [
        CSV_ROWS[0],
        "# line 5: time 'not-a-time' is neither RFC 3339 nor an integer in the precision",
        CSV_ROWS[4],
    ]
    # ... and *.csv.rejected is read as CSV.
    report.write_text(report.read_text().replace("not-a-time", "1767225601"))
    fake.requests.clear()
    again = run(
        fake,
        argv(f"write -f {report} --bucket b --precision s --tag-column site --tag-column device"),
    )
    assert again.exit_code == 0, again.output
    assert fake.written_lines() == [
        b'env,device=d4,site=s temp=1.0,count=1.0,ok=true,note="x" 1767225601'
    ]


def test_csv_resume_keeps_the_header(fake: FakeMotes, tmp_path: Path) -> None:
    rows = ["time,v"] + [f"{i},{i}" for i in range(6)]
    data = write_file(tmp_path / "in.csv", rows)
    args = ["write", "-f", str(data), "--bucket", "b", "--measurement", "m", "--batch-size", "2"]

    with pytest.raises(ProcessDied):
        run(fake, args, factory=functools.partial(DyingClient, die_at=3))
    fake.requests.clear()
    resumed = run(fake, [*args, "--resume"])

    assert resumed.exit_code == 0, resumed.output
    assert fake.written_lines() == [b"m v=4.0 4", b"m v=5.0 5"]


@pytest.mark.parametrize(
    ("header", "options", "message"),
    [
        (["time", "v"], CsvOptions(), "pass --measurement"),
        (["time", "v", "v"], CsvOptions(measurement="m"), "appears twice"),
        (["v"], CsvOptions(measurement="m", tag_columns=("site",)), "--tag-column site"),
    ],
)
def test_csv_header_problems(header: list[str], options: CsvOptions, message: str) -> None:
    with pytest.raises(HeaderError, match=message):
        CsvConverter(header, options)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["m", "", ""], "no field values"),
        (["m", "1.5", ""], "not an integer"),
        (["m", "1", "line\nbreak"], "line breaks"),
        (["#m", "1", ""], "may not start with '#'"),
        (["m", "1"], "expected 3 columns"),
        (["m", "1", "1e999"], "out of the float range"),
    ],
)
def test_csv_rows_that_cannot_be_converted(row: list[str], message: str) -> None:
    converter = CsvConverter(["measurement", "n", "x"], CsvOptions(integer_columns=("n",)))
    with pytest.raises(RowError, match=message):
        converter.convert(row)


def test_csv_multiline_quoted_cells_keep_line_numbers(fake: FakeMotes, tmp_path: Path) -> None:
    data = tmp_path / "multi.csv"
    data.write_bytes(b'\xef\xbb\xbfmeasurement,note\r\nm,"two\r\nlines"\r\nm,ok\r\n')

    result = run(fake, ["write", "-f", str(data), "--bucket", "b"])

    assert fake.written_lines() == [b'm note="ok"']
    assert "# line 2: line breaks are not allowed" in (tmp_path / "multi.csv.rejected").read_text()
    assert result.exit_code == 1


def test_rfc3339_keeps_nanoseconds_and_offsets() -> None:
    assert rfc3339_ns("1970-01-01T00:00:01.123456789Z") == 1_123_456_789
    assert rfc3339_ns("1970-01-01T01:00:00+01:00") == 0
    assert rfc3339_ns("1969-12-31T23:59:59.5Z") == -500_000_000
    with pytest.raises(ValueError, match="RFC 3339"):
        rfc3339_ns("2026-01-01")


def test_count_fields_ignores_commas_in_strings_and_escapes() -> None:
    assert count_fields(b'm,a=1\\ x b=1,s="x,y z",c=2i 10') == 3
    assert count_fields(b"my\\ m v=1") == 1


# -- buckets ----------------------------------------------------------------------------------

BUCKETS = {
    "buckets": [
        {
            "id": "0a1b",
            "name": "telemetry",
            "org": "main",
            "retentionSeconds": 0,
            "retention": "infinite",
        },
        {"id": "9f8e7d", "name": "plants", "org": "main", "retention": "720h"},
    ]
}


def test_buckets_list_prints_a_table(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(200, BUCKETS)

    result = run(fake, ["buckets", "list", "--org", "main"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ID      Name       Retention  Org",
        "0a1b    telemetry  infinite   main",
        "9f8e7d  plants     30d        main",
    ]
    assert fake.requests[0].query == {"org": ["main"]}


def test_buckets_list_json(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(200, BUCKETS)
    result = run(fake, ["buckets", "list", "--json"])
    assert json.loads(result.stdout) == BUCKETS["buckets"]


def test_buckets_create_and_delete(fake: FakeMotes) -> None:
    created = {"id": "1", "name": "plants", "org": "main", "retentionSeconds": 2_592_000}
    fake.script = [Reply(201, created), Reply(204)]

    made = run(fake, ["buckets", "create", "plants", "--retention", "30d"])
    gone = run(fake, ["buckets", "delete", "plants"])

    assert made.exit_code == 0 and gone.exit_code == 0, made.output + gone.output
    post, delete = fake.requests
    assert json.loads(post.body) == {"name": "plants", "org": "main", "retention": "30d"}
    assert (delete.method, delete.path, delete.query) == (
        "DELETE",
        "/api/v1/buckets/plants",
        {"org": ["main"]},
    )
    assert "plants  30d" in made.stdout
    assert "Bucket plants deleted." in gone.stdout


def test_buckets_create_refuses_a_bad_retention(fake: FakeMotes) -> None:
    result = run(fake, ["buckets", "create", "x", "--retention", "3 months"])
    assert result.exit_code == 2
    assert "invalid duration" in result.output
    assert fake.requests == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("30d", 2_592_000),
        ("720h", 2_592_000),
        ("1h30m", 5_400),
        ("2w", 1_209_600),
        ("90s", 90),
        (" 1d12h ", 129_600),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "-1d", "1mo", "1y", "1.5h", "d", "1h 30m", "10ms"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(0) == "infinite"
    assert format_duration(parse_duration("720h")) == "30d"
    assert format_duration(parse_duration("36h90s")) == "1d12h1m30s"


# -- query ------------------------------------------------------------------------------------

TABLES = {
    "tables": [
        {
            "measurement": "env",
            "tags": {"device": "d1", "site": "n"},
            "columns": ["time", "temperature", "ok"],
            "values": [["2026-01-01T00:00:00Z", 21.5, True], ["2026-01-01T00:10:00Z", None, False]],
        },
        {
            "measurement": "env",
            "tags": {"device": "d2"},
            "columns": ["time", "temperature"],
            "values": [["2026-01-01T00:00:00Z", 19.0]],
        },
    ]
}


def test_query_sends_parameters_and_prints_tables(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(200, TABLES)

    result = run(
        fake,
        argv(
            "query --bucket telemetry -m env --field temperature --field ok"
            " --tag device=d1 --tag site=n --start -2h --every 10m --fn mean"
            " --group-by device --fill null --limit 5"
        ),
    )

    assert result.exit_code == 0, result.output
    assert fake.requests[0].path == "/api/v1/query"
    assert fake.requests[0].query == {
        "bucket": ["telemetry"],
        "measurement": ["env"],
        "start": ["-2h"],
        "every": ["10m"],
        "fn": ["mean"],
        "group_by": ["device"],
        "fill": ["null"],
        "limit": ["5"],
        "field": ["temperature", "ok"],
        "tag": ["device:d1", "site:n"],
    }
    assert result.stdout == (
        "Table: measurement=env device=d1 site=n\n"
        "time                  temperature  ok\n"
        "2026-01-01T00:00:00Z  21.5         true\n"
        "2026-01-01T00:10:00Z               false\n"
        "\n"
        "Table: measurement=env device=d2\n"
        "time                  temperature\n"
        "2026-01-01T00:00:00Z  19.0\n"
    )


def test_query_csv_and_json(fake: FakeMotes) -> None:
    csv_body = "table,measurement,time,t\n0,env,2026-01-01T00:00:00Z,1\n"

    def respond(request: Request) -> Reply:
        if "text/csv" in request.headers.get("accept", ""):
            return Reply(200, csv_body, {"Content-Type": "text/csv"})
        return Reply(200, TABLES)

    fake.respond = respond

    as_csv = run(fake, ["query", "--bucket", "b", "-m", "env", "--csv"])
    as_json = run(fake, ["query", "--bucket", "b", "-m", "env", "--json"])
    both = run(fake, ["query", "--bucket", "b", "-m", "env", "--json", "--csv"])

    assert as_csv.stdout == csv_body
    assert json.loads(as_json.stdout) == TABLES
    assert both.exit_code == 2


def test_query_bad_tag_filter(fake: FakeMotes) -> None:
    result = run(fake, ["query", "--bucket", "b", "-m", "env", "--tag", "device"])
    assert result.exit_code == 2
    assert "expected KEY=VALUE" in result.output


def test_query_no_data(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(200, {"tables": []})
    assert run(fake, ["query", "--bucket", "b", "-m", "env"]).stdout == "No data.\n"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["buckets", "list"], ["query", "--bucket", "b", "-m", "env"], ["buckets", "delete", "x"]],
)
def test_connection_refused_is_one_clear_line(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = CliRunner().invoke(main, [*args, "--url", url])

    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot reach Motes at {url} (is `motes serve` running?)\n"


def test_write_to_no_server_fails_at_once(tmp_path: Path, waits: list[float]) -> None:
    data = write_file(tmp_path / "data.lp", lp_lines(2))
    url = f"http://127.0.0.1:{free_port()}"

    result = run(None, ["write", "-f", str(data), "--bucket", "b", "--url", url], waits=waits)

    assert result.exit_code == 1
    assert waits == []  # nothing ever answered: no point waiting for it
    assert result.stderr.endswith(
        f"Error: cannot reach Motes at {url} (is `motes serve` running?)\n"
    )
    assert "Traceback" not in result.output


def test_http_errors_print_the_server_message(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(401, {"code": "unauthorized", "message": "unknown token"})

    result = CliRunner().invoke(main, ["buckets", "list", "--url", fake.url])

    assert result.exit_code == 1
    assert result.stderr == "Error: unknown token\npass --token or set MOTES_TOKEN\n"


def test_http_error_without_json_body(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(502, "bad gateway", {"Content-Type": "text/plain"})
    result = run(fake, ["buckets", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: HTTP 502 Bad Gateway: bad gateway")


# -- version and serve ------------------------------------------------------------------------


def test_version_with_and_without_a_server(fake: FakeMotes) -> None:
    fake.respond = lambda request: Reply(200, {"status": "pass", "version": "0.1.7"})

    up = run(fake, ["version"])
    down = CliRunner().invoke(main, ["version", "--url", f"http://127.0.0.1:{free_port()}"])

    assert up.stdout == f"motes 0.1.0\nserver 0.1.7 at {fake.url}\n"
    assert fake.requests[0].path == "/health"
    assert down.exit_code == 0
    assert down.stdout == "motes 0.1.0\n"


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Replaces motes.server with a stub that records the settings it is started with."""
    started: list[Settings] = []

    def serve(settings: Settings) -> int:
        started.append(settings)
        return 3

    module = types.ModuleType("motes.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "motes.server", module)
    return started


def test_serve_passes_only_given_options(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOTES_HTTP_PORT", "9999")

    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--mqtt-port", "1884"])

    assert result.exit_code == 3  # serve()'s exit code
    (settings,) = served
    assert settings.data_dir == tmp_path
    assert settings.mqtt_port == 1884
    assert settings.http_port == 9999  # from the environment: no option overrode it
    assert settings.http_host == "127.0.0.1"


def test_serve_with_config_file(served: list[Settings], tmp_path: Path) -> None:
    config = tmp_path / "motes.toml"
    config.write_text('http_port = 8123\nhttp_host = "0.0.0.0"\n')

    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--host", "::1"])

    assert result.exit_code == 3
    assert (served[0].http_port, served[0].http_host) == (8123, "::1")


def test_serve_reports_bad_settings(served: list[Settings], tmp_path: Path) -> None:
    config = tmp_path / "motes.toml"
    config.write_text("http_port = 'eighty'\n")

    result = CliRunner().invoke(main, ["serve", "--config", str(config)])

    assert result.exit_code == 1
    assert "invalid settings" in result.stderr
    assert served == []
