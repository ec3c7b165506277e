"""Step 2 of processing: refresh a unit -- a measurement date and a bucket of sites.

Only the hours that new data touched are rebuilt (the pending markers name them), each from its
own staging files and each replacing its rows in the curated Delta tables in one commit
(`data_acq.curate.tables`), so a live tick late in the day costs what an early one does, and
memory is bounded by one unit-hour. Each rebuilt hour leaves small partials (energy per counter series,
completeness and check figures per site); the daily tables and the checks are made from the
partials of the whole day. Only when everything is written are the unit's markers removed: a
crash anywhere leaves them, and the unit is refreshed again, to the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from data_acq import layout
from data_acq.curate import aggregates
from data_acq.curate.flatten import REJECT_KEY
from data_acq.curate.parquet import DamagedObject, read_parquet, read_parquets, to_parquet
from data_acq.curate.staging import restage_damaged
from data_acq.curate.tables import CuratedTables
from data_acq.progress import Progress
from data_acq.storage import ObjectStore

READING_KEY = ("site", "time", "vid", "device", "field")
PAYLOAD_KEY = ("site", "time", "document")
STAGED_TABLES = ("readings", "device_status", "pipeline_payloads", "rejects")
FUTURE_TOLERANCE = timedelta(minutes=5)  # logger clocks ahead of the receiver by more are wrong
PREVIEW_ROWS = 3  # a preview is kept in Dagster's database with every report
HOUR_STATS = pl.Schema(
    {
        "hour": pl.Int64,
        "staged_readings": pl.Int64,
        "readings": pl.Int64,
        # readings dropped because an earlier-received one had the same key but another value
        "conflicts": pl.Int64,
        "duplicates_left": pl.Int64,  # counted in the table written, read back from storage
        "accepted_payloads": pl.Int64,
        "rejected_payloads": pl.Int64,  # rejected whole
        "ahead_of_receipt": pl.Int64,
        "max_lag_s": pl.Float64,
        # rows each hourly table holds for the hour
        **{f"rows_{table}": pl.Int64 for table in layout.HOURLY_TABLES},
    }
)

Unit = tuple[date, int]


@dataclass
class UnitResult:
    """What a refresh rebuilt, and the unit's whole day so far for its data-quality checks."""

    day: date
    bucket: int
    hours: list[int] = field(default_factory=list)  # rebuilt by this refresh
    rows: dict[str, int] = field(default_factory=dict)  # written by this refresh
    readings: int = 0
    duplicates_removed: int = 0  # redeliveries: the same reading received again
    conflicts: int = 0  # same key, another value: the first received is kept, these dropped
    duplicates_left: int = 0  # in the unit's rebuilt hours, read back: must be 0
    accepted_payloads: int = 0
    rejected_payloads: int = 0
    ahead_of_receipt: int = 0  # readings stamped more than FUTURE_TOLERANCE after arrival
    max_lag_s: float | None = None  # longest delay from measurement to receipt
    # site -> share of the minutes the unit's data covers (aggregates.covered_ratios)
    completeness: dict[str | None, float] = field(default_factory=dict)
    last_payload: dict[str | None, datetime] = field(default_factory=dict)  # site -> latest
    sent_to_queue: int | None = None  # documents the feed sent after this refresh
    table_rows: dict[str, int] = field(default_factory=dict)  # each table's rows, the whole day
    previews: dict[str, pl.DataFrame] = field(default_factory=dict)  # a few rows just written

    @property
    def unit(self) -> str:
        """The unit as logs name it (Dagster's partition key is defs.partitions.unit_key)."""
        return f"{self.day.isoformat()} bucket {self.bucket:02d}"

    @property
    def sites(self) -> int:
        return len(self.last_payload)

    @property
    def rejected_share(self) -> float:
        total = self.accepted_payloads + self.rejected_payloads
        return self.rejected_payloads / total if total else 0.0

    def silent_sites(
        self, now: datetime, allowed: timedelta = timedelta(hours=1)
    ) -> dict[str | None, float]:
        """Sites whose last payload of the day came more than `allowed` before the unit's
        newest payload (any site's; and before the day's end, or now): minutes of silence per
        site. Judged against the data, so a backlog still arriving has no silent sites; a fleet
        with no data at all is the raw data's freshness alarm."""
        if not self.last_payload:
            return {}
        day_end = datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC) + timedelta(
            days=1
        )
        horizon = min(now, day_end - timedelta(minutes=1), max(self.last_payload.values()))
        return {
            site: round((horizon - last).total_seconds() / 60)
            for site, last in self.last_payload.items()
            if horizon - last > allowed
        }


def pending_units(store: ObjectStore) -> dict[Unit, list[str]]:
    """Units with staged hours not yet built, and their pending markers."""
    pending: dict[Unit, list[str]] = {}
    for key in store.list_keys(layout.PENDING):
        pending.setdefault(layout.parse_unit(key), []).append(key)
    return pending


def staged_units(store: ObjectStore, day: date) -> list[int]:
    """The buckets that have anything staged for the date (for a rebuild of the whole date)."""
    return sorted(
        {
            layout.parse_unit(key)[1]
            for table in STAGED_TABLES
            for key in store.list_keys(f"{layout.STAGING}{table}/date={day.isoformat()}/")
        }
    )


def _staged_hours(store: ObjectStore, day: date, bucket: int) -> set[int]:
    return {
        layout.staged_hour(key)
        for table in STAGED_TABLES
        for key in store.list_keys(layout.staging_prefix(table, day, bucket))
    }


def refresh_unit(
    store: ObjectStore,
    day: date,
    bucket: int,
    full: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
    before_clearing: Callable[[UnitResult], None] | None = None,
    tables: CuratedTables | None = None,
) -> UnitResult:
    """Rebuild the unit's pending hours (every staged hour when `full`, or when nothing is
    pending: a rebuild asked for by hand), its daily tables, and the next day's energy, whose
    first interval starts in this day.

    `before_clearing` runs once everything is written and before the pending markers go (the
    SQS feed): if it fails, the unit stays pending and its next refresh does it again. A
    caller refreshing many units passes its open `tables`."""
    tables = tables or CuratedTables(store)
    markers = list(store.list_keys(layout.pending_prefix(day, bucket)))
    hours: set[int] = set().union(*(layout.pending_hours(m) for m in markers))
    if full or not hours:
        hours |= _staged_hours(store, day, bucket)
    result = UnitResult(day, bucket, sorted(hours))
    built = []
    for number, hour in enumerate(result.hours, start=1):
        built.append(_build_hour(store, tables, day, bucket, hour, result))
        if progress:
            progress(f"{day} bucket {bucket:02d}: hours rebuilt", number, len(hours), "hours")
    stats = _merge_partials(
        store, "stats", day, bucket, result.hours, [s for s, _, _ in built], HOUR_STATS
    )
    energy = _merge_partials(
        store,
        "energy",
        day,
        bucket,
        result.hours,
        [e for _, e, _ in built],
        aggregates.ENERGY_PARTIAL,
    )
    completeness = _merge_partials(
        store,
        "completeness",
        day,
        bucket,
        result.hours,
        [c for _, _, c in built],
        aggregates.COMPLETENESS_PARTIAL,
    )
    _write_daily(store, tables, day, bucket, energy, completeness, result, now)
    _refresh_next_days_energy(store, tables, day, bucket, energy)
    _sum_stats(stats, result)
    if before_clearing is not None:
        before_clearing(result)
    store.delete(markers)  # only now is every batch that touched the unit done
    return result


def _staged(
    store: ObjectStore, table: str, day: date, bucket: int, hour: int
) -> pl.DataFrame | None:
    """The hour's staged rows; a damaged staging file is staged again from its raw objects."""
    prefix = layout.staging_prefix(table, day, bucket, hour)
    repaired: set[str] = set()
    while True:
        try:
            frames = read_parquets(store, prefix)
            break
        except DamagedObject as exc:
            if exc.key in repaired:  # staged again and still unreadable: give up, say which
                raise
            restage_damaged(store, exc.key, exc.why)
            repaired.add(exc.key)
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def first_received(frame: pl.DataFrame, key: Iterable[str]) -> pl.DataFrame:
    """One row per key: the first delivery (redeliveries and re-stagings are the same data)."""
    return frame.sort("received_at", nulls_last=True).unique(
        subset=list(key), keep="first", maintain_order=True
    )


def _readings_once(staged: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """One reading per key, the first received, in key order, and how many conflicting versions
    were dropped.

    A redelivery (or a re-staging) repeats a reading's value; a logger whose clock jumped back
    sends another value under a key it used before. Both lose to the first received reading,
    but only the second is counted as a conflict (the `conflicting_readings` check). One sort
    serves both the choice and the file's order; only the dropped rows (few) are compared with
    the kept ones."""
    ordered = staged.sort(
        *READING_KEY, "received_at", nulls_last=True, maintain_order=True
    ).with_row_index("_row")
    once = ordered.unique(subset=list(READING_KEY), keep="first", maintain_order=True)
    if once.height == ordered.height:
        return once.drop("_row"), 0
    dropped = ordered.join(once.select("_row"), on="_row", how="anti").unique(
        subset=[*READING_KEY, "value", "value_text"]
    )
    kept = once.select(*READING_KEY, kept_value="value", kept_text="value_text")
    conflicts = (
        dropped.join(kept, on=list(READING_KEY), nulls_equal=True)
        .filter(
            ~(
                pl.col("value").eq_missing(pl.col("kept_value"))
                & pl.col("value_text").eq_missing(pl.col("kept_text"))
            )
        )
        .height
    )
    return once.drop("_row"), conflicts


def _put(
    tables: CuratedTables,
    table: str,
    day: date,
    bucket: int,
    hour: int | None,
    frame: pl.DataFrame,
    result: UnitResult,
    stats: dict[str, object] | None = None,
) -> None:
    """Replace the unit's rows of the hour (or of the day, for daily tables); `stats` learns
    how many there are now."""
    tables.replace(table, frame, day, bucket, None if hour is None else [hour])
    result.rows[table] = result.rows.get(table, 0) + frame.height
    result.previews[table] = preview_rows(frame)
    if stats is not None:
        stats[f"rows_{table}"] = frame.height


def preview_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The first rows as a frame of their own: a slice (`head`) keeps the whole frame it was
    cut from alive as long as it lives, and a run keeps every unit's result."""
    return pl.DataFrame(frame.head(PREVIEW_ROWS).to_dict(as_series=False), schema=frame.schema)


def _build_hour(
    store: ObjectStore, tables: CuratedTables, day: date, bucket: int, hour: int, result: UnitResult
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Rebuild one hour's curated files; return its stats, energy and completeness partials."""
    stats = dict.fromkeys(HOUR_STATS.names(), 0) | {"hour": hour, "max_lag_s": None}
    energy = aggregates.ENERGY_PARTIAL.to_frame()
    completeness = aggregates.COMPLETENESS_PARTIAL.to_frame()
    readings = _staged(store, "readings", day, bucket, hour)
    if readings is not None:
        stats["staged_readings"] = readings.height
        readings, stats["conflicts"] = _readings_once(readings)
        stats["readings"] = readings.height
        stats["ahead_of_receipt"], stats["max_lag_s"] = readings.select(
            (pl.col("time") > pl.col("received_at") + FUTURE_TOLERANCE).sum(),
            (pl.col("received_at") - pl.col("time")).max().dt.total_seconds(fractional=True),
        ).row(0)
        _put(tables, "readings", day, bucket, hour, readings, result, stats)
        stats["duplicates_left"] = _duplicates(_hour_read_back(tables, day, bucket, hour))
        quarter_hours = aggregates.readings_15min(readings)
        _put(tables, "readings_15min", day, bucket, hour, quarter_hours, result, stats)
        energy = aggregates.energy_partials(readings)
    status = _staged(store, "device_status", day, bucket, hour)
    if status is not None:
        status = status.unique(maintain_order=True).sort(
            "site", "time", "vid", "device", nulls_last=True
        )
        _put(tables, "device_status", day, bucket, hour, status, result, stats)
    payloads = _staged(store, "pipeline_payloads", day, bucket, hour)
    if payloads is not None:
        payloads = first_received(payloads, PAYLOAD_KEY).sort("site", "time", nulls_last=True)
        _put(tables, "pipeline_payloads", day, bucket, hour, payloads, result, stats)
        stats["accepted_payloads"] = payloads.height
        completeness = aggregates.completeness_partials(payloads)
    rejects = _staged(store, "rejects", day, bucket, hour)
    if rejects is not None:
        rejects = first_received(rejects, REJECT_KEY).sort("site", "time", nulls_last=True)
        _put(tables, "rejects", day, bucket, hour, rejects, result, stats)
        stats["rejected_payloads"] = rejects.filter(pl.col("time").is_null()).height
    hour_column = pl.lit(hour, pl.Int64).alias("hour")
    return (
        pl.DataFrame([stats], schema=HOUR_STATS),
        energy.with_columns(hour_column),
        completeness.with_columns(hour_column),
    )


def _hour_read_back(tables: CuratedTables, day: date, bucket: int, hour: int) -> pl.DataFrame:
    """The unit's readings measured in the hour, as analysts read them: whatever hour they are
    filed under (a row filed under another hour would be a duplicate no refresh replaces)."""
    start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    in_hour = pl.col("time").is_between(start, start + timedelta(hours=1), closed="left")
    return tables.read("readings", day, bucket, where=in_hour)


def _duplicates(readings: pl.DataFrame) -> int:
    """Rows whose key another row has. The file is written in key order, so comparing each row
    with the one before finds them all (a file out of that order is counted the slow way)."""
    keys = readings.select(READING_KEY)
    if not keys.select(pl.struct(READING_KEY)).to_series().is_sorted(nulls_last=True):
        return keys.height - keys.n_unique()
    same_as_previous = pl.all_horizontal(
        pl.col(name).eq_missing(pl.col(name).shift(1)) for name in READING_KEY
    )
    return int(keys.select(same_as_previous.sum()).item())


def _merge_partials(
    store: ObjectStore,
    kind: str,
    day: date,
    bucket: int,
    hours: list[int],
    new: list[pl.DataFrame],
    schema: pl.Schema,
) -> pl.DataFrame:
    """The unit's partials with the rebuilt hours replaced (one small file per unit and kind)."""
    key = layout.partials_key(kind, day, bucket)
    kept = read_parquet(store, key)
    frames = [] if kept is None else [kept.filter(~pl.col("hour").is_in(hours))]
    merged = (
        pl.concat([*frames, *new], how="diagonal_relaxed")
        if frames or new
        else pl.DataFrame(schema={**schema, "hour": pl.Int64})
    )
    merged = merged.with_columns(  # partials written before a column was added lack it
        pl.lit(None, dtype).alias(name) for name, dtype in schema.items() if name not in merged
    ).sort("hour", maintain_order=True)
    store.put(key, to_parquet(merged))
    return merged


def _write_daily(
    store: ObjectStore,
    tables: CuratedTables,
    day: date,
    bucket: int,
    energy: pl.DataFrame,
    completeness: pl.DataFrame,
    result: UnitResult,
    now: datetime | None,
) -> None:
    result.rows["energy_daily"] = _write_energy(store, tables, day, bucket, energy=energy)
    daily = aggregates.completeness_daily(completeness, day, now)
    _put(tables, "completeness_daily", day, bucket, None, daily.drop("last_time"), result)
    result.completeness = aggregates.covered_ratios(completeness)
    result.last_payload = dict(daily.select("site", "last_time").iter_rows())


def _write_energy(
    store: ObjectStore,
    tables: CuratedTables,
    day: date,
    bucket: int,
    energy: pl.DataFrame | None = None,
    previous: pl.DataFrame | None = None,
) -> int:
    """Write the day's energy from its partials and the day before's (each read from storage
    unless given); rows written.

    The units of two consecutive days may be refreshed at once, each writing its partials and
    then reading the other's, so whichever reads second sees both. So that a result made from an
    older read cannot land last, what was read is read again after writing, and if it changed
    meanwhile, the energy is made again.
    """
    keys = {
        "energy": None if energy is not None else layout.partials_key("energy", day, bucket),
        "previous": None
        if previous is not None
        else layout.partials_key("energy", day - timedelta(days=1), bucket),
    }
    given = {"energy": energy, "previous": previous}
    for _ in range(3):
        frames = {
            name: given[name] if key is None else read_parquet(store, key)
            for name, key in keys.items()
        }
        if frames["energy"] is None:
            return 0
        today = frames["energy"]
        before = frames["previous"] if frames["previous"] is not None else today.clear()
        daily = aggregates.energy_daily(today, before, day)
        tables.replace("energy_daily", daily, day, bucket)
        if all(
            key is None or _same(frames[name], read_parquet(store, key))
            for name, key in keys.items()
        ):
            break
    return daily.height


def _same(a: pl.DataFrame | None, b: pl.DataFrame | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.equals(b))


def _refresh_next_days_energy(
    store: ObjectStore, tables: CuratedTables, day: date, bucket: int, energy: pl.DataFrame
) -> None:
    """The next day's first counter interval starts in this day: if the next day has data, its
    energy is made again with this day's last readings."""
    _write_energy(store, tables, day + timedelta(days=1), bucket, previous=energy)


def _sum_stats(stats: pl.DataFrame, result: UnitResult) -> None:
    totals = stats.select(
        pl.col("staged_readings", "readings", "conflicts", "duplicates_left").sum(),
        pl.col("accepted_payloads").sum(),
        pl.col("rejected_payloads", "ahead_of_receipt").sum(),
        pl.col("max_lag_s").max(),
    ).row(0, named=True)
    result.readings = totals["readings"]
    result.conflicts = totals["conflicts"]
    result.duplicates_removed = totals["staged_readings"] - totals["readings"] - result.conflicts
    result.duplicates_left = totals["duplicates_left"]
    result.accepted_payloads = totals["accepted_payloads"]
    result.rejected_payloads = totals["rejected_payloads"]
    result.ahead_of_receipt = totals["ahead_of_receipt"]
    result.max_lag_s = totals["max_lag_s"]
    result.table_rows = {
        table: int(stats[f"rows_{table}"].sum() or 0) for table in layout.HOURLY_TABLES
    } | {table: result.rows.get(table, 0) for table in layout.DAILY_TABLES}
