"""A daily chart per site: power through the day, and the energy the counters gained.

Drawn from the curated 15-minute aggregates, so a chart costs no pass over the raw readings.
One PNG per site and date under `curated/charts/date=D/site=<site key>.png` (`data_acq.sites`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from datetime import date

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import polars as pl

from data_acq import layout
from data_acq.curate.aggregates import COUNTER_FIELDS
from data_acq.curate.parquet import read_parquets
from data_acq.storage import ObjectStore

POWER_FIELD = "P_total"
MAX_LINES = 8


def _text(value: object, limit: int = 60) -> str:
    """Logger-chosen text as plain text: `$` would start matplotlib's math mode (and can fail
    to parse), a leading `_` hides a legend entry, and a site id can be very long."""
    text = str(value).replace("$", r"\$")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f" {text}" if text.startswith("_") else text


def site_day_chart(quarter_hours: pl.DataFrame, site: str | None, day: date) -> bytes:
    # a site id or device name in a script the font lacks is drawn as boxes: no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        return _draw(quarter_hours, site, day)


def _draw(quarter_hours: pl.DataFrame, site: str | None, day: date) -> bytes:
    """PNG: mean power per device (kW), and each counter's gain since midnight (kWh)."""
    figure, (power_axis, energy_axis) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    power = quarter_hours.filter(pl.col("field") == POWER_FIELD).sort("period")
    for (device,), part in list(power.partition_by("device", as_dict=True).items())[:MAX_LINES]:
        power_axis.plot(part["period"], part["mean"] / 1000, label=_text(device), linewidth=1.2)
    power_axis.set_ylabel("power, kW (15-min mean)")
    power_axis.set_title(f"{_text(site)} — {day.isoformat()} (UTC)")
    counters = (
        quarter_hours.filter(pl.col("field").is_in(COUNTER_FIELDS))
        .sort("period")
        .with_columns(
            gain=pl.col("last")
            .diff()
            .clip(lower_bound=0)
            .fill_null(0)
            .cum_sum()
            .over("vid", "field")
        )
    )
    groups = list(counters.partition_by("vid", "field", as_dict=True).items())[:MAX_LINES]
    for (vid, field), part in groups:
        total = part["gain"].max() or 0
        energy_axis.plot(
            part["period"], part["gain"] / 1000, label=_text(f"{vid} {field} ({total / 1000:,.1f})")
        )
    energy_axis.set_ylabel("gain since midnight, thousands\n(kWh for Wh counters)")
    for axis in (power_axis, energy_axis):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7, loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def write_charts(
    store: ObjectStore, day: date, progress: Callable[[str], None] | None = None
) -> list[tuple[str | None, str]]:
    """Draw every site's chart for `day` from its 15-minute aggregates; (site, key) of each."""
    frames = read_parquets(store, layout.curated_prefix("readings_15min", day))
    if not frames:
        return []
    quarter_hours = pl.concat(frames)
    keys = []
    sites = quarter_hours.partition_by("site", as_dict=True)
    ordered = sorted(sites.items(), key=lambda item: item[0][0] or "")
    for number, ((site,), part) in enumerate(ordered, start=1):
        key = layout.chart_key(day, site)
        store.put(key, site_day_chart(part, site, day))
        keys.append((site, key))
        if progress and number % 100 == 0:
            progress(f"drew {number} of {len(sites)} charts for {day}")
    return keys
