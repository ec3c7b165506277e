"""Step 1 of processing: find the raw objects not staged yet, and stage them.

Discovery costs what is new. Raw keys sort by the time their first message arrived, so a
cursor (`state/cursor.json`) keeps the latest time staged and the keys staged within a look-back
window before it; the next listing starts at the window (S3's StartAfter), never at the
beginning of history, and reads no index. The window covers objects written a little after
their name's time (a batch is at most seconds old when written, a write retried for seconds
more; another drain's clock may be a little behind).

Staging flattens the objects and files each table under its unit (measurement date and bucket
of sites) and measurement hour. Then it leaves a pending marker per unit naming the hours it
touched, and only then advances the cursor: a crash in between stages the objects again (the
duplicates go like redeliveries), never forgets a unit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from itertools import islice

import polars as pl

from data_acq import layout
from data_acq.acquire.raw import BATCH_MESSAGES, key_time, read_raw
from data_acq.curate.flatten import iter_flatten, iter_flatten_parallel
from data_acq.curate.parquet import to_parquet
from data_acq.messages import Message
from data_acq.progress import Progress
from data_acq.sites import bucket_of
from data_acq.storage import ObjectStore

LOOKBACK = timedelta(minutes=15)
DEFAULT_BUCKETS = 32
# raw objects one staging takes on (a drain object holds up to 5,000 messages): a backlog is
# staged in runs of bounded length, each moving the cursor, rather than in one endless run
MAX_OBJECTS = 1_000


@dataclass
class Cursor:
    """The latest raw key time staged, and the keys staged within LOOKBACK of it."""

    watermark: datetime | None = None
    seen: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, store: ObjectStore) -> Cursor:
        try:
            state = json.loads(store.get(layout.CURSOR))
        except FileNotFoundError:
            return cls()
        return cls(datetime.fromisoformat(state["watermark"]), set(state["seen"]))

    def start_after(self) -> str:
        """The listing starts here: the first key name of the look-back window."""
        if self.watermark is None:
            return ""
        t = self.watermark - LOOKBACK
        return f"{layout.RAW}date={t:%Y-%m-%d}/hour={t:%H}/{t:%Y%m%dT%H%M%S%fZ}"

    def advanced(self, keys: list[str]) -> Cursor:
        times = [t for t in map(key_time, keys) if t is not None]
        if not times:
            return self
        watermark = max([*times, *([self.watermark] if self.watermark else [])])
        keep = watermark - LOOKBACK
        seen = {k for k in self.seen | set(keys) if (key_time(k) or watermark) >= keep}
        return Cursor(watermark, seen)

    def save(self, store: ObjectStore) -> None:
        if self.watermark is None:  # nothing staged yet
            return
        state = {"watermark": self.watermark.isoformat(), "seen": sorted(self.seen)}
        store.put(layout.CURSOR, json.dumps(state, indent=1).encode())


def new_raw_keys(
    store: ObjectStore, cursor: Cursor | None = None, limit: int | None = None
) -> list[str]:
    """Raw objects not staged yet, oldest first (at most `limit`), listing only from the
    look-back window on."""
    cursor = cursor or Cursor.load(store)
    new = (
        key
        for key in store.list_keys(layout.RAW, start_after=cursor.start_after())
        if key.endswith(".ndjson.gz") and key not in cursor.seen
    )
    return list(islice(new, limit))


@dataclass
class StageResult:
    batch: str
    raw_objects: int = 0
    messages: int = 0
    accepted: int = 0
    rejects: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    units: dict[tuple[date, int], set[int]] = field(default_factory=dict)  # -> hours touched

    @property
    def dates(self) -> set[date]:
        return {day for day, _ in self.units}

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
            "device_status": tables.status,
            "pipeline_payloads": tables.payloads,
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
    cursor.advanced(keys).save(store)  # last: until now, the keys still look new
    return result
