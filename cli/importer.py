"""`tierstream import FILE.csv --type ...`: backfill history through ingest, resumably.

Order of work per chunk of rows, which is what makes resuming exact: validate locally,
send the valid rows in requests under ingest's body limit (a 422 or 413 that names bad
items by index rejects them and re-sends the rest; one about the whole request splits it
in halves, down to a single row, which is then rejected with ingest's reasons), append the
chunk's rejects to `<input>.rejects.csv`, and only then move the checkpoint past the
chunk's last line. A resumed run rewrites the earlier rejects file atomically before it
sends anything, so a run killed early never loses them; a run that starts over leaves the
earlier file as it is until its first chunk is settled, so a run that sends nothing (a
refused key, ingest down) never loses them either.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.api_client import (
    MAX_BATCH_BYTES,
    ApiClient,
    ApiError,
    BatchRejected,
    Endpoints,
    split_batches,
)
from cli.batches import RequestSize, send_in_halves
from cli.csv_import import (
    Checkpoint,
    EventModel,
    MappingError,
    RowError,
    checkpoint_path,
    columns_for,
    input_fingerprint,
    load_checkpoint,
    parse_mapping,
    rejects_path,
    required_fields,
    row_to_event,
    save_checkpoint,
    unused_columns,
)
from cli.progress import progress_bar

# The header's lines, not counted by the progress bar: its first (a blank one is refused);
# one naming a column over several lines (quoted line breaks) is only shown short of them.
HEADER_LINES = 1
# A cell can be as large as a whole request body, no larger (csv's default is 128 KiB).
MAX_FIELD_CHARS = MAX_BATCH_BYTES


class ImportExit(IntEnum):
    """`tierstream import`'s exit codes (documented in its --help)."""

    DONE = 0  # every row is in
    STOPPED = 1  # ingest unavailable or failing: the same command resumes
    USAGE = 2  # a bad option or a missing input file (the command-line parser's code)
    REJECTED = 3  # finished; some rows were rejected, see FILE.rejects.csv
    REFUSED = 4  # the input or the setup needs fixing first (CSV, columns, API key, URL)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells say): the same command resumes


@dataclass
class Row:
    """One CSV record: its first line, its cells, and the event or the reason it failed."""

    line: int
    cells: list[str]
    event: EventModel | None = None
    reason: str = ""
    last_line: int = 0  # where a record that spans lines ends (0: on its first)


@dataclass
class ImportStats:
    """Counts for the final summary."""

    resumed_after: int = 0
    read: int = 0
    accepted: int = 0
    rejected: list[Row] = field(default_factory=list)
    earlier_rejects: int = 0


def read_rows(
    handle: TextIO, kind: str, mapping: dict[str, str]
) -> tuple[list[str], Iterator[Row]]:
    """The header and the records with their starting line numbers (blank lines skipped).

    A record the csv module cannot read (a cell over MAX_FIELD_CHARS, often an unclosed
    quote) raises ValueError naming its line: what follows it cannot be trusted.
    """
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(handle)
    header = [h.strip() for h in _header(_next_record(reader, 1), kind)]
    _refuse_repeated_columns(header)
    columns = columns_for(kind, header, mapping)

    def rows() -> Iterator[Row]:
        previous_end = reader.line_num
        while (cells := _next_record(reader, previous_end + 1)) is not None:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            last = previous_end if previous_end > start else 0
            yield _parse(Row(start, cells, last_line=last), kind, header, columns)

    return header, rows()


def _header(record: list[str] | None, kind: str) -> list[str]:
    """The first record, refused when there is none (an empty file) or it names nothing: the
    missing-columns error would blame the mapping for what is a file without a header."""
    if record is not None and any(cell.strip() for cell in record):
        return record
    example = ",".join(required_fields(kind))
    problem = "the file is empty" if record is None else "line 1 is blank"
    raise ValueError(
        f"{problem}: no header row; the first line must name the columns, e.g. {example}"
    )


def _refuse_repeated_columns(header: Sequence[str]) -> None:
    """A column named twice would be read from one of its copies, silently: refuse it.
    Unnamed columns (a trailing comma) are read by nothing, so they may repeat."""
    counts = Counter(name for name in header if name)
    repeated = [name for name, count in counts.items() if count > 1]
    if repeated:
        names = ", ".join(repr(name) for name in repeated)
        raise ValueError(f"the CSV header names these columns more than once: {names}")


def _next_record(reader: Iterator[list[str]], line: int) -> list[str] | None:
    """The next record (None at the end); a csv.Error becomes a ValueError naming its line."""
    try:
        cells: list[str] | None = next(reader, None)
    except csv.Error as exc:
        raise ValueError(
            f"line {line}: unreadable CSV ({exc}): an unclosed quote, or a cell over"
            f" {MAX_FIELD_CHARS} characters? Fix it and run again (rows already sent are not"
            " counted twice)"
        ) from exc
    return cells


def _parse(row: Row, kind: str, header: list[str], columns: dict[str, str]) -> Row:
    if len(row.cells) != len(header):
        row.reason = f"{len(row.cells)} fields, the header has {len(header)}"
        if row.last_line:  # a quote that opens and never closes swallows the lines after it
            row.reason += f" (the record runs to line {row.last_line}: an unclosed quote?)"
        return row
    try:
        row.event = row_to_event(kind, dict(zip(header, row.cells, strict=True)), columns)
    except RowError as exc:
        row.reason = str(exc)
    return row


def _chunks(rows: Iterator[Row], size: int, after: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        if row.line <= after:
            continue
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bad_indexes(exc: BatchRejected, size: int) -> dict[int, str]:
    """{index in batch: reason} from ingest's 422 errors list."""
    named = exc.event_errors(size).items()
    return {index: "; ".join(f"ingest: {r}" for r in reasons) for index, reasons in named}


def _batch_reason(exc: BatchRejected) -> str:
    """Why ingest refused a one-row request that named no item: its errors, else its detail."""
    return "ingest: " + exc.reasons(None, in_event=True)


def _events(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The rows' events as ingest takes them (rows without one are skipped)."""
    return [r.event.model_dump(mode="json", exclude_none=True) for r in rows if r.event]


def send_rows(client: ApiClient, rows: list[Row], size: RequestSize | None = None) -> int:
    """Send the rows' events in requests under ingest's body limit; rows ingest refuses get
    their reason. Returns the accepted count."""
    size = size or RequestSize()
    pending = [r for r in rows if r.event is not None]
    accepted = start = 0
    most = min(len(pending), size.max_events or len(pending)) or 1
    for batch in split_batches(_events(pending), max_events=most):
        part = pending[start : start + len(batch)]
        accepted += send_in_halves(partial(_send_marking, client), part, size)
        start += len(batch)
    return accepted


def _send_marking(client: ApiClient, rows: Sequence[Row]) -> int:
    """One request for the rows' events: rows ingest names get its reasons and the rest is
    sent again; a single row refused for the whole request gets the request's reasons. A
    larger request refused as a whole is raised, for `send_in_halves` to split."""
    pending = [r for r in rows if r.event is not None]
    while pending:
        try:
            return len(client.send_batch(_events(pending)))
        except BatchRejected as exc:
            bad = _bad_indexes(exc, len(pending))
            if not bad and len(pending) > 1:
                raise
            for index, reason in (bad or {0: _batch_reason(exc)}).items():
                pending[index].event, pending[index].reason = None, reason
            pending = [r for r in pending if r.event is not None]
    return 0


class RejectFile:
    """`<input>.rejects.csv`: line, reason, then the original cells. Written only when there
    is a reject: an import that ends before one (ingest unreachable, a refused key) leaves no
    file to suggest that rows were refused.

    An earlier run's file that this run does not resume is left alone until this run has
    settled its first chunk (`add`) or finished (`finish`): a run that sends nothing (a
    refused key, ingest down) never loses the rejects the last run reported.
    """

    def __init__(self, path: Path, header: Sequence[str], *, keep_upto: int) -> None:
        kept = _earlier_rejects(path, keep_upto) if keep_upto else []
        self.path, self.earlier, self._header = path, len(kept), list(header)
        self._handle: TextIO | None = None
        self._earlier_file = not kept  # what is on disk, if anything, is not this run's
        if kept:
            _replace_durably(path, [self._titles(), *kept])
            self._handle = path.open("a", newline="", encoding="utf-8")

    def _titles(self) -> list[str]:
        return ["line", "reason", *self._header]

    def add(self, rows: Sequence[Row]) -> None:
        """A settled chunk's rejected rows (maybe none): append and flush them, before the
        checkpoint moves past them. The first chunk replaces an earlier run's file."""
        if not rows:
            self.finish()
            return
        if self._handle is None:  # "w": over an earlier run's file, if there is one
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            csv.writer(self._handle).writerow(self._titles())
            self._earlier_file = False
        csv.writer(self._handle).writerows([[r.line, r.reason, *r.cells] for r in rows])
        self._handle.flush()

    def finish(self) -> None:
        """This run has settled rows (or all of them, maybe none): an earlier run's file is
        stale from now on."""
        if self._earlier_file:
            self.path.unlink(missing_ok=True)
            self._earlier_file = False

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _replace_durably(path: Path, records: list[list[Any]]) -> None:
    """Write a whole file beside `path`, fsync it, and rename it over `path`.

    The earlier run's rejects are on disk before anything is sent: a run killed before its
    first acknowledgement must not leave a file that lost them while the checkpoint still
    points past their lines.
    """
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(records)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _earlier_rejects(path: Path, upto: int) -> list[list[str]]:
    """Rejects recorded by the interrupted run, up to its checkpoint (no duplicates)."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            records = list(csv.reader(handle))[1:]
    except FileNotFoundError:
        return []
    except (OSError, csv.Error) as exc:  # never start over a reject file it cannot read
        raise ValueError(f"cannot read the earlier rejects {path}: {exc}") from exc
    return [r for r in records if r and r[0].isascii() and r[0].isdigit() and int(r[0]) <= upto]


@dataclass(frozen=True)
class ImportOptions:
    """What the user asked `import` for."""

    source: Path
    kind: str
    columns: tuple[str, ...] = ()
    batch_size: int = 500


def run_import(options: ImportOptions, console: Console) -> ImportExit:
    """Import the CSV; the exit code says whether it finished, and if not what to do."""
    try:
        mapping = parse_mapping(options.columns, options.kind)
        stats = _import(options, mapping, console)
    except MappingError as exc:  # `tierstream import` refuses it first, as a usage error
        console.print(f"[red]--column:[/red] {escape(str(exc))}", soft_wrap=True)
        return ImportExit.USAGE
    except (ValueError, OSError, ApiError) as exc:
        return _report_failure(exc, options.source, console)
    except KeyboardInterrupt:  # the checkpoint holds what ingest took: say how to go on
        console.print("[yellow]interrupted:[/yellow] run the same command again to resume")
        return ImportExit.INTERRUPTED
    console.print(_summary(stats, options.source))
    _print_rejects(stats.rejected, rejects_path(options.source), console)
    return ImportExit.REJECTED if stats.rejected or stats.earlier_rejects else ImportExit.DONE


def _report_failure(exc: Exception, source: Path, console: Console) -> ImportExit:
    """One line on why the import ended early; STOPPED when running it again may finish it."""
    why = escape(str(exc))
    if isinstance(exc, ApiError) and not exc.lasting:
        line = f"[red]stopped:[/red] {why}; run the same command again to resume"
        console.print(line, soft_wrap=True)  # one line however long: scripts grep it
        return ImportExit.STOPPED
    console.print(f"[red]cannot import {escape(str(source))}:[/red] {why}", soft_wrap=True)
    return ImportExit.REFUSED


def _import(options: ImportOptions, mapping: dict[str, str], console: Console) -> ImportStats:
    endpoints = Endpoints.from_env()  # a key no request can carry: refused before any work
    source, marker = options.source, checkpoint_path(options.source)
    fingerprint = input_fingerprint(source, options.kind, mapping)
    stats = ImportStats(resumed_after=load_checkpoint(marker, fingerprint))
    lines = _count_lines(source)  # refuses a file that is not UTF-8 before anything is sent
    with source.open(newline="", encoding="utf-8-sig") as handle:
        header, rows = read_rows(handle, options.kind, mapping)
        _warn_unused(unused_columns(options.kind, header, mapping), console)
        with closing(RejectFile(rejects_path(source), header, keep_upto=stats.resumed_after)) as rf:
            stats.earlier_rejects = rf.earlier
            chunks = _chunks(rows, min(options.batch_size, 1000), stats.resumed_after)
            progress = Progress(lines - HEADER_LINES, Checkpointer(marker, fingerprint))
            _send_chunks(ApiClient(endpoints), chunks, rf, progress, stats, console)
    marker.unlink(missing_ok=True)  # finished: a later run starts over (and sends no new ids)
    return stats


@dataclass(frozen=True)
class Checkpointer:
    """Where and for which file version progress is recorded."""

    path: Path
    fingerprint: str

    def advance(self, line: int) -> None:
        """Every line up to `line` is settled (acknowledged by ingest or rejected)."""
        save_checkpoint(self.path, Checkpoint(line, self.fingerprint))


@dataclass(frozen=True)
class Progress:
    """The input's lines after the header (the bar's total: the header is no row to
    import) and its checkpoint."""

    lines: int
    checkpoint: Checkpointer


def _after_header(line: int) -> int:
    """Lines of rows up to `line`, a line number of the file (the bar's count)."""
    return max(0, line - HEADER_LINES)


def _send_chunks(
    client: ApiClient,
    chunks: Iterator[list[Row]],
    rejects: RejectFile,
    progress: Progress,
    stats: ImportStats,
    console: Console,
) -> None:
    total, checkpoint = progress.lines, progress.checkpoint
    size = RequestSize()
    with client, progress_bar(console) as bar:
        done = _after_header(stats.resumed_after)
        task = bar.add_task("importing", total=total, completed=done, rate="lines")
        for chunk in chunks:
            stats.read += len(chunk)
            stats.accepted += send_rows(client, chunk, size)
            bad = [r for r in chunk if r.event is None]
            rejects.add(bad)  # before the checkpoint moves past them
            stats.rejected.extend(bad)
            checkpoint.advance(chunk[-1].line)
            bar.update(task, completed=_after_header(chunk[-1].last_line or chunk[-1].line))
        rejects.finish()  # every row settled: an earlier run's file is not this one's
        bar.update(task, completed=total)


def _count_lines(source: Path) -> int:
    """The file's lines; the first one that is not UTF-8 is refused, naming it (ValueError).
    A line at a time is exact: no byte of a UTF-8 sequence is a newline."""
    count = 0
    with source.open("rb") as handle:
        for count, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(_not_utf8(source, count, line, exc)) from exc
    return count


def _not_utf8(source: Path, number: int, line: bytes, exc: UnicodeDecodeError) -> str:
    byte = line[exc.start]
    return (
        f"line {number}: not UTF-8 text (byte 0x{byte:02x} at byte {exc.start + 1} of the"
        " line); re-encode the file as UTF-8 and import that, e.g. from Windows-1252:"
        f" iconv -f CP1252 -t UTF-8 {source.name} > {source.stem}.utf8{source.suffix}"
    )


def _warn_unused(columns: list[str], console: Console) -> None:
    if columns:
        line = f"[yellow]ignored columns (no such event field):[/yellow] {columns}"
        console.print(line, soft_wrap=True)


def _summary(stats: ImportStats, source: Path) -> Table:
    table = Table(title=f"import {source.name}")
    table.add_column("what", style="bold")
    table.add_column("rows", justify="right")
    if stats.resumed_after:
        table.add_row("resumed after line", str(stats.resumed_after))
    table.add_row("read", str(stats.read))
    table.add_row("accepted by ingest", str(stats.accepted))
    table.add_row("rejected", str(len(stats.rejected) + stats.earlier_rejects))
    return table


def _print_rejects(rejected: list[Row], path: Path, console: Console, limit: int = 20) -> None:
    for row in rejected[:limit]:
        # One line per row however long (scripts grep them), as in the rejects file.
        line = f"[red]line {row.line}:[/red] {escape(row.reason)}"
        console.print(line, highlight=False, soft_wrap=True)
    if len(rejected) > limit:
        console.print(f"... and {len(rejected) - limit} more")
    if path.exists():
        console.print(f"rejected rows: {path}")
