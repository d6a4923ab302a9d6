"""``motes write``: stream a line-protocol or CSV file to the server in batches.

    job = WriteJob(path=Path("data.lp"), fmt="lp", bucket="telemetry")
    with job.path.open("rb") as stream:
        summary = run_write(client, job, stream, advance=bar.update, notify=print)

- The input is cut into batches of ``batch_size`` lines (see batches.py: CSV rows are
  converted to line protocol there), each sent gzip-compressed by MotesClient.write,
  which also retries busy answers and network errors.
- Lines the server rejects (numbered 1.. within the batch body) are mapped back to file
  lines and appended to the report: ``# line N: message`` then the original line, so
  the report can be fixed and sent again with ``motes write -f FILE.rejected``.
- After each acknowledged batch its end offset and line go to ``FILE.motes-progress``
  (temp file + rename, so a crash leaves the old or the new one, never half of one);
  ``--resume`` starts there. The progress file is removed when the file is done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from motes.cli.batches import Batch, Record, csv_batches, csv_records, lp_batches
from motes.cli.client import MotesClient, MotesError
from motes.cli.csvconv import CsvConverter, CsvOptions, HeaderError, parse_row
from motes.cli.lineproto import count_fields

Format = Literal["lp", "csv"]

PROGRESS_SUFFIX = ".motes-progress"
REPORT_SUFFIX = ".rejected"
STDIN_REPORT = Path("stdin.rejected")


def _ignore(_: object) -> None:
    pass


@dataclass(frozen=True)
class WriteJob:
    """What to write where. ``path`` None means stdin (not resumable)."""

    path: Path | None
    fmt: Format = "lp"
    bucket: str | None = None
    precision: str = "ns"
    batch_size: int = 5000
    resume: bool = False
    errors_path: Path | None = None
    csv: CsvOptions = field(default_factory=CsvOptions)

    @property
    def report_path(self) -> Path:
        if self.errors_path is not None:
            return self.errors_path
        if self.path is None:
            return STDIN_REPORT
        return self.path.with_name(self.path.name + REPORT_SUFFIX)

    @property
    def progress_path(self) -> Path | None:
        return None if self.path is None else self.path.with_name(self.path.name + PROGRESS_SUFFIX)


@dataclass
class Summary:
    """Lines and points written and lines rejected, in all runs of a resumed write;
    the rate is this run's."""

    written: int = 0
    points: int = 0
    rejected: int = 0
    next_line: int = 1
    resumed_at: int | None = None
    run_points: int = 0
    seconds: float = 0.0

    @property
    def points_per_second(self) -> float:
        return self.run_points / self.seconds if self.seconds > 0 else 0.0


class WriteStopped(MotesError):
    """The server refused a batch (or never answered); earlier batches are stored."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


def detect_format(path: Path | None, fmt: str | None) -> Format:
    """``--format`` if given, else by extension: ``.csv`` (also ``.csv.rejected``) is CSV."""
    if fmt is not None:
        return "csv" if fmt == "csv" else "lp"
    if path is None:
        return "lp"
    name = path.name.lower().removesuffix(REPORT_SUFFIX)
    return "csv" if name.endswith(".csv") else "lp"


# -- progress and report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where the last acknowledged batch ended (byte offset, number of its last line),
    and the counts so far, so that a resumed run can report on the whole file."""

    offset: int = 0
    line: int = 0
    written: int = 0
    points: int = 0
    rejected: int = 0

    @classmethod
    def load(cls, path: Path) -> Progress | None:
        try:
            data = json.loads(path.read_text())
            return cls(**{name: int(data.get(name, 0)) for name in _PROGRESS_FIELDS})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, AttributeError) as exc:
            raise MotesError(f"{path} is damaged ({exc}); delete it to start over") from exc

    def save(self, path: Path) -> None:
        """Replace ``path`` atomically: a crash leaves the previous progress or this one."""
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as fh:
            json.dump({name: getattr(self, name) for name in _PROGRESS_FIELDS}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


_PROGRESS_FIELDS = ("offset", "line", "written", "points", "rejected")


ReportEntry = tuple[int, str, bytes | None]


class RejectReport:
    """The errors report, created on the first rejected line (for CSV, header first)."""

    def __init__(self, path: Path, *, append: bool, header: bytes | None = None) -> None:
        self.path = path
        self.append = append
        self.header = header
        self._fh: IO[bytes] | None = None

    def add(self, entries: list[ReportEntry]) -> None:
        """Write ``(file line, message, original bytes)`` entries, in file order."""
        if not entries:
            return
        fh = self._open()
        for line, message, raw in sorted(entries, key=lambda entry: entry[0]):
            note = " ".join(message.split())  # one comment line, whatever the message holds
            fh.write(f"# line {line}: {note}\n".encode())
            if raw is not None:
                fh.write(raw + b"\n")
        fh.flush()

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            fresh = not self.append or not self.path.exists() or self.path.stat().st_size == 0
            self._fh = self.path.open("wb" if fresh else "ab")
            if fresh and self.header is not None:
                self._fh.write(self.header + b"\n")
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# -- the run ----------------------------------------------------------------------------------


def run_write(
    client: MotesClient,
    job: WriteJob,
    stream: IO[bytes],
    *,
    advance: Callable[[int], None] = _ignore,
    notify: Callable[[str], None] = _ignore,
) -> Summary:
    """Write all of ``stream`` (the file of ``job.path``, or stdin); raises WriteStopped.

    ``advance(n)`` is called with the bytes each batch consumed (for a progress bar),
    ``notify(text)`` with remarks such as retries.
    """
    started = time.monotonic()
    start = _starting_point(job, stream, notify)
    batches, header = _batches(job, stream, start)
    summary = Summary(
        written=start.written,
        points=start.points,
        rejected=start.rejected,
        next_line=start.line + 1,
        resumed_at=start.line + 1 if start.offset else None,
    )
    report = RejectReport(job.report_path, append=start.offset > 0, header=header)
    advance(start.offset)
    done = start.offset
    try:
        for batch in batches:
            _send(client, job, batch, report, summary, notify)
            if job.progress_path is not None:
                counts = (summary.written, summary.points, summary.rejected)
                Progress(batch.end, batch.last_line, *counts).save(job.progress_path)
            advance(batch.end - done)
            done = batch.end
    except MotesError as exc:
        raise WriteStopped(_stopped_message(exc, job, summary), summary) from exc
    finally:
        report.close()
        summary.seconds = time.monotonic() - started
    if job.progress_path is not None:
        job.progress_path.unlink(missing_ok=True)
    return summary


def _starting_point(job: WriteJob, stream: IO[bytes], notify: Callable[[str], None]) -> Progress:
    path = job.progress_path
    if path is None:
        if job.resume:
            raise MotesError("--resume needs a file: standard input cannot be resumed")
        return Progress()
    if not job.resume:
        if path.exists():
            notify(f"starting from the top: discarding {path.name} (--resume would continue it)")
            path.unlink()
        return Progress()
    saved = Progress.load(path)
    if saved is None:
        notify(f"nothing to resume ({path.name} not found): starting from the top")
        return Progress()
    _check_resumable(stream, saved, path)
    return saved


def _check_resumable(stream: IO[bytes], saved: Progress, path: Path) -> None:
    """The saved offset must still end a line of the file, or the file has changed."""
    size = stream.seek(0, os.SEEK_END)
    ends_line = saved.offset in (0, size)  # the end of the file ends a line too
    if 0 < saved.offset < size:
        stream.seek(saved.offset - 1)
        ends_line = stream.read(1) == b"\n"
    stream.seek(0)
    if not ends_line:
        raise MotesError(f"the file changed since {path.name} was saved; delete it to start over")


def _batches(
    job: WriteJob, stream: IO[bytes], start: Progress
) -> tuple[Iterator[Batch], bytes | None]:
    """The batches to send from ``start`` on, and the CSV header (None for line protocol)."""
    if job.fmt == "lp":
        if start.offset:
            stream.seek(start.offset)
        return lp_batches(stream, job.batch_size, offset=start.offset, line=start.line), None
    records = csv_records(stream)
    header = next(records, None)
    if header is None:
        return iter(()), None
    converter = _converter(header, job)
    if start.offset:  # the header comes from the top of the file, the rows from the offset
        stream.seek(start.offset)
        records = csv_records(stream, offset=start.offset, line=start.line)
    return csv_batches(records, converter, job.batch_size), header.raw


def _converter(header: Record, job: WriteJob) -> CsvConverter:
    try:
        return CsvConverter(parse_row(header.raw.decode()), job.csv)
    except (HeaderError, UnicodeDecodeError) as exc:
        raise MotesError(f"CSV header (line {header.line}): {exc}") from exc


def _send(
    client: MotesClient,
    job: WriteJob,
    batch: Batch,
    report: RejectReport,
    summary: Summary,
    notify: Callable[[str], None],
) -> None:
    """Send one batch and account for it: summary counts and report entries."""
    rejected, unmapped = _rejections(client, job, batch.lines, notify)
    entries: list[ReportEntry] = list(batch.refused)
    entries += [
        (batch.numbers[i], "; ".join(msgs), batch.originals[i]) for i, msgs in rejected.items()
    ]
    if unmapped:
        first = batch.numbers[0]
        span = f"(somewhere in lines {first}-{batch.last_line})"
        entries += [(first, f"{span} {message}", None) for message in unmapped]
    report.add(entries)
    accepted = [line for i, line in enumerate(batch.lines) if i not in rejected]
    points = sum(count_fields(line) for line in accepted)
    summary.written += len(accepted)
    summary.points += points
    summary.run_points += points
    summary.rejected += len(entries)
    summary.next_line = batch.last_line + 1


def _rejections(
    client: MotesClient, job: WriteJob, lines: list[bytes], notify: Callable[[str], None]
) -> tuple[dict[int, list[str]], list[str]]:
    """Write ``lines``; the server's messages per rejected line index, and those of no line.

    The server lists at most 100 errors per request. When it held some back, the lines
    after the last one listed are sent again — a point written twice overwrites itself —
    until every rejected line is named.
    """
    rejected: dict[int, list[str]] = {}
    unmapped: list[str] = []
    start = 0
    while start < len(lines):
        body = b"\n".join(lines[start:])
        outcome = client.write(body, bucket=job.bucket, precision=job.precision, on_retry=notify)
        last = 0
        for error in outcome.errors:
            if error.line is not None and 0 < error.line <= len(lines) - start:
                rejected.setdefault(start + error.line - 1, []).append(error.message)
                last = max(last, error.line)
            else:
                unmapped.append(error.message)
        if not outcome.unlisted:
            break
        if not last:  # nothing to resume after: count what cannot be named
            unmapped.append(
                f"{outcome.unlisted} more lines rejected (the server did not say which)"
            )
            break
        start += last
    return rejected, unmapped


def _stopped_message(exc: MotesError, job: WriteJob, summary: Summary) -> str:
    message = str(exc)
    if job.path is not None and summary.next_line > 1:
        message += (
            f"\n{summary.written} lines were written before it stopped; run the same command"
            f" with --resume to continue from line {summary.next_line}"
        )
    return message
