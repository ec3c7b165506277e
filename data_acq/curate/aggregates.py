"""The aggregates: 15-minute statistics, daily energy and daily completeness.

A live refresh rebuilds only the hours that new data touched, so the daily aggregates are made
from small per-hour *partials* (one row per series or site and hour) instead of from the day's
readings: a late tick then costs about what an early one does, and the result is still exact.

Sums run over contiguous, ordered groups (`maintain_order`), so the same readings give the same
figures to the last bit, however they were split into batches: a rebuild equals the build.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl

from data_acq.curate.flatten import TIME

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
SERIES = ("site", "vid", "device", "field")
GAP_MINUTES = 5  # a completeness gap is at least this long

ENERGY_PARTIAL = pl.Schema(
    {
        "site": pl.String,
        "vid": pl.String,
        "device": pl.String,
        "field": pl.String,
        "first_time": TIME,
        "first_value": pl.Float64,
        "last_time": TIME,
        "last_value": pl.Float64,
        "gain": pl.Float64,  # increases between consecutive readings within the hour
        "resets": pl.UInt32,  # steps down within the hour
        "readings": pl.UInt32,
    }
)
GAPS = pl.List(pl.Struct({"start": TIME, "minutes": pl.Int64}))
COMPLETENESS_PARTIAL = pl.Schema(
    {
        "site": pl.String,
        "received": pl.UInt32,  # distinct minutes with a payload
        "first": TIME,  # first and last such minute
        "last": TIME,
        "gaps": GAPS,  # gaps inside the hour
        "last_time": TIME,  # the latest payload time
    }
)


def readings_15min(readings: pl.DataFrame) -> pl.DataFrame:
    """Per site, vid, device, field and quarter hour: mean, min, max, last, count."""
    return (
        readings.lazy()
        .filter(pl.col("value").is_not_null())
        .sort(*SERIES, "time", nulls_last=True)
        .group_by(*SERIES, pl.col("time").dt.truncate("15m").alias("period"), maintain_order=True)
        .agg(
            mean=pl.col("value").mean(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
            last=pl.col("value").last(),
            count=pl.len(),
        )
        .collect()
    )


# --- energy -----------------------------------------------------------------------------------


def energy_partials(readings: pl.DataFrame) -> pl.DataFrame:
    """Per counter series of one hour: its first and last reading, and the gain and resets
    between consecutive readings (a step down is a reset: the device was replaced or cleared)."""
    step = pl.col("value").diff()
    return (
        readings.lazy()
        .filter(pl.col("field").is_in(COUNTER_FIELDS) & pl.col("value").is_not_null())
        .sort(*SERIES, "time", nulls_last=True)
        .group_by(*SERIES, maintain_order=True)
        .agg(
            first_time=pl.col("time").first(),
            first_value=pl.col("value").first(),
            last_time=pl.col("time").last(),
            last_value=pl.col("value").last(),
            gain=step.clip(lower_bound=0).sum(),
            resets=(step < 0).sum().cast(pl.UInt32),
            readings=pl.len().cast(pl.UInt32),
        )
        .collect()
        .cast(ENERGY_PARTIAL)  # type: ignore[arg-type]
    )


def energy_daily(partials: pl.DataFrame, previous: pl.DataFrame, day: date) -> pl.DataFrame:
    """The day's increase of each cumulative counter, from the day's hourly partials (with an
    `hour` column) and the day before's (`previous`, possibly empty).

    Exact: the sum over the day's consecutive readings of each step up, a step down counting as
    a reset (zero energy). The interval that crosses midnight counts on the day it ends; an
    interval longer than that (a counter silent for a whole day) is counted on no day.
    """
    carried = (
        previous.sort("hour")
        .group_by(*SERIES, maintain_order=True)
        .agg(pl.col("last_value").last())
        .with_columns(hour=pl.lit(-1, pl.Int64), gain=0.0, resets=0, readings=0)
    )
    frame = pl.concat(
        [
            carried.with_columns(first_value=pl.lit(None, pl.Float64)),
            partials.select(*carried.columns, "first_value"),
        ],
        how="diagonal_relaxed",
    )
    step = pl.col("first_value") - pl.col("last_value").shift(1).over(*SERIES)
    return (
        frame.lazy()
        .sort(*SERIES, "hour", nulls_last=True)
        .with_columns(step=step)
        .group_by("site", "vid", "field", maintain_order=True)
        .agg(
            energy=(pl.col("gain") + pl.col("step").clip(lower_bound=0).fill_null(0)).sum(),
            resets=(pl.col("resets") + (pl.col("step") < 0).fill_null(False)).sum(),
            readings=pl.col("readings").sum(),
        )
        .filter(pl.col("readings") > 0)
        .with_columns(
            date=pl.lit(day),
            resets=pl.col("resets").cast(pl.UInt32),
            readings=pl.col("readings").cast(pl.UInt32),
        )
        .select("site", "date", "vid", "field", "energy", "resets", "readings")
        .collect()
    )


# --- completeness -----------------------------------------------------------------------------


def _gaps(minutes: pl.Expr, previous: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    missing = (minutes - previous).dt.total_minutes() - 1
    return missing, pl.struct(start=previous + timedelta(minutes=1), minutes=missing)


def completeness_partials(payloads: pl.DataFrame) -> pl.DataFrame:
    """Per site and hour: the minutes with a payload, the first and last, the gaps inside."""
    minutes = (
        payloads.lazy()
        .select("site", minute=pl.col("time").dt.truncate("1m"))
        .unique()
        .sort("site", "minute", nulls_last=True)
    )
    missing, gap = _gaps(pl.col("minute"), pl.col("minute").shift(1).over("site"))
    return (
        minutes.with_columns(missing=missing, gap=gap)
        .group_by("site", maintain_order=True)
        .agg(
            received=pl.len().cast(pl.UInt32),
            first=pl.col("minute").first(),
            last=pl.col("minute").last(),
            gaps=pl.col("gap").filter(pl.col("missing") >= GAP_MINUTES),
        )
        .join(
            payloads.lazy().group_by("site").agg(last_time=pl.col("time").max()),
            on="site",
            nulls_equal=True,
        )
        .collect()
        .cast(COMPLETENESS_PARTIAL)  # type: ignore[arg-type]
    )


def covered_ratios(partials: pl.DataFrame) -> dict[str | None, float]:
    """Per site: the share of the minutes the unit's data covers (its first payload to its last,
    any site's) with a payload from the site. What the completeness check judges: a site that
    fell behind the others, not a day that began before the data did (a new deployment), nor
    a day whose backlog is still arriving."""
    if partials.is_empty():
        return {}
    covered = partials["last"].max() - partials["first"].min()  # type: ignore[operator]
    minutes = int(covered.total_seconds() // 60) + 1
    ratios = partials.group_by("site").agg(
        ratio=pl.min_horizontal(pl.col("received").sum() / minutes, 1.0).round(4)
    )
    return dict(ratios.iter_rows())


def completeness_daily(
    partials: pl.DataFrame, day: date, now: datetime | None = None
) -> pl.DataFrame:
    """Per site: payloads expected at one a minute (so far, for today), received, ratio, and
    the gaps of five minutes or more, from the day's hourly partials (with an `hour` column).
    The ratio is null for a day that has not begun (nothing is expected yet)."""
    now = now or datetime.now(UTC)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = min(start + timedelta(days=1), max(now, start))
    expected = int((end - start).total_seconds() // 60)
    ordered = partials.lazy().sort("site", "hour", nulls_last=True)
    previous_last = pl.col("last").shift(1).over("site").fill_null(start - timedelta(minutes=1))
    between_missing, between = _gaps(pl.col("first"), previous_last)
    end_missing, at_end = _gaps(pl.lit(end, TIME), pl.col("last"))
    boundaries = pl.concat(
        [
            ordered.select("site", missing=between_missing, gap=between),
            ordered.group_by("site", maintain_order=True)
            .last()
            .select("site", missing=end_missing, gap=at_end),
        ]
    ).filter(pl.col("missing") >= GAP_MINUTES)
    inside = ordered.select("site", gap=pl.col("gaps")).explode("gap").drop_nulls("gap")
    gaps = (
        pl.concat([boundaries.select("site", "gap"), inside])
        .sort("site", pl.col("gap").struct.field("start"), nulls_last=True)
        .group_by("site", maintain_order=True)
        .agg(gaps=pl.col("gap"))
    )
    return (
        ordered.group_by("site", maintain_order=True)
        .agg(received=pl.col("received").sum(), last_time=pl.col("last_time").max())
        .join(gaps, on="site", how="left", nulls_equal=True)
        .with_columns(
            date=pl.lit(day),
            expected=pl.lit(expected, dtype=pl.Int64),
            # received / expected, within 0..1: a day not begun has no ratio, and payloads
            # stamped ahead of the clock do not make a day more than complete
            ratio=pl.min_horizontal(pl.col("received") / expected, 1.0).round(4)
            if expected
            else pl.lit(None, pl.Float64),
            largest_gap_minutes=pl.col("gaps")
            .list.eval(pl.element().struct.field("minutes"))
            .list.max()
            .fill_null(0),
        )
        .select(
            "site",
            "date",
            "expected",
            "received",
            "ratio",
            "largest_gap_minutes",
            "gaps",
            "last_time",
        )
        .sort("site", nulls_last=True)
        .collect()
    )
