"""Processing: raw objects into curated tables by measurement date, resumable at any point.

Two steps, so that late data costs only the units it touches (a unit is a measurement date and
a bucket of sites, `data_acq.sites.bucket_of`):

1. `stage` flattens raw objects not processed yet into per-unit staging files, then leaves a
   pending marker for every unit it touched, then records the raw objects as processed (the
   index). A crash before the index means the objects are staged again; the duplicates that
   causes are removed in step 2 like any redelivery.
2. `build_date` rebuilds a date's units from their staging files: de-duplicated readings,
   device status, pipeline payloads and rejects, and the aggregates, as Parquet under
   `curated/`. Only when every unit is written are the date's pending markers removed, so a
   crash while building leaves them, and the next run builds the date again: a batch is done
   only when everything derived from it is written.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from data_acq import layout
from data_acq.acquire.raw import raw_keys, read_raw
from data_acq.curate.flatten import REJECT_KEY, TIME, iter_flatten
from data_acq.sites import bucket_of
from data_acq.storage import ObjectStore

log = logging.getLogger(__name__)

STAGED_TABLES = ("readings", "device_status", "pipeline_payloads", "rejects")

# Cumulative counters whose daily increase is energy (or run time); see energy_daily.
COUNTER_FIELDS = (
    "E",
    "E_exported",
    "E_imported",
    "E_charged",
    "E_discharged",
    "total_yield",
    "runtime",
)
READING_KEY = ("site", "time", "vid", "device", "field")
PAYLOAD_KEY = ("site", "time", "document")
GAP_MINUTES = 5  # a completeness gap is at least this long
BUCKETS = 32  # sites are spread over this many buckets per date
FUTURE_TOLERANCE = timedelta(minutes=5)  # logger clocks ahead of the receiver by more are wrong

Progress = Callable[[str], None]


@dataclass
class StageResult:
    batch: str
    raw_objects: int = 0
    messages: int = 0
    accepted: int = 0
    rejects: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    units: set[tuple[date, int]] = field(default_factory=set)

    @property
    def dates(self) -> set[date]:
        return {day for day, _ in self.units}


@dataclass
class DateResult:
    """What one date's rebuild wrote, and the figures its data-quality checks look at."""

    day: date
    rows: dict[str, int] = field(default_factory=dict)
    duplicates_removed: int = 0
    duplicates_left: int = 0  # counted in the files written, read back: must be 0
    sites: int = 0
    accepted_payloads: int = 0  # distinct payloads
    rejected_payloads: int = 0  # distinct payloads rejected whole
    completeness: dict[str | None, float] = field(default_factory=dict)  # site -> ratio
    ahead_of_receipt: int = 0  # readings stamped more than FUTURE_TOLERANCE after arrival
    max_lag_s: float | None = None  # longest delay from measurement to receipt
    last_payload: dict[str | None, datetime] = field(default_factory=dict)  # site -> latest
    sent_to_queue: int | None = None  # pipeline documents sent to SQS by this rebuild

    def silent_sites(
        self, now: datetime, allowed: timedelta = timedelta(hours=1)
    ) -> dict[str | None, float]:
        """Sites whose last payload of the day came more than `allowed` before the day ended
        (or before now, for today): minutes of silence per site."""
        day_end = datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC) + timedelta(
            days=1
        )
        horizon = min(now, day_end - timedelta(minutes=1))
        return {
            site: round((horizon - last).total_seconds() / 60)
            for site, last in self.last_payload.items()
            if horizon - last > allowed
        }

    @property
    def rejected_share(self) -> float:
        total = self.accepted_payloads + self.rejected_payloads
        return self.rejected_payloads / total if total else 0.0

    def add_rows(self, table: str, rows: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + rows


def to_parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    return buffer.getvalue()


def read_parquets(store: ObjectStore, prefix: str) -> list[pl.DataFrame]:
    return [
        pl.read_parquet(io.BytesIO(store.get(key)))
        for key in store.list_keys(prefix)
        if key.endswith(".parquet")
    ]


# --- step 1: stage ----------------------------------------------------------------------------


def _buckets_of(sites: pl.Series) -> pl.Series:
    mapping = {site: bucket_of(site, BUCKETS) for site in sites.unique()}
    return sites.replace_strict(mapping, return_dtype=pl.UInt8, default=0)


def processed_raw_keys(store: ObjectStore) -> set[str]:
    done: set[str] = set()
    for key in store.list_keys(layout.INDEX):
        done.update(json.loads(store.get(key))["raw_keys"])
    return done


def new_raw_keys(store: ObjectStore) -> list[str]:
    done = processed_raw_keys(store)
    return [key for key in raw_keys(store) if key not in done]


def stage(
    store: ObjectStore, keys: list[str], chunk_size: int = 50_000, progress: Progress | None = None
) -> StageResult:
    """Flatten `keys` into per-unit staging files, mark the units pending, index the keys."""
    result = StageResult(f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}")
    result.raw_objects = len(keys)
    for number, tables in enumerate(iter_flatten(read_raw(store, keys), chunk_size, pipeline=True)):
        result.messages += tables.messages
        result.accepted += tables.accepted
        result.rejects += tables.rejects.height
        by_table = {
            "readings": tables.readings,
            "device_status": tables.status,
            "pipeline_payloads": tables.payloads,
            # a payload rejected whole has no measurement time: it goes by its receive date
            "rejects": tables.rejects.with_columns(
                pl.coalesce("time", "received_at").alias("_when")
            ),
        }
        for name, frame in by_table.items():
            when = "_when" if name == "rejects" else "time"
            frame = frame.with_columns(
                pl.col(when).dt.date().alias("_date"), _buckets_of(frame["site"]).alias("_bucket")
            )
            for (day, bucket), part in frame.partition_by("_date", "_bucket", as_dict=True).items():
                key = layout.staging_key(name, day, bucket, result.batch, number)
                store.put(key, to_parquet(part.drop("_date", "_bucket", "_when", strict=False)))
                result.rows[name] = result.rows.get(name, 0) + part.height
                if day:
                    result.units.add((day, bucket))
        if progress:
            progress(f"staged {result.messages} messages from {len(keys)} raw objects")
    # markers before the index: a crash in between stages the objects again, never forgets
    for day, bucket in sorted(result.units):
        store.put(layout.pending_key(day, bucket, result.batch), b"")
    index = {
        "raw_keys": keys,
        "dates": sorted(d.isoformat() for d in result.dates),
        "messages": result.messages,
    }
    store.put(layout.index_key(result.batch), json.dumps(index, indent=1).encode())
    return result


def pending_dates(store: ObjectStore) -> dict[date, list[str]]:
    """Dates with units staged but not yet built, and their pending markers."""
    pending: dict[date, list[str]] = {}
    for key in store.list_keys(layout.PENDING):
        pending.setdefault(layout.parse_unit(key)[0], []).append(key)
    return pending


# --- step 2: build a date ---------------------------------------------------------------------


def _staged(store: ObjectStore, table: str, day: date, bucket: int) -> pl.DataFrame | None:
    frames = read_parquets(store, layout.staging_prefix(table, day, bucket))
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def staged_buckets(store: ObjectStore, day: date) -> list[int]:
    """The buckets any staged table has for the date."""
    return sorted(
        {
            layout.parse_unit(key)[1]
            for table in STAGED_TABLES
            for key in store.list_keys(layout.staging_prefix(table, day))
        }
    )


def build_date(store: ObjectStore, day: date, progress: Progress | None = None) -> DateResult:
    """Rebuild every curated table of one date from its staging files, one unit at a time
    (memory is bounded by a bucket), then clear the date's pending markers."""
    markers = pending_dates(store).get(day, [])
    result = DateResult(day)
    buckets = staged_buckets(store, day)
    for number, bucket in enumerate(buckets, start=1):
        build_unit(store, day, bucket, result)
        if progress:
            progress(f"built {day} bucket {bucket:02d} ({number} of {len(buckets)})")
    store.delete(markers)  # only now is every batch that touched the date done
    return result


def build_unit(store: ObjectStore, day: date, bucket: int, result: DateResult) -> None:
    """Rebuild one unit's curated files and add its figures to `result`."""
    readings = _staged(store, "readings", day, bucket)
    if readings is not None:
        _build_readings(store, day, bucket, readings, result)
    status = _staged(store, "device_status", day, bucket)
    if status is not None:
        status = status.unique(maintain_order=True).sort("site", "time", "vid", "device")
        _put(store, "device_status", day, bucket, status, result)
    payloads = _staged(store, "pipeline_payloads", day, bucket)
    if payloads is not None:
        payloads = first_received(payloads, PAYLOAD_KEY).sort("site", "time")
        _put(store, "pipeline_payloads", day, bucket, payloads, result)
        result.accepted_payloads += payloads.height
        completeness = completeness_daily(payloads, day)
        _put(store, "completeness_daily", day, bucket, completeness, result)
        result.completeness |= dict(completeness.select("site", "ratio").iter_rows())
    rejects = _staged(store, "rejects", day, bucket)
    if rejects is not None:
        rejects = first_received(rejects, REJECT_KEY).sort("site", "time", nulls_last=True)
        _put(store, "rejects", day, bucket, rejects, result)
        result.rejected_payloads += rejects.filter(pl.col("time").is_null()).height


def first_received(frame: pl.DataFrame, key: Iterable[str]) -> pl.DataFrame:
    """One row per key: the first delivery (redeliveries and re-stagings are the same data)."""
    return frame.sort("received_at", nulls_last=True).unique(
        subset=list(key), keep="first", maintain_order=True
    )


def _put(
    store: ObjectStore, table: str, day: date, bucket: int, frame: pl.DataFrame, result: DateResult
) -> None:
    """One file per unit; the date and bucket are in the folder names (hive style)."""
    frame = frame.drop("date", strict=False)
    store.put(layout.curated_key(table, day, bucket), to_parquet(frame))
    result.add_rows(table, frame.height)


def _build_readings(
    store: ObjectStore, day: date, bucket: int, readings: pl.DataFrame, result: DateResult
) -> None:
    before = readings.height
    readings = first_received(readings, READING_KEY).sort(*READING_KEY)
    result.duplicates_removed += before - readings.height
    result.sites += readings["site"].n_unique()
    ahead, lag = readings.select(
        ahead=(pl.col("time") > pl.col("received_at") + FUTURE_TOLERANCE).sum(),
        lag=(pl.col("received_at") - pl.col("time")).max().dt.total_seconds(),
    ).row(0)
    result.last_payload |= dict(readings.group_by("site").agg(pl.col("time").max()).iter_rows())
    result.ahead_of_receipt += ahead
    if lag is not None and (result.max_lag_s is None or lag > result.max_lag_s):
        result.max_lag_s = lag
    _put(store, "readings", day, bucket, readings, result)
    result.duplicates_left += duplicate_readings(store, day, bucket)
    _put(store, "readings_15min", day, bucket, readings_15min(readings), result)
    _put(store, "energy_daily", day, bucket, energy_daily(readings, day), result)


def duplicate_readings(store: ObjectStore, day: date, bucket: int) -> int:
    """Readings that share a key in what the unit's folder holds now, read back from storage:
    a broken de-duplication, or a stray file beside the unit's own, shows up here."""
    prefix = layout.curated_key("readings", day, bucket).rsplit("/", 1)[0] + "/"
    keys = [frame.select(READING_KEY) for frame in read_parquets(store, prefix)]
    if not keys:
        return 0
    written = pl.concat(keys)
    return written.height - written.n_unique()


# --- aggregates -------------------------------------------------------------------------------


def readings_15min(readings: pl.DataFrame) -> pl.DataFrame:
    """Per site, vid, device, field and quarter hour: mean, min, max, last, count.

    Groups are contiguous and kept in order: Polars then sums each group in one fixed order, so
    the same readings give the same means to the last bit (a rebuild must equal the build).
    """
    return (
        readings.lazy()
        .filter(pl.col("value").is_not_null())
        .sort("site", "vid", "device", "field", "time", nulls_last=True)
        .group_by(
            "site",
            "vid",
            "device",
            "field",
            pl.col("time").dt.truncate("15m").alias("period"),
            maintain_order=True,
        )
        .agg(
            mean=pl.col("value").mean(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
            last=pl.col("value").last(),
            count=pl.len(),
        )
        .collect()
    )


def energy_daily(readings: pl.DataFrame, day: date) -> pl.DataFrame:
    """The day's increase of each cumulative counter (`E`, `total_yield`, `runtime`, ...).

    Summed over consecutive readings; a step down is a reset (device replaced or counter
    cleared) and counts as zero, so the result is never negative. The interval that crosses
    midnight is counted on neither day. Summed in a fixed order, like `readings_15min`.
    """
    return (
        readings.lazy()
        .filter(pl.col("field").is_in(COUNTER_FIELDS) & pl.col("value").is_not_null())
        .sort("site", "vid", "field", "device", "time", nulls_last=True)
        .with_columns(step=pl.col("value").diff().over("site", "vid", "device", "field"))
        .group_by("site", "vid", "field", maintain_order=True)
        .agg(
            energy=pl.col("step").clip(lower_bound=0).sum(),
            resets=(pl.col("step") < 0).sum(),
            readings=pl.len(),
        )
        .with_columns(date=pl.lit(day))
        .select("site", "date", "vid", "field", "energy", "resets", "readings")
        .collect()
    )


def completeness_daily(
    payloads: pl.DataFrame, day: date, now: datetime | None = None
) -> pl.DataFrame:
    """Per site: payloads expected at one a minute, received, ratio, and the gaps."""
    now = now or datetime.now(UTC)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = min(start + timedelta(days=1), max(now, start))
    expected = int((end - start).total_seconds() // 60)
    minutes = payloads.lazy().select("site", pl.col("time").dt.truncate("1m")).unique()
    received = minutes.group_by("site").agg(received=pl.len())
    # the day's edges as sentinels, so gaps at the start and the end of the day count too
    edges = received.select("site").join(
        pl.LazyFrame({"time": [start - timedelta(minutes=1), end]}, schema={"time": TIME}),
        how="cross",
    )
    gaps = (
        pl.concat([minutes, edges])
        .sort("site", "time")
        .with_columns(previous=pl.col("time").shift(1).over("site"))
        .with_columns(missing=(pl.col("time") - pl.col("previous")).dt.total_minutes() - 1)
        .filter(pl.col("missing") >= GAP_MINUTES)
        .group_by("site")
        .agg(gaps=pl.struct(start=pl.col("previous") + timedelta(minutes=1), minutes="missing"))
    )
    return (
        received.join(gaps, on="site", how="left", nulls_equal=True)
        .with_columns(
            date=pl.lit(day),
            expected=pl.lit(expected, dtype=pl.Int64),
            ratio=(pl.col("received") / max(expected, 1)).round(4),
            largest_gap_minutes=pl.col("gaps")
            .list.eval(pl.element().struct.field("minutes"))
            .list.max()
            .fill_null(0),
        )
        .select("site", "date", "expected", "received", "ratio", "largest_gap_minutes", "gaps")
        .sort("site")
        .collect()
    )


# --- everything -------------------------------------------------------------------------------


@dataclass
class ProcessResult:
    staged: StageResult | None
    dates: list[DateResult]


def process(
    store: ObjectStore,
    dates: Iterable[date] | None = None,
    progress: Progress | None = None,
    chunk_size: int = 50_000,
) -> ProcessResult:
    """Stage whatever raw holds that is new, then rebuild every date with pending units (those
    just staged, and those a crashed run left) and `dates`."""
    store.check()
    keys = new_raw_keys(store)
    staged = stage(store, keys, chunk_size, progress) if keys else None
    todo = sorted(set(dates or ()) | set(pending_dates(store)))
    built = []
    for number, day in enumerate(todo, start=1):
        built.append(build_date(store, day, progress))
        if progress:
            progress(f"built {day} ({number} of {len(todo)} dates)")
    return ProcessResult(staged, built)
