"""`tierstream import FILE.csv --type ...`: backfill history through ingest, resumably.

Order of work per chunk of rows, which is what makes resuming exact: validate locally,
send the valid rows (a 422 names bad items by index: they are rejected and the rest
re-sent), append the chunk's rejects to `<input>.rejects.csv`, and only then move the
checkpoint past the chunk's last line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.api_client import ApiClient, ApiError, BatchRejected, Endpoints
from cli.csv_import import (
    Checkpoint,
    EventModel,
    RowError,
    checkpoint_path,
    columns_for,
    input_fingerprint,
    load_checkpoint,
    parse_mapping,
    rejects_path,
    row_to_event,
    save_checkpoint,
    unused_columns,
)
from cli.simulate import progress_bar

_INDEX_IN_FIELD = re.compile(r"^events\[(\d+)\]\.?")


@dataclass
class Row:
    """One CSV record: its first line, its cells, and the event or the reason it failed."""

    line: int
    cells: list[str]
    event: EventModel | None = None
    reason: str = ""


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
    """The header and the records with their starting line numbers (blank lines skipped)."""
    reader = csv.reader(handle)
    header = [h.strip() for h in next(reader, [])]
    columns = columns_for(kind, header, mapping)

    def rows() -> Iterator[Row]:
        previous_end = reader.line_num
        for cells in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            yield _parse(Row(start, cells), kind, header, columns)

    return header, rows()


def _parse(row: Row, kind: str, header: list[str], columns: dict[str, str]) -> Row:
    if len(row.cells) != len(header):
        row.reason = f"{len(row.cells)} fields, the header has {len(header)}"
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
    found: dict[int, str] = {}
    for err in exc.errors:
        index, where = err.get("index"), str(err.get("field", ""))
        if match := _INDEX_IN_FIELD.match(where):
            index = int(match.group(1)) if index is None else index
            where = where[match.end() :]
        if isinstance(index, int) and 0 <= index < size:
            reason = f"{where}: {err.get('reason', 'invalid')}".lstrip(": ")
            found[index] = "; ".join(filter(None, (found.get(index), f"ingest: {reason}")))
    return found


def send_rows(client: ApiClient, rows: list[Row]) -> int:
    """Send the rows' events; rows ingest refuses get their reason. Returns accepted count."""
    pending = [r for r in rows if r.event is not None]
    while pending:
        batch = [r.event.model_dump(mode="json", exclude_none=True) for r in pending if r.event]
        try:
            return len(client.send_batch(batch))
        except BatchRejected as exc:
            bad = _bad_indexes(exc, len(pending))
            if not bad:  # cannot tell which: refuse the whole chunk rather than guess
                bad = dict.fromkeys(range(len(pending)), f"ingest: {exc.detail}")
            for index, reason in bad.items():
                pending[index].event, pending[index].reason = None, reason
            pending = [r for r in pending if r.event is not None]
    return 0


class RejectFile:
    """`<input>.rejects.csv`: line, reason, then the original cells."""

    def __init__(self, path: Path, header: Sequence[str], *, keep_upto: int) -> None:
        kept = _earlier_rejects(path, keep_upto) if keep_upto else []
        self.path, self.earlier = path, len(kept)
        self._handle = path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(["line", "reason", *header])
        self._writer.writerows(kept)

    def add(self, rows: Sequence[Row]) -> None:
        """Append rejected rows and flush (before the checkpoint moves past them)."""
        self._writer.writerows([[r.line, r.reason, *r.cells] for r in rows])
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _earlier_rejects(path: Path, upto: int) -> list[list[str]]:
    """Rejects recorded by the interrupted run, up to its checkpoint (no duplicates)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            records = list(csv.reader(handle))[1:]
    except OSError:
        return []
    return [r for r in records if r and r[0].isascii() and r[0].isdigit() and int(r[0]) <= upto]


@dataclass(frozen=True)
class ImportOptions:
    """What the user asked `import` for."""

    source: Path
    kind: str
    columns: tuple[str, ...] = ()
    batch_size: int = 500


def run_import(options: ImportOptions, console: Console) -> int:
    """Import the CSV; exit code 0 (all rows in), 2 (some rejected) or 1 (could not finish)."""
    try:
        mapping = parse_mapping(options.columns, options.kind)
        stats = _import(options, mapping, console)
    except (ValueError, OSError) as exc:
        console.print(f"[red]cannot import {options.source}:[/red] {exc}")
        return 1
    except ApiError as exc:
        console.print(f"[red]stopped:[/red] {exc}; run the same command again to resume")
        return 1
    console.print(_summary(stats, options.source))
    _print_rejects(stats.rejected, rejects_path(options.source), console)
    return 2 if stats.rejected or stats.earlier_rejects else 0


def _import(options: ImportOptions, mapping: dict[str, str], console: Console) -> ImportStats:
    source, marker = options.source, checkpoint_path(options.source)
    fingerprint = input_fingerprint(source, options.kind, mapping)
    stats = ImportStats(resumed_after=load_checkpoint(marker, fingerprint))
    with source.open(newline="", encoding="utf-8-sig") as handle:
        header, rows = read_rows(handle, options.kind, mapping)
        _warn_unused(unused_columns(options.kind, header, mapping), console)
        with closing(RejectFile(rejects_path(source), header, keep_upto=stats.resumed_after)) as rf:
            stats.earlier_rejects = rf.earlier
            chunks = _chunks(rows, min(options.batch_size, 1000), stats.resumed_after)
            progress = Progress(_count_lines(source), Checkpointer(marker, fingerprint))
            _send_chunks(chunks, rf, progress, stats, console)
    if not (stats.rejected or stats.earlier_rejects):
        rf.path.unlink()  # no rejects, no file: a leftover would mislead
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
    """The input's line count (for the bar) and its checkpoint."""

    lines: int
    checkpoint: Checkpointer


def _send_chunks(
    chunks: Iterator[list[Row]],
    rejects: RejectFile,
    progress: Progress,
    stats: ImportStats,
    console: Console,
) -> None:
    total, checkpoint = progress.lines, progress.checkpoint
    with ApiClient(Endpoints.from_env()) as client, progress_bar(console) as bar:
        task = bar.add_task("importing", total=total, completed=stats.resumed_after, rate="")
        for chunk in chunks:
            stats.read += len(chunk)
            stats.accepted += send_rows(client, chunk)
            bad = [r for r in chunk if r.event is None]
            rejects.add(bad)  # before the checkpoint moves past them
            stats.rejected.extend(bad)
            checkpoint.advance(chunk[-1].line)
            bar.update(task, completed=chunk[-1].line)
        bar.update(task, completed=total)


def _count_lines(source: Path) -> int:
    with source.open("rb") as handle:
        return sum(1 for _ in handle)


def _warn_unused(columns: list[str], console: Console) -> None:
    if columns:
        console.print(f"[yellow]ignored columns (no such event field):[/yellow] {columns}")


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
        console.print(f"[red]line {row.line}:[/red] {escape(row.reason)}", highlight=False)
    if len(rejected) > limit:
        console.print(f"... and {len(rejected) - limit} more")
    if path.exists():
        console.print(f"rejected rows: {path}")
