"""A daily chart per site: power through the day, the energy the counters gained, the genset's
run time, and the periods a device reported an alarm.

Drawn from the curated 15-minute aggregates and the day's `device_status`, so a chart costs no
pass over the raw readings. One PNG per site and date under
`curated/charts/date=D/site=<site key>.png` (`data_acq.sites`).

How the chart reads (`day_figure` builds it; the tests inspect the figure it returns):

- The x axis is the whole UTC day, 00:00 to 24:00, whatever part of it has data; a gap in the
  data is a gap in the line (nothing is drawn across it).
- Power (`P_total` of inverters and meters, the genset's `genset_P`, the battery's `P_batt`)
  in kW, each 15-minute mean drawn at the middle of its quarter. The axis starts at 0 unless a
  value is negative, and spans at least 1 kW, so an all-zero night is a flat line at 0 on a
  0..1 kW axis instead of noise around an axis from -0.04 to 0.04.
- The Wh counters (`COUNTER_FIELDS` but `runtime`) as kWh gained since the day's first reading,
  on one axis; the run-time counter (hours) on its own panel below. No axis mixes units.
- Alarm periods (device status level > 0) shaded on every panel, coloured by level, with the
  level, alarm text and device in the legend.

Identical series (inverters of one size side by side, or everything at night) are NOT moved
apart: an offset would falsify the data, and a stacked area would hide each device's own curve
and double-count a meter that measures the inverters' sum. The first of them is drawn solid;
each copy on top of it in short dashes of its own colour, the copies' dashes taking turns along
the line, so every colour shows. The legend says what a copy repeats: "same as pv_inverter_1"
(equal values), "overlaps pv_inverter_1" (within OVERLAP of the panel's span everywhere, which
hides a line as well), or "0 throughout".

One naming rule for every legend: `<device> <field>`, the device by its name (`_d`), with the
vid in brackets only where the name is shared by several vids (`meter [m-1]`) or standing alone
in brackets where the device has no name (`[m-1]`). A device keeps its colour on every panel.
A counter's legend entry adds its gain over the day.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from data_acq import layout
from data_acq.curate.aggregates import COUNTER_FIELDS
from data_acq.curate.flatten import STATUS_SCHEMA
from data_acq.curate.tables import CuratedTables
from data_acq.progress import Progress
from data_acq.storage import ObjectStore

if TYPE_CHECKING:  # matplotlib is imported when a chart is drawn, not with the package
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

POWER_FIELDS = ("P_total", "genset_P", "P_batt")  # W
HOUR_COUNTERS = ("runtime",)  # h; every other counter is Wh
ENERGY_COUNTERS = tuple(f for f in COUNTER_FIELDS if f not in HOUR_COUNTERS)
MAX_LINES = 12  # per panel; the legend says how many more there were
QUARTERS = 96
MIN_SPAN = {"power": 1.0, "energy": 1.0, "runtime": 1.0}  # kW, kWh, h
ALARM_COLOURS = {1: "#f2d024", 2: "#f59b23", 3: "#e8412c", 4: "#9c1f8c"}  # level 4 and above
ALARM_MAX_STEP = timedelta(minutes=15)  # a status reading further away does not end a period
OVERLAP = 0.004  # series closer than this share of the panel's span everywhere overlap
DASH = 3.0  # length of one dash of an identical copy, in line widths
BASE_STYLES = ("-", "-.", (0, (1, 1)))  # per ten devices: the colours repeat, the style does not


def _text(value: object, limit: int = 60) -> str:
    """Logger-chosen text as plain text: `$` would start matplotlib's math mode (and can fail
    to parse), a leading `_` hides a legend entry, and a site id can be very long."""
    text = str(value).replace("$", r"\$")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f" {text}" if text.startswith("_") else text


# --- naming -----------------------------------------------------------------------------------

Device = tuple[str | None, str | None]  # (vid, device)


def device_names(devices: Iterable[Device]) -> dict[Device, str]:
    """The legend name of each (vid, device): the device name, the vid in brackets only where
    it is needed to tell devices apart (a shared name) or the device has no name."""
    devices = set(devices)
    vids: dict[str, set[str | None]] = defaultdict(set)
    for vid, device in devices:
        if device:
            vids[device].add(vid)
    names = {}
    for vid, device in devices:
        if not device:
            names[vid, device] = f"[{vid}]"
        elif len(vids[device]) > 1:
            names[vid, device] = f"{device} [{vid}]"
        else:
            names[vid, device] = device
    return names


def _natural(text: str) -> list[Any]:
    """pv_inverter_2 before pv_inverter_10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


# --- data on the day's grid -------------------------------------------------------------------


@dataclass(slots=True)
class Series:
    device: Device
    field: str
    owner: str  # the device's legend name (unescaped)
    x: np.ndarray  # hours since midnight
    y: np.ndarray  # NaN where there is no data
    total: str = ""  # appended to the legend name

    @property
    def name(self) -> str:
        return f"{self.owner} {self.field}"


@dataclass(frozen=True, slots=True)
class Alarm:
    start: float  # hours since midnight
    end: float
    level: int
    content: str | None
    device: str  # legend name of the device


def _slots(part: pl.DataFrame, day: date) -> np.ndarray:
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    minutes = (part["period"] - midnight).dt.total_minutes().to_numpy()
    return (minutes // 15).astype(np.int64)


def _on_grid(part: pl.DataFrame, column: str, day: date) -> np.ndarray:
    values = np.full(QUARTERS, np.nan)
    values[_slots(part, day)] = part[column].to_numpy()
    values[~np.isfinite(values)] = np.nan  # an infinite value would break the axis
    return values


def _gain(last: np.ndarray, low: np.ndarray) -> np.ndarray:
    """A counter's gain since its first reading of the day, at each quarter-hour boundary
    (NaN where unknown). A quarter's gain is the rise of its last reading over the previous
    quarter's; the first quarter's, and a quarter whose counter stepped down (a reset), count
    the rise from the quarter's lowest reading to its last."""
    gained = np.full(QUARTERS + 1, np.nan)
    total, previous = 0.0, None
    for slot in np.flatnonzero(~np.isnan(last)):
        step = last[slot] - previous if previous is not None else -1.0
        if step < 0:
            step = last[slot] - low[slot]
        if previous is None:
            gained[slot] = 0.0
        total += max(step, 0.0)
        gained[slot + 1] = total
        previous = last[slot]
    return gained


def _series(
    quarter_hours: pl.DataFrame, fields: Sequence[str], day: date, names: dict[Device, str]
) -> dict[str, list[Series]]:
    """Per field: one Series per (vid, device) of the field."""
    out: dict[str, list[Series]] = defaultdict(list)
    frame = quarter_hours.filter(pl.col("field").is_in(fields))
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    frame = frame.filter(
        pl.col("period").is_between(midnight, midnight + timedelta(days=1), "left")
    )
    for (vid, device, field), part in frame.partition_by(
        "vid", "device", "field", as_dict=True
    ).items():
        key = (vid, device)
        part = part.sort("period")
        if field in POWER_FIELDS:
            x = (np.arange(QUARTERS) + 0.5) / 4
            y = _on_grid(part, "mean", day) / 1000
        else:
            x = np.arange(QUARTERS + 1) / 4
            y = _gain(_on_grid(part, "last", day), _on_grid(part, "min", day))
            y = y / 1000 if field in ENERGY_COUNTERS else y
        out[field].append(Series(key, field, names[key], x, y))
    return out


def alarm_periods(
    status: pl.DataFrame, day: date, names: dict[Device, str] | None = None
) -> list[Alarm]:
    """Periods of the day a device reported a status of level > 0.

    A period runs from a device's first status reading with that alarm (content and level) to
    its next status reading without it; when there is none within ALARM_MAX_STEP (the logger
    fell silent, or the day ended), to the last reading with it plus the device's usual interval.
    """
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    status = status.filter(
        pl.col("time").is_between(midnight, midnight + timedelta(days=1), "left")
    )
    if status.filter(pl.col("level") > 0).is_empty():
        return []
    device = ("vid", "device")
    times = (
        status.select(*device, "time")
        .unique()
        .sort(*device, "time", nulls_last=True)
        .with_columns(
            index=pl.int_range(pl.len()).over(device),
            next=pl.col("time").shift(-1).over(device),
        )
        .with_columns(
            interval=(pl.col("next") - pl.col("time"))
            .median()
            .over(device)
            .clip(timedelta(seconds=1), ALARM_MAX_STEP)
            .fill_null(timedelta(minutes=1))
        )
    )
    alarm = (*device, "content", "level")
    periods = (
        status.filter(pl.col("level") > 0)
        .select(*alarm, "time")
        .unique()
        .join(times, on=[*device, "time"], nulls_equal=True)
        .sort(*alarm, "time", nulls_last=True)
        .with_columns(run=pl.col("index") - pl.int_range(pl.len()).over(alarm))
        .group_by(*alarm, "run")
        .agg(
            start=pl.col("time").first(),
            last=pl.col("time").last(),
            next=pl.col("next").last(),
            interval=pl.col("interval").first(),
        )
        .with_columns(
            end=pl.when(pl.col("next") - pl.col("last") <= ALARM_MAX_STEP)
            .then(pl.col("next"))
            .otherwise(pl.col("last") + pl.col("interval"))
        )
        .sort("start", "level", "content", nulls_last=True)
    )

    names = device_names(status.select(*device).unique().rows()) | (names or {})

    def hours(moment: datetime) -> float:
        return min((moment - midnight) / timedelta(hours=1), 24.0)

    return [
        Alarm(
            hours(row["start"]),
            hours(row["end"]),
            row["level"],
            row["content"],
            names[row["vid"], row["device"]],
        )
        for row in periods.iter_rows(named=True)
    ]


# --- drawing ----------------------------------------------------------------------------------


def _limits(axis: Axes, series: Iterable[Series], min_span: float) -> None:
    """From 0 (or the lowest value, if negative) to the highest, spanning at least min_span;
    with a zero line where values are negative."""
    values = [v for s in series for v in s.y[np.isfinite(s.y)]]
    low, high = min([0.0, *values]), max([0.0, *values])
    span = high - low
    if span < min_span:
        high = low + min_span
    else:
        high += 0.05 * span
        low -= 0.05 * span if low < 0 else 0.0
    if low < 0:
        axis.axhline(0.0, color="black", linewidth=0.6, zorder=2)
    axis.set_ylim(low, high)


def _draw_series(
    axis: Axes, series: list[Series], styles: dict[Device, tuple[str, Any]], unit: str
) -> tuple[list[Series], list[Any]]:
    """Draw (at most MAX_LINES of) the series, the copies of a series (identical, or within
    OVERLAP of the panel's span everywhere) in turn-taking dashes over it; the series drawn,
    and their legend handles."""
    from matplotlib.lines import Line2D

    drawn = series[:MAX_LINES]
    values = np.concatenate([[0.0], *(s.y[np.isfinite(s.y)] for s in drawn)])
    tolerance = OVERLAP * max(float(values.max() - values.min()), 1e-12)
    groups: list[list[Series]] = []
    for s in drawn:
        for group in groups:
            first = group[0].y
            if np.array_equal(np.isnan(first), np.isnan(s.y)) and not (
                np.nanmax(np.abs(first - s.y), initial=0.0) > tolerance
            ):
                group.append(s)
                break
        else:
            groups.append([s])
    handles = []
    for s in drawn:  # in name order: a group's first comes before its copies
        group = next(g for g in groups if any(s is other for other in g))
        rank = next(i for i, other in enumerate(group) if other is s)
        handles.append(_plot(axis, s, styles[s.device], group, rank))
    if len(series) > len(drawn):
        more = f"+{len(series) - len(drawn)} more not drawn"
        handles.append(Line2D([], [], linestyle="none", label=more))
    if not series:
        axis.text(
            0.5,
            0.5,
            f"no {unit} readings",
            transform=axis.transAxes,
            ha="center",
            va="center",
            color="grey",
        )
    return drawn, handles


def _plot(axis: Axes, s: Series, style: tuple[str, Any], group: list[Series], rank: int) -> Any:
    """Draw one series; its legend handle (a copy's in plain dashes: its own pattern's dash
    would be too far apart to show in a legend)."""
    from matplotlib.lines import Line2D

    colour, linestyle = style
    finite = s.y[np.isfinite(s.y)]
    if finite.size and not finite.any():
        notes = ["0 throughout"]
    else:
        notes = [s.total] if s.total else []
        if rank:
            same = np.array_equal(group[0].y, s.y, equal_nan=True)
            other = group[0].owner if group[0].field == s.field else group[0].name
            notes.append(f"{'same as' if same else 'overlaps'} {_text(other)}")
    label = _text(s.name) + (f" ({'; '.join(notes)})" if notes else "")
    handle = Line2D([], [], color=colour, linestyle="--" if rank else linestyle, label=label)
    if rank:  # the copy's dash comes at its turn in a period of len(group) dashes
        period = len(group) * DASH
        linestyle = ((period - (rank - 1) * DASH) % period, (DASH, period - DASH))
    present = np.isfinite(s.y)
    alone = np.flatnonzero(present & ~np.r_[False, present[:-1]] & ~np.r_[present[1:], False])
    axis.plot(
        s.x,
        s.y,
        color=colour,
        linestyle=linestyle,
        linewidth=1.4,
        marker="o" if alone.size else None,  # a quarter between gaps is a dot
        markersize=3,
        markevery=alone.tolist() if alone.size else None,
        label=label,
        clip_on=False,  # a line at 0 sits on the axis, not half under it
        zorder=3,
    )
    return handle


def _alarm_label(level: int, alarms: list[Alarm]) -> str:
    what = [
        f"{'no text' if a.content is None else _text(a.content, 30)} ({_text(a.device, 30)})"
        for a in alarms
    ]
    what = list(dict.fromkeys(what))
    more = f", +{len(what) - 2} more" if len(what) > 2 else ""
    name = f"level {level}+" if level == max(ALARM_COLOURS) else f"level {level}"
    return f"alarm {name}: {', '.join(what[:2])}{more}"


def _shade(axes: list[Axes], alarms: list[Alarm]) -> list[Any]:
    """A span per alarm period on every panel; legend handles, one per level."""
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    by_level: dict[int, list[Alarm]] = defaultdict(list)
    for alarm in alarms:
        level = min(alarm.level, max(ALARM_COLOURS))
        by_level[level].append(alarm)
        for axis in axes:
            axis.axvspan(
                alarm.start,
                alarm.end,
                facecolor=to_rgba(ALARM_COLOURS[level], 0.3),
                edgecolor=to_rgba(ALARM_COLOURS[level], 0.8),
                linewidth=0.8,  # a one-minute alarm is still a visible line
                zorder=1,
            )
    return [
        Patch(
            facecolor=to_rgba(ALARM_COLOURS[level], 0.3),
            edgecolor=to_rgba(ALARM_COLOURS[level], 0.8),
            label=_alarm_label(level, found),
        )
        for level, found in sorted(by_level.items())
    ]


def day_figure(
    quarter_hours: pl.DataFrame, site: str | None, day: date, status: pl.DataFrame | None = None
) -> Figure:
    """The chart of one site and day (see the module's docstring) as a matplotlib Figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    status = STATUS_SCHEMA.to_frame() if status is None else status
    devices = quarter_hours.select("vid", "device").unique().rows()
    devices += status.select("vid", "device").unique().rows()
    names = device_names(devices)
    power = [
        s for found in _series(quarter_hours, POWER_FIELDS, day, names).values() for s in found
    ]
    counters = _series(quarter_hours, COUNTER_FIELDS, day, names)
    energy = [s for f in ENERGY_COUNTERS for s in counters.get(f, [])]
    runtime = [s for f in HOUR_COUNTERS for s in counters.get(f, [])]
    for s in energy:
        s.total = f"{np.nanmax(s.y):,.1f} kWh" if np.isfinite(s.y).any() else ""
    for s in runtime:
        s.total = f"{np.nanmax(s.y):,.2f} h" if np.isfinite(s.y).any() else ""
    for panel in (power, energy, runtime):
        panel.sort(key=lambda s: _natural(s.name))

    order = sorted(
        {s.device for s in [*power, *energy, *runtime]}, key=lambda d: _natural(names[d])
    )
    styles = {
        d: (f"C{i % 10}", BASE_STYLES[i // 10 % len(BASE_STYLES)]) for i, d in enumerate(order)
    }

    rows = 3 if runtime else 2
    figure = Figure(figsize=(12, 8.2 if runtime else 7), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.2][:rows]})
    power_axis, energy_axis = axes[0], axes[1]
    figure.suptitle(f"{_text(site)} — {day.isoformat()} (UTC)")
    panels = [
        (power_axis, power, "power", "power, kW\n(15-min mean)"),
        (energy_axis, energy, "energy", "energy, kWh\n(gained since midnight)"),
    ]
    if runtime:
        panels.append((axes[2], runtime, "runtime", "run time, h\n(since midnight)"))
    legends = []
    for axis, series, unit, label in panels:
        drawn, handles = _draw_series(axis, series, styles, unit)
        _limits(axis, drawn, MIN_SPAN[unit])
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        legends.append(handles)
    legends[0] += _shade(list(axes), alarm_periods(status, day, names))
    for (axis, *_), handles in zip(panels, legends, strict=True):
        if handles:
            axis.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom = axes[-1]
    bottom.set_xlim(0, 24)
    bottom.xaxis.set_major_locator(MultipleLocator(3))
    bottom.xaxis.set_minor_locator(MultipleLocator(1))
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda h, _pos: f"{int(h):02d}:00"))
    bottom.set_xlabel("time of day (UTC)")
    return figure


def site_day_chart(
    quarter_hours: pl.DataFrame, site: str | None, day: date, status: pl.DataFrame | None = None
) -> bytes:
    """The chart of one site and day as PNG bytes."""
    # a site id or device name in a script the font lacks is drawn as boxes: no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        figure = day_figure(quarter_hours, site, day, status)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def write_charts(
    store: ObjectStore, day: date, progress: Progress | None = None
) -> list[tuple[str | None, str]]:
    """Draw every site's chart for `day` from its 15-minute aggregates and device status;
    (site, key) of each."""
    columns = ["site", "vid", "device", "field", "period", "mean", "min", "last"]
    tables = CuratedTables(store)
    everything = tables.read("readings_15min", day).select(columns)
    if everything.is_empty():
        return []
    sites = everything["site"].unique().to_list()  # a chart for every site, drawn or not
    quarter_hours = everything.filter(pl.col("field").is_in((*POWER_FIELDS, *COUNTER_FIELDS)))
    status = tables.read("device_status", day).select(list(STATUS_SCHEMA))
    status_by_site = status.partition_by("site", as_dict=True)
    keys = []
    parts = quarter_hours.partition_by("site", as_dict=True)
    for number, site in enumerate(sorted(sites, key=lambda s: s or ""), start=1):
        part = parts.get((site,), quarter_hours.clear())
        key = layout.chart_key(day, site)
        store.put(key, site_day_chart(part, site, day, status_by_site.get((site,))))
        keys.append((site, key))
        if progress:
            progress(f"charts of {day}", number, len(sites), "charts")
    return keys
