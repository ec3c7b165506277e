"""Upkeep of the curated tables: closed periods compacted, old snapshots and files removed.

While a date is live, each unit's refresh replaces its hour in small files: cheap to write,
costly to read for years (a file per table, bucket and hour). Once the date has closed (an hour
after it ended, so that the last minutes' payloads have landed), its rows are rewritten into
few large files sorted by bucket, site and time: one per table and date at typical fleets, one
per `TARGET_BYTES` of data at large ones (each a contiguous range of buckets, so that late data
rewrites only its own range). The daily tables, a few rows per site and day, are compacted a
month at a time instead: the month's closed dates into one file. A compaction is one commit per file's range: a reader sees the
period before or after it, and a refresh that commits in between makes the compaction start that
range again rather than lose the refresh's rows (Delta's conflict check).

Late data for a compacted date is written by its unit's refresh as usual (replacing its hours'
rows, which rewrites the large file's range); the period then needs compacting again, and the
next upkeep does it. Which periods are compacted is kept in `state/compacted/<table>.json`: the
files each period's compaction left. A period whose closed files are no longer exactly those
needs it.
Files that no snapshot younger than `RETAIN` needs are deleted (vacuum), the log is
checkpointed, and log entries past the tables' log retention are removed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError

from data_acq import layout
from data_acq.curate.tables import COMMIT_ATTEMPTS, PARTITIONED, SCHEMAS, SORT, CuratedTables
from data_acq.progress import Progress
from data_acq.storage import ObjectStore

CLOSE_AFTER = timedelta(hours=1)  # a date is closed this long after it ended
TARGET_BYTES = 512 * 2**20  # a compacted file's size at most (Parquet, compressed) ...
FILE_BYTES = 2**31  # ... so the writer, told this, never splits a range's file
RETAIN = timedelta(hours=24)  # removed files are kept this long for readers' older snapshots
ROW_GROUP_ROWS = 256 * 1024  # row groups: a site's rows skip the rest by their statistics
WRITER = WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)


@dataclass
class PeriodFiles:
    """A period's closed files in one table (a date's, or for daily tables a month's), as the
    table's version lists them."""

    paths: frozenset[str]
    size: int
    buckets: tuple[int, int]  # smallest and largest bucket
    last: date  # the last closed date they hold

    @property
    def files(self) -> int:
        return len(self.paths)

    @property
    def wanted(self) -> int:
        """How many files the period should have once compacted."""
        return max(1, math.ceil(self.size / TARGET_BYTES))


@dataclass
class CompactResult:
    """What an upkeep did, per table."""

    compacted: dict[str, list[date]] = field(default_factory=dict)  # periods (first dates)
    files_before: dict[str, int] = field(default_factory=dict)  # of the periods compacted
    files_after: dict[str, int] = field(default_factory=dict)
    removed_files: dict[str, int] = field(default_factory=dict)  # deleted by the vacuum

    @property
    def dates(self) -> list[date]:
        """The periods compacted, by their first dates (a date; a month for daily tables)."""
        return sorted({day for days in self.compacted.values() for day in days})


def closed(day: date, now: datetime) -> bool:
    end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    return now >= end + CLOSE_AFTER


def period_of(name: str, day: date) -> date:
    """The first day of the period a date is compacted with."""
    return day if name in PARTITIONED else day.replace(day=1)


def closed_files(name: str, table: DeltaTable, now: datetime) -> dict[date, PeriodFiles]:
    """Each period's files of closed dates only, from the log (no data file is opened): a
    file's dates are its partition's, or its date statistics' (unpartitioned tables)."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    if actions.is_empty():
        return {}
    if name in PARTITIONED:
        first = last = pl.col("partition.date")
    else:
        first, last = pl.col("min.date"), pl.col("max.date")
    files = actions.select(
        "path",
        size="size_bytes",
        first=first.cast(pl.Date),
        last=last.cast(pl.Date),
        low=pl.col("min.bucket"),
        high=pl.col("max.bucket"),
    ).filter(pl.col("last").is_not_null())
    periods: dict[date, PeriodFiles] = {}
    for row in files.iter_rows(named=True):
        if not closed(row["last"], now):
            continue
        period = period_of(name, row["first"])
        known = periods.get(period)
        low, high = row["low"] or 0, row["high"] or 0
        periods[period] = (
            PeriodFiles(frozenset([row["path"]]), row["size"], (low, high), row["last"])
            if known is None
            else PeriodFiles(
                known.paths | {row["path"]},
                known.size + row["size"],
                (min(known.buckets[0], low), max(known.buckets[1], high)),
                max(known.last, row["last"]),
            )
        )
    return periods


def compacted_files(store: ObjectStore, name: str) -> dict[str, list[str]]:
    """Per period (its first date, ISO text), the files its last compaction left."""
    try:
        return json.loads(store.get(layout.compacted_key(name)))
    except FileNotFoundError:
        return {}


def needs_compaction(
    tables: CuratedTables, now: datetime, only: Iterable[date] | None = None
) -> dict[str, list[date]]:
    """Per table, the periods whose closed files are not those their last compaction left
    (periods holding one of the dates `only`, when given)."""
    todo: dict[str, list[date]] = {}
    for name in SCHEMAS:
        wanted = None if only is None else {period_of(name, day) for day in only}
        done = compacted_files(tables.store, name)
        periods = [
            period
            for period, files in closed_files(name, tables.table(name), now).items()
            if files.paths != frozenset(done.get(period.isoformat(), ()))
            and (wanted is None or period in wanted)
        ]
        if periods:
            todo[name] = sorted(periods)
    return todo


def _ranges(files: PeriodFiles) -> list[tuple[int, int]]:
    """Contiguous bucket ranges, one per file to write (by the period's size so far)."""
    low, high = files.buckets
    count = min(files.wanted, high - low + 1)
    edges = [low + round(i * (high - low + 1) / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(count)]


def compact_period(tables: CuratedTables, name: str, period: date, now: datetime) -> frozenset[str]:
    """Rewrite the period's closed rows into few sorted files; the files it holds now."""
    files = closed_files(name, tables.table(name), now).get(period)
    if files is None:
        return frozenset()
    for low, high in _ranges(files):
        dates = pl.col("date").is_between(period, files.last)
        where = (
            f"date >= '{period.isoformat()}' AND date <= '{files.last.isoformat()}' "
            f"AND bucket >= {low} AND bucket <= {high}"
        )
        for attempt in range(COMMIT_ATTEMPTS):
            table = tables.table(name)  # the version this attempt reads and replaces
            rows = (
                pl.scan_delta(table)
                .filter(dates, pl.col("bucket").is_between(low, high))
                .sort("bucket", *SORT[name], nulls_last=True)
                .collect()
            )
            try:
                rows.write_delta(
                    table,
                    mode="overwrite",
                    delta_write_options={
                        "predicate": where,
                        "writer_properties": WRITER,
                        "target_file_size": FILE_BYTES,
                    },
                )
                break
            except CommitFailedError:  # a refresh wrote the period meanwhile: read it again
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
    now_files = closed_files(name, tables.table(name), now).get(period)
    return now_files.paths if now_files else frozenset()


def expire(tables: CuratedTables, name: str, retain: timedelta = RETAIN) -> int:
    """Delete the files no snapshot of the last `retain` needs (and files no commit ever
    referenced, e.g. of a write that crashed), checkpoint the log and drop its expired
    entries; how many files were deleted."""
    table = tables.table(name)
    removed = table.vacuum(
        retention_hours=max(0, int(retain.total_seconds() // 3600)),
        dry_run=False,
        enforce_retention_duration=False,
    )
    table = tables.table(name)
    table.create_checkpoint()
    table.cleanup_metadata()
    return len(removed)


def upkeep(
    tables: CuratedTables,
    now: datetime | None = None,
    only: Iterable[date] | None = None,
    retain: timedelta | None = RETAIN,
    progress: Progress | None = None,
) -> CompactResult:
    """Compact every period with closed dates that needs it (of the dates `only`, when given),
    then expire old files (unless `retain` is None)."""
    now = now or datetime.now(UTC)
    result = CompactResult()
    todo = needs_compaction(tables, now, only)
    total = sum(len(days) for days in todo.values())
    done = 0
    for name, periods in todo.items():
        before = closed_files(name, tables.table(name), now)
        result.compacted[name] = periods
        result.files_before[name] = sum(before[period].files for period in periods)
        result.files_after[name] = 0
        state = compacted_files(tables.store, name)
        for period in periods:
            left = compact_period(tables, name, period, now)
            result.files_after[name] += len(left)
            state[period.isoformat()] = sorted(left)
            done += 1
            if progress:
                progress("periods compacted", done, total, "table-periods")
        # read again: an upkeep elsewhere may have recorded other dates meanwhile
        tables.store.put(
            layout.compacted_key(name),
            json.dumps(compacted_files(tables.store, name) | state, indent=0).encode(),
        )
    if retain is not None:
        for name in SCHEMAS:
            result.removed_files[name] = expire(tables, name, retain)
    return result
