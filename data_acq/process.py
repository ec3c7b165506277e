"""Processing: raw objects into curated tables by measurement date, exactly once.

Two steps, so that late data costs only the dates it touches:

1. `stage` flattens raw objects not processed yet and appends what they hold to per-date staging
   files (`staging/<table>/date=D/<batch>-<chunk>.parquet`), then records the objects in an
   index (`staging/index/<batch>.json`). A crash before the index is written means the objects
   are staged again; the duplicates that causes are removed in step 2 like any redelivery.
2. `build_date` rebuilds one measurement date from its staging files: de-duplicated readings,
   device status, pipeline payloads and rejects, and the day's aggregates, written as Parquet
   (hive folders by date and site) or NDJSON under `curated/`.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from data_acq.flatten import TIME, iter_flatten
from data_acq.raw import raw_keys, read_raw
from data_acq.storage import ObjectStore

log = logging.getLogger(__name__)

STAGING = "staging/"
CURATED = "curated/"
INDEX = f"{STAGING}index/"
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
GAP_MINUTES = 5  # a completeness gap is at least this long
BUCKETS = 32  # sites are spread over this many buckets per date
FUTURE_TOLERANCE = timedelta(minutes=5)  # logger clocks ahead of the receiver by more are wrong


@dataclass
class StageResult:
    batch: str
    raw_objects: int = 0
    messages: int = 0
    accepted: int = 0
    rejects: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dates: set[date] = field(default_factory=set)


@dataclass
class DateResult:
    """What one date's rebuild wrote, and the figures its data-quality checks look at."""

    day: date
    rows: dict[str, int] = field(default_factory=dict)
    duplicates_removed: int = 0
    duplicates_left: int = 0  # must be 0
    sites: int = 0
    rejected_payloads: int = 0
    completeness: dict[str, float] = field(default_factory=dict)  # site -> ratio
    ahead_of_receipt: int = 0  # readings stamped more than FUTURE_TOLERANCE after arrival
    max_lag_s: float | None = None  # longest delay from measurement to receipt
    last_payload: dict[str, datetime] = field(default_factory=dict)  # site -> latest time
    sent_to_queue: int | None = None  # pipeline documents sent to SQS by this rebuild

    def silent_sites(
        self, now: datetime, allowed: timedelta = timedelta(hours=1)
    ) -> dict[str, float]:
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
        total = self.rows.get("pipeline_payloads", 0) + self.rejected_payloads
        return self.rejected_payloads / total if total else 0.0


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


def _bucket_of(sites: pl.Series) -> pl.Series:
    """A stable bucket per site (CRC-32, not Polars' seeded hash): a date is rebuilt bucket by
    bucket, so memory is bounded by a bucket, and one site is always in the same bucket."""
    mapping = {site: zlib.crc32((site or "").encode()) % BUCKETS for site in sites.unique()}
    return sites.replace_strict(mapping, return_dtype=pl.UInt8, default=0)


def processed_raw_keys(store: ObjectStore) -> set[str]:
    done: set[str] = set()
    for key in store.list_keys(INDEX):
        done.update(json.loads(store.get(key))["raw_keys"])
    return done


def new_raw_keys(store: ObjectStore) -> list[str]:
    done = processed_raw_keys(store)
    return [key for key in raw_keys(store) if key not in done]


def stage(
    store: ObjectStore,
    keys: list[str],
    chunk_size: int = 50_000,
    progress: Callable[[str], None] | None = None,
) -> StageResult:
    """Flatten `keys` into per-date staging files and index them as processed."""
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
                pl.col(when).dt.date().alias("_date"), _bucket_of(frame["site"]).alias("_bucket")
            )
            for (day, bucket), part in frame.partition_by("_date", "_bucket", as_dict=True).items():
                day_text = day.isoformat() if day else "unknown"
                key = (
                    f"{STAGING}{name}/date={day_text}/bucket={bucket:02d}/"
                    f"{result.batch}-{number:04d}.parquet"
                )
                store.put(key, to_parquet(part.drop("_date", "_bucket", "_when", strict=False)))
                result.rows[name] = result.rows.get(name, 0) + part.height
                if day:
                    result.dates.add(day)
        if progress:
            progress(f"staged {result.messages} messages from {len(keys)} raw objects")
    index = {
        "raw_keys": keys,
        "dates": sorted(d.isoformat() for d in result.dates),
        "messages": result.messages,
    }
    store.put(f"{INDEX}{result.batch}.json", json.dumps(index, indent=1).encode())
    return result


# --- step 2: build a date ---------------------------------------------------------------------


def _staged(store: ObjectStore, table: str, day: date, bucket: str) -> pl.DataFrame | None:
    frames = read_parquets(store, f"{STAGING}{table}/date={day.isoformat()}/{bucket}/")
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def _buckets(store: ObjectStore, day: date) -> list[str]:
    """The `bucket=NN` folders any staged table has for the date."""
    return sorted(
        {
            key.split("/")[3]
            for table in STAGED_TABLES
            for key in store.list_keys(f"{STAGING}{table}/date={day.isoformat()}/")
        }
    )


def _write_by_site(store: ObjectStore, table: str, day: date, frame: pl.DataFrame) -> None:
    for (site,), part in frame.partition_by("site", as_dict=True).items():
        key = f"{CURATED}{table}/date={day.isoformat()}/site={site or 'unknown'}/part-0.parquet"
        store.put(key, to_parquet(part.drop("site")))


def build_date(store: ObjectStore, day: date) -> DateResult:
    """Rebuild every curated table of one measurement date from its staging files, one bucket
    of sites at a time."""
    result = DateResult(day)
    per_date: dict[str, list[pl.DataFrame]] = {
        "energy_daily": [],
        "completeness_daily": [],
        "rejects": [],
    }
    for bucket in _buckets(store, day):
        readings = _staged(store, "readings", day, bucket)
        if readings is not None:
            _build_readings(store, day, bucket, readings, result, per_date)
        status = _staged(store, "device_status", day, bucket)
        if status is not None:
            status = status.unique(maintain_order=True).sort("site", "time", "vid", "device")
            _write_by_site(store, "device_status", day, status)
            _add(result, "device_status", status.height)
        payloads = _staged(store, "pipeline_payloads", day, bucket)
        if payloads is not None:
            payloads = (
                payloads.sort("received_at", nulls_last=True)
                .unique(subset=["site", "time", "document"], keep="first", maintain_order=True)
                .sort("site", "time")
            )
            for (site,), part in payloads.partition_by("site", as_dict=True).items():
                key = (
                    f"{CURATED}pipeline_payloads/date={day.isoformat()}/"
                    f"site={site or 'unknown'}/payloads.ndjson"
                )
                store.put(key, ("\n".join(part["document"]) + "\n").encode())
            _add(result, "pipeline_payloads", payloads.height)
            per_date["completeness_daily"].append(completeness_daily(payloads, day))
        rejects = _staged(store, "rejects", day, bucket)
        if rejects is not None:
            per_date["rejects"].append(rejects.unique(maintain_order=True))
    for table, frames in per_date.items():
        if frames:
            frame = (
                pl.concat(frames).sort("site", nulls_last=True)
                if table != "rejects"
                else pl.concat(frames)
            )
            _put_dated(store, table, day, frame)
            result.rows[table] = frame.height
    if per_date["completeness_daily"]:
        completeness = pl.concat(per_date["completeness_daily"])
        result.completeness = dict(completeness.select("site", "ratio").iter_rows())
    if per_date["rejects"]:
        rejects = pl.concat(per_date["rejects"])
        result.rejected_payloads = rejects.filter(pl.col("time").is_null()).height
    return result


def _add(result: DateResult, table: str, rows: int) -> None:
    result.rows[table] = result.rows.get(table, 0) + rows


def _build_readings(
    store: ObjectStore,
    day: date,
    bucket: str,
    readings: pl.DataFrame,
    result: DateResult,
    per_date: dict[str, list[pl.DataFrame]],
) -> None:
    before = readings.height
    readings = (
        readings.sort("received_at", nulls_last=True)
        .unique(subset=list(READING_KEY), keep="first", maintain_order=True)
        .sort("site", "time", "vid", "device", "field")
    )
    result.duplicates_removed += before - readings.height
    result.duplicates_left += readings.height - readings.select(READING_KEY).n_unique()
    result.sites += readings["site"].n_unique()
    ahead, lag = readings.select(
        ahead=(pl.col("time") > pl.col("received_at") + FUTURE_TOLERANCE).sum(),
        lag=(pl.col("received_at") - pl.col("time")).max().dt.total_seconds(),
    ).row(0)
    result.last_payload |= dict(readings.group_by("site").agg(pl.col("time").max()).iter_rows())
    result.ahead_of_receipt += ahead
    if lag is not None and (result.max_lag_s is None or lag > result.max_lag_s):
        result.max_lag_s = lag
    _write_by_site(store, "readings", day, readings)
    _add(result, "readings", readings.height)
    quarter_hours = readings_15min(readings)
    number = bucket.removeprefix("bucket=")
    key = f"{CURATED}readings_15min/date={day.isoformat()}/part-{number}.parquet"
    store.put(key, to_parquet(quarter_hours))
    _add(result, "readings_15min", quarter_hours.height)
    per_date["energy_daily"].append(energy_daily(readings, day))


def _put_dated(store: ObjectStore, table: str, day: date, frame: pl.DataFrame) -> None:
    """One file per date; the date is in the folder name (hive style), not repeated inside."""
    key = f"{CURATED}{table}/date={day.isoformat()}/part-0.parquet"
    store.put(key, to_parquet(frame.drop("date", strict=False)))


# --- aggregates -------------------------------------------------------------------------------


def readings_15min(readings: pl.DataFrame) -> pl.DataFrame:
    """Per site, vid, device, field and quarter hour: mean, min, max, last, count."""
    return (
        readings.lazy()
        .filter(pl.col("value").is_not_null())
        .sort("time")
        .group_by(
            "site", "vid", "device", "field", pl.col("time").dt.truncate("15m").alias("period")
        )
        .agg(
            mean=pl.col("value").mean(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
            last=pl.col("value").last(),
            count=pl.len(),
        )
        .sort("site", "vid", "device", "field", "period")
        .collect()
    )


def energy_daily(readings: pl.DataFrame, day: date) -> pl.DataFrame:
    """The day's increase of each cumulative counter (`E`, `total_yield`, `runtime`, ...).

    Summed over consecutive readings; a step down is a reset (device replaced or counter
    cleared) and counts as zero, so the result is never negative. The interval that crosses
    midnight is counted on neither day.
    """
    return (
        readings.lazy()
        .filter(pl.col("field").is_in(COUNTER_FIELDS) & pl.col("value").is_not_null())
        .sort("time")
        .with_columns(step=pl.col("value").diff().over("site", "vid", "device", "field"))
        .group_by("site", "vid", "field")
        .agg(
            energy=pl.col("step").clip(lower_bound=0).sum(),
            resets=(pl.col("step") < 0).sum(),
            readings=pl.len(),
        )
        .with_columns(date=pl.lit(day))
        .select("site", "date", "vid", "field", "energy", "resets", "readings")
        .sort("site", "vid", "field")
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
        received.join(gaps, on="site", how="left")
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
    progress: Callable[[str], None] | None = None,
) -> ProcessResult:
    """Stage whatever raw holds that is new, then rebuild the dates it touched (or `dates`)."""
    keys = new_raw_keys(store)
    staged = stage(store, keys, progress=progress) if keys else None
    todo = set(dates or ()) | (staged.dates if staged else set())
    built = []
    for number, day in enumerate(sorted(todo), start=1):
        built.append(build_date(store, day))
        if progress:
            progress(f"built {day} ({number} of {len(todo)} dates)")
    return ProcessResult(staged, built)
