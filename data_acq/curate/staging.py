"""Step 1 of processing: stage the raw objects not staged yet (data_acq.curate.cursor finds them).

Staging flattens the objects and files each table under its unit (measurement date and bucket
of sites) and measurement hour. Then it leaves a pending marker per unit naming the hours it
touched, records the batch's raw keys in the journal, and only then advances the cursor: a crash
in between stages the objects again (the duplicates go like redeliveries), never forgets a unit.

Everything derived is filed by bucket, so the bucket count is part of the stored data
(`state/layout.json`): staging with another count is refused until the data is rebuilt.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial

import polars as pl

from data_acq import layout
from data_acq.acquire.raw import BATCH_MESSAGES, read_raw
from data_acq.curate.cursor import Cursor, StateError, journal_keys, write_journal
from data_acq.curate.flatten import iter_flatten, iter_flatten_parallel
from data_acq.curate.parquet import to_parquet
from data_acq.messages import Message
from data_acq.progress import Progress
from data_acq.sites import bucket_of
from data_acq.storage import ObjectStore

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = 1
# raw objects one staging takes on (a drain object holds up to 5,000 messages): a backlog is
# staged in runs of bounded length, each moving the cursor, rather than in one endless run
MAX_OBJECTS = 1_000
REBUILD = "docs/deploy.md#change-buckets"


def recorded_buckets(store: ObjectStore) -> int | None:
    """The bucket count the store's derived data is filed by (None before the first staging)."""
    try:
        text = store.get(layout.LAYOUT)
    except FileNotFoundError:
        return None
    try:
        return int(json.loads(text)["buckets"])
    except (ValueError, KeyError, TypeError):
        raise StateError(
            f'{store.url(layout.LAYOUT)} is unreadable: write {{"buckets": N}} into it with '
            f"the DATA_ACQ_BUCKETS the data was processed with, or rebuild ({REBUILD})"
        ) from None


def check_buckets(store: ObjectStore, buckets: int) -> None:
    """Refuse another bucket count than the one the store's data is filed by: sites would move
    to other buckets and every daily aggregate would count them twice. The first staging
    records it."""
    recorded = recorded_buckets(store)
    if recorded is None:
        store.put(layout.LAYOUT, json.dumps({"buckets": buckets}).encode())
    elif recorded != buckets:
        raise StateError(
            f"{store.url()} holds data processed with DATA_ACQ_BUCKETS={recorded}, not {buckets}: "
            f"set it back, or rebuild the derived data for the new count ({REBUILD})"
        )


@dataclass
class StageResult:
    batch: str
    raw_objects: int = 0
    messages: int = 0
    accepted: int = 0
    rejects: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    units: dict[tuple[date, int], set[int]] = field(default_factory=dict)  # -> hours touched

    def merged(self, other: StageResult) -> StageResult:
        """Both stagings' figures together (a backlog staged in several batches)."""
        units = {u: set(h) for u, h in self.units.items()}
        for unit, hours in other.units.items():
            units.setdefault(unit, set()).update(hours)
        rows = {t: self.rows.get(t, 0) + other.rows.get(t, 0) for t in {*self.rows, *other.rows}}
        return StageResult(
            self.batch,
            self.raw_objects + other.raw_objects,
            self.messages + other.messages,
            self.accepted + other.accepted,
            self.rejects + other.rejects,
            rows,
            units,
        )


def _buckets_of(sites: pl.Series, buckets: int) -> pl.Series:
    mapping = {site: bucket_of(site, buckets) for site in sites.unique()}
    return sites.replace_strict(mapping, return_dtype=pl.UInt16, default=0)


# Messages flattened and filed at once: memory follows it (staging 120,000 messages of 3,000
# sites peaked at 2.3 GB in chunks of 50,000, 1.2 GB in chunks of 20,000), speed hardly does.
CHUNK_MESSAGES = 20_000
OBJECTS_PER_WORKER_CHUNK = CHUNK_MESSAGES // BATCH_MESSAGES  # raw objects a worker takes at once


def _read_raw_opened(opener: Callable[[], ObjectStore], keys: list[str]) -> Iterator[Message]:
    return read_raw(opener(), keys)


def stage(
    store: ObjectStore,
    keys: list[str],
    buckets: int = DEFAULT_BUCKETS,
    chunk_size: int = CHUNK_MESSAGES,
    progress: Progress | None = None,
    workers: int = 1,
    opener: Callable[[], ObjectStore] | None = None,
) -> StageResult:
    """Flatten `keys` into per-unit, per-hour staging files, mark the units pending, and move
    the cursor past the keys. With `workers` > 1, that many processes flatten at once (each
    reading its raw objects through its own store from `opener`): worth it for a backlog,
    not for a live tick, whose few objects take less than starting a process."""
    check_buckets(store, buckets)
    cursor = Cursor.load(store)
    result = StageResult(f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}")
    result.raw_objects = len(keys)
    opened = 0  # raw objects read so far, for progress

    def counted(chunk: list[str]) -> Iterator[str]:
        nonlocal opened
        for key in chunk:
            yield key
            opened += 1

    if workers > 1 and opener is not None:
        groups = [
            keys[i : i + OBJECTS_PER_WORKER_CHUNK]
            for i in range(0, len(keys), OBJECTS_PER_WORKER_CHUNK)
        ]
        sources = (partial(_read_raw_opened, opener, group) for group in groups)
        chunks = iter_flatten_parallel(sources, workers, pipeline=True)
        sizes = iter(len(group) for group in groups)
    else:
        chunks = iter_flatten(read_raw(store, counted(keys)), chunk_size, pipeline=True)
        sizes = None
    for number, tables in enumerate(chunks):
        result.messages += tables.messages
        result.accepted += tables.accepted
        result.rejects += tables.rejects.height
        by_table = {
            "readings": tables.readings,
            "device_status": tables.device_status,
            "pipeline_payloads": tables.pipeline_payloads,
            # a payload rejected whole has no measurement time: it goes by its receive time
            "rejects": tables.rejects.with_columns(
                pl.coalesce("time", "received_at").alias("_when")
            ),
        }
        for name, frame in by_table.items():
            when = pl.col("_when" if name == "rejects" else "time")
            frame = frame.with_columns(
                _date=when.dt.date(),
                _hour=when.dt.hour().fill_null(0),
                _bucket=_buckets_of(frame["site"], buckets),
            )
            parts = frame.partition_by("_date", "_bucket", "_hour", as_dict=True)
            for (day, bucket, hour), part in parts.items():
                key = layout.staging_key(name, day, bucket, hour, result.batch, number)
                store.put(
                    key, to_parquet(part.drop("_date", "_bucket", "_hour", "_when", strict=False))
                )
                result.rows[name] = result.rows.get(name, 0) + part.height
                if day:
                    result.units.setdefault((day, bucket), set()).add(hour)
        if sizes is not None:
            opened += next(sizes, 0)
        if progress:
            progress("raw objects staged", min(opened, len(keys)), len(keys), "objects")
    for (day, bucket), hours in sorted(result.units.items()):
        store.put(layout.pending_key(day, bucket, result.batch, hours), b"")
    write_journal(store, result.batch, keys)
    cursor.advanced(keys).save(store)  # last: until now, the keys still look new
    return result


def restage_damaged(store: ObjectStore, key: str, why: str) -> StageResult:
    """Stage again the raw objects of a damaged staging file's batch (the journal names them),
    then remove the file: its rows come back, the rest of the batch's rows twice (removed like
    redeliveries). Without a journal entry, one line names the file and the repair."""
    batch = layout.batch_of(key)
    keys = journal_keys(store, batch)
    if not keys:
        raise StateError(
            f"staging file {store.url(key)} is unreadable ({why}) and the journal does not say "
            "which raw objects it came from: delete it, then stage all of raw again (delete "
            f"{layout.CURSOR} and {layout.JOURNAL}; duplicates are removed) and process its date "
            "with `data-acq process --date`"
        )
    log.warning(
        "staging file %s is unreadable (%s): staging its %d raw objects again", key, why, len(keys)
    )
    result = stage(store, keys, recorded_buckets(store) or DEFAULT_BUCKETS)
    store.delete([key])
    return result
