"""Upkeep of the curated tables: closed dates compacted, old snapshots and files removed.

While a date is live, each unit's refresh replaces its hour in small files: cheap to write,
costly to read for years (a file per table, bucket and hour). Once the date has closed (an hour
after it ended, so that the last minutes' payloads have landed), its rows are rewritten into
few large files sorted by bucket, site and time: one per table and date at typical fleets, one
per `TARGET_BYTES` of data at large ones (each a contiguous range of buckets, so that late data
rewrites only its own range). A compaction is one commit per file's range: a reader sees the
date before or after it, and a refresh that commits in between makes the compaction start that
range again rather than lose the refresh's rows (Delta's conflict check).

Late data for a compacted date is written by its unit's refresh as usual (replacing its hours'
rows, which rewrites the large file's range); the date then needs compacting again, and the
next upkeep does it. Which dates are compacted is kept in `state/compacted/<table>.json`: the
files each date's compaction left. A date whose files are no longer exactly those needs it.
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
from data_acq.curate.tables import COMMIT_ATTEMPTS, SCHEMAS, SORT, CuratedTables
from data_acq.progress import Progress
from data_acq.storage import ObjectStore

CLOSE_AFTER = timedelta(hours=1)  # a date is closed this long after it ended
TARGET_BYTES = 512 * 2**20  # a compacted file's size at most (Parquet, compressed) ...
FILE_BYTES = 2**31  # ... so the writer, told this, never splits a range's file
RETAIN = timedelta(hours=24)  # removed files are kept this long for readers' older snapshots
ROW_GROUP_ROWS = 256 * 1024  # row groups: a site's rows skip the rest by their statistics
WRITER = WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)


@dataclass
class DateFiles:
    """A date's files in one table, as the table's snapshot lists them."""

    paths: frozenset[str]
    size: int
    buckets: tuple[int, int]  # smallest and largest bucket

    @property
    def files(self) -> int:
        return len(self.paths)

    @property
    def wanted(self) -> int:
        """How many files the date should have once compacted."""
        return max(1, math.ceil(self.size / TARGET_BYTES))


@dataclass
class CompactResult:
    """What an upkeep did, per table."""

    compacted: dict[str, list[date]] = field(default_factory=dict)
    files_before: dict[str, int] = field(default_factory=dict)  # of the dates compacted
    files_after: dict[str, int] = field(default_factory=dict)
    removed_files: dict[str, int] = field(default_factory=dict)  # deleted by the vacuum

    @property
    def dates(self) -> list[date]:
        return sorted({day for days in self.compacted.values() for day in days})


def closed(day: date, now: datetime) -> bool:
    end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    return now >= end + CLOSE_AFTER


def date_files(table: DeltaTable) -> dict[date, DateFiles]:
    """Each date's files, sizes and bucket range, from the log (no data file is opened)."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    if actions.is_empty():
        return {}
    per_date = actions.group_by(pl.col("partition.date").alias("date")).agg(
        paths=pl.col("path"),
        size=pl.col("size_bytes").sum(),
        low=pl.col("min.bucket").min(),
        high=pl.col("max.bucket").max(),
    )
    return {
        row["date"]: DateFiles(
            frozenset(row["paths"]), row["size"], (row["low"] or 0, row["high"] or 0)
        )
        for row in per_date.iter_rows(named=True)
    }


def compacted_files(store: ObjectStore, name: str) -> dict[str, list[str]]:
    """Per date (ISO text), the files its last compaction left."""
    try:
        return json.loads(store.get(layout.compacted_key(name)))
    except FileNotFoundError:
        return {}


def needs_compaction(
    tables: CuratedTables, now: datetime, only: Iterable[date] | None = None
) -> dict[str, list[date]]:
    """Per table, its closed dates whose files are not those their last compaction left."""
    wanted = set(only) if only is not None else None
    todo: dict[str, list[date]] = {}
    for name in SCHEMAS:
        done = compacted_files(tables.store, name)
        dates = [
            day
            for day, files in date_files(tables.table(name)).items()
            if closed(day, now)
            and files.paths != frozenset(done.get(day.isoformat(), ()))
            and (wanted is None or day in wanted)
        ]
        if dates:
            todo[name] = sorted(dates)
    return todo


def _ranges(files: DateFiles) -> list[tuple[int, int]]:
    """Contiguous bucket ranges, one per file to write (by the date's size so far)."""
    low, high = files.buckets
    count = min(files.wanted, high - low + 1)
    edges = [low + round(i * (high - low + 1) / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(count)]


def compact_date(tables: CuratedTables, name: str, day: date) -> frozenset[str]:
    """Rewrite the date's rows into few sorted files; the files it holds now."""
    table = tables.table(name)
    files = date_files(table).get(day)
    if files is None:
        return frozenset()
    for low, high in _ranges(files):
        where = f"date = '{day.isoformat()}' AND bucket >= {low} AND bucket <= {high}"
        for attempt in range(COMMIT_ATTEMPTS):
            table = tables.table(name)  # the snapshot this attempt reads and replaces
            rows = (
                pl.scan_delta(table)
                .filter(pl.col("date") == day, pl.col("bucket").is_between(low, high))
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
            except CommitFailedError:  # a refresh wrote the date meanwhile: read it again
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
    now = date_files(tables.table(name)).get(day)
    return now.paths if now else frozenset()


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
    """Compact every closed date that needs it (of `only`, when given), then expire old files
    (unless `retain` is None)."""
    now = now or datetime.now(UTC)
    result = CompactResult()
    todo = needs_compaction(tables, now, only)
    total = sum(len(days) for days in todo.values())
    done = 0
    for name, days in todo.items():
        before = date_files(tables.table(name))
        result.compacted[name] = days
        result.files_before[name] = sum(before[day].files for day in days)
        result.files_after[name] = 0
        state = compacted_files(tables.store, name)
        for day in days:
            left = compact_date(tables, name, day)
            result.files_after[name] += len(left)
            state[day.isoformat()] = sorted(left)
            done += 1
            if progress:
                progress("dates compacted", done, total, "table-dates")
        # read again: an upkeep elsewhere may have recorded other dates meanwhile
        tables.store.put(
            layout.compacted_key(name),
            json.dumps(compacted_files(tables.store, name) | state, indent=0).encode(),
        )
    if retain is not None:
        for name in SCHEMAS:
            result.removed_files[name] = expire(tables, name, retain)
    return result
