"""Input of ``motes write``, cut into batches of line-protocol lines.

    for batch in lp_batches(stream, batch_size=5000):
        send(b"\\n".join(batch.lines))           # batch.numbers[i]: file line of lines[i]
        save_progress(batch.end, batch.last_line)

    header, rows = csv_records(stream)             # CSV: the header record, then the rows
    for batch in csv_batches(rows, converter, batch_size=5000): ...

Input is read as bytes. Blank lines and ``#`` comment lines are skipped, a UTF-8 BOM at
the start is ignored, ``\\r\\n`` is accepted. Every batch knows the byte offset just after
its last line (``end``) and that line's number (``last_line``): where to resume. A
batch is cut at ``batch_size`` lines or ``MAX_BATCH_BYTES``, whichever comes first.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from motes.cli.csvconv import CsvConverter, parse_row

# Well under the server's default 32 MiB body limit, whatever --batch-size says.
MAX_BATCH_BYTES = 8 * 1024 * 1024
_BLANK_OR_COMMENT_START = frozenset(b" \t#")


@dataclass
class Batch:
    """Consecutive input: lines to send, and rows refused before sending (CSV).

    ``originals[i]`` is what the report shows if ``lines[i]`` is rejected: the line itself
    for line protocol, the CSV row for CSV.
    """

    lines: list[bytes] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    originals: list[bytes] = field(default_factory=list)
    refused: list[tuple[int, str, bytes]] = field(default_factory=list)
    end: int = 0
    last_line: int = 0
    size: int = 0

    def __len__(self) -> int:
        return len(self.lines) + len(self.refused)

    @property
    def full(self) -> bool:
        return self.size >= MAX_BATCH_BYTES


def lp_batches(
    stream: IO[bytes], batch_size: int, *, offset: int = 0, line: int = 0
) -> Iterator[Batch]:
    """Batches of line protocol from the stream's position: byte ``offset``, after ``line``
    lines. Kept lean — it runs once per input line."""
    offset, lines = _skip_bom(stream, offset)
    batch = _lp_batch()
    for raw in lines:
        offset += len(raw)
        line += 1
        text = raw.rstrip(b"\r\n")
        if not text or (text[0] in _BLANK_OR_COMMENT_START and _skipped(text)):
            continue
        batch.lines.append(text)
        batch.numbers.append(line)
        batch.size += len(text) + 1
        if len(batch.lines) >= batch_size or batch.full:
            batch.end, batch.last_line = offset, line
            yield batch
            batch = _lp_batch()
    if batch.lines:
        batch.end, batch.last_line = offset, line
        yield batch


def _lp_batch() -> Batch:
    batch = Batch()
    batch.originals = batch.lines  # a rejected line is reported as it was sent
    return batch


def _skip_bom(stream: IO[bytes], offset: int) -> tuple[int, Iterator[bytes]]:
    """The lines of ``stream`` without a leading BOM; offsets still count its bytes."""
    if offset:
        return offset, iter(stream)
    first = stream.readline()
    text = first.removeprefix(codecs.BOM_UTF8)  # spreadsheets and editors like to add one
    return len(first) - len(text), itertools.chain([text] if text else [], stream)


def _skipped(text: bytes) -> bool:
    text = text.strip()
    return not text or text.startswith(b"#")


# -- CSV --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One CSV row: its first and last line numbers, the offset after it, its bytes."""

    line: int
    last_line: int
    end: int
    raw: bytes


def csv_records(stream: IO[bytes], *, offset: int = 0, line: int = 0) -> Iterator[Record]:
    """CSV rows from the stream's position (byte ``offset``, after ``line`` lines).

    A row goes on past a line break inside a quoted cell: quotes come in pairs ("" is an
    escaped quote), so an odd count so far means the cell is still open.
    """
    offset, lines = _skip_bom(stream, offset)
    buf, start, quotes = b"", line + 1, 0
    for raw in lines:
        offset += len(raw)
        line += 1
        buf += raw
        quotes += raw.count(b'"')
        if quotes % 2:
            continue
        if not _skipped(buf):
            yield Record(start, line, offset, buf.rstrip(b"\r\n"))
        buf, start, quotes = b"", line + 1, 0
    if buf and not _skipped(buf):  # an unterminated quote at the end of the input
        yield Record(start, line, offset, buf.rstrip(b"\r\n"))


def csv_batches(
    records: Iterator[Record], converter: CsvConverter, batch_size: int
) -> Iterator[Batch]:
    """Rows converted to line protocol; rows that do not convert are ``refused``."""
    batch = Batch()
    for record in records:
        try:
            # UnicodeDecodeError is a ValueError too: such a row is refused like any bad row.
            text = converter.convert(parse_row(record.raw.decode()))
        except ValueError as exc:
            batch.refused.append((record.line, str(exc), record.raw))
        else:
            batch.lines.append(text)
            batch.numbers.append(record.line)
            batch.originals.append(record.raw)
            batch.size += len(text) + 1
        batch.end, batch.last_line = record.end, record.last_line
        if len(batch) >= batch_size or batch.full:
            yield batch
            batch = Batch()
    if len(batch):
        yield batch
