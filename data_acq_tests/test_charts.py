"""The daily chart: drawn for real with matplotlib, checked on the figure's properties (axis
limits, line styles, axis labels, alarm spans, legend names) rather than on pixels."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from data_acq import layout
from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.charts import (
    alarm_periods,
    day_figure,
    device_names,
    site_day_chart,
    write_charts,
)
from data_acq.curate.flatten import STATUS_SCHEMA
from data_acq.curate.tables import CuratedTables
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.sites import bucket_of
from data_acq.storage import LocalStore

DAY = date(2024, 10, 12)
MIDNIGHT = datetime(2024, 10, 12, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n"


def quarters(
    device: str | None,
    field: str,
    values: list[float],
    *,
    vid: str | None = None,
    site: str = "s1",
    start: int = 0,
) -> pl.DataFrame:
    """readings_15min rows of one series, one value a quarter from quarter `start` on (NaN: no
    row); a counter's `min` is its `last`."""
    rows = [
        (site, vid or (device or "x").replace("_", "-"), device, field, start + i, v)
        for i, v in enumerate(values)
        if not np.isnan(v)
    ]
    frame = pl.DataFrame(
        rows, schema=["site", "vid", "device", "field", "slot", "value"], orient="row"
    )
    return frame.select(
        "site",
        "vid",
        "device",
        "field",
        period=pl.lit(MIDNIGHT) + pl.duration(minutes=pl.col("slot") * 15),
        mean=pl.col("value").cast(pl.Float64),
        min=pl.col("value").cast(pl.Float64),
        max=pl.col("value").cast(pl.Float64),
        last=pl.col("value").cast(pl.Float64),
        count=pl.lit(15, pl.UInt32),
    )


def statuses(
    rows: list[tuple[int, str, int]], device: str = "dse855", vid: str = "dse-1"
) -> pl.DataFrame:
    """device_status rows: (minute of the day, content, level)."""
    return pl.DataFrame(
        [
            ("s1", MIDNIGHT + timedelta(minutes=m), vid, device, content, level)
            for m, content, level in rows
        ],
        schema=STATUS_SCHEMA,
        orient="row",
    )


def day_curve(peak_w: float) -> list[float]:
    """A PV day: zero at night, a sine by day, one value a quarter hour."""
    hours = (np.arange(96) + 0.5) / 4
    return list(np.round(peak_w * np.clip(np.sin(np.pi * (hours - 6) / 12), 0, None), -2))


def legend(axis: Axes) -> list[str]:
    found = axis.get_legend()
    return [] if found is None else [t.get_text() for t in found.get_texts()]


def line(axis: Axes, name: str) -> Line2D:
    """The one line of the series `name` (its legend label without the notes)."""
    [found] = [li for li in axis.get_lines() if li.get_label().split(" (")[0] == name]
    return found


def panels(figure: Figure) -> list[Axes]:
    return list(figure.axes)


def test_an_all_zero_night_has_a_zero_based_axis_of_at_least_one_unit() -> None:
    night = [0.0] * 24
    frame = pl.concat(
        [
            quarters("pv_inverter_1", "P_total", night),
            quarters("pv_inverter_2", "P_total", night),
            quarters("pv_inverter_1", "total_yield", [5e6] * 24),
            quarters("pv_inverter_2", "total_yield", [7e6] * 24),
        ]
    )
    power, energy = panels(day_figure(frame, "s1", DAY))
    for axis in (power, energy):
        low, high = axis.get_ylim()
        assert low == 0 and high >= 1
    assert power.get_xlim() == (0, 24)  # the whole day, whatever part has data
    assert "pv_inverter_2 P_total (0 throughout)" in legend(power)
    assert "pv_inverter_2 total_yield (0 throughout)" in legend(energy)
    assert "kW" in power.get_ylabel() and "kWh" in energy.get_ylabel()


def test_a_day_axis_starts_at_zero_and_a_negative_value_extends_it() -> None:
    pv = quarters("pv_inverter_1", "P_total", day_curve(20_000))
    [power, _] = panels(day_figure(pv, "s1", DAY))
    low, high = power.get_ylim()
    assert low == 0 and high >= 20
    battery = quarters("bms", "P_batt", [-3_000.0] * 24 + [4_000.0] * 72)
    [power, _] = panels(day_figure(pl.concat([pv, battery]), "s1", DAY))
    low, high = power.get_ylim()
    assert low <= -3 and high >= 20


def test_identical_series_are_told_apart_by_style_and_legend_not_moved() -> None:
    curve = day_curve(15_000)
    frame = pl.concat(
        [
            quarters("pv_inverter_1", "P_total", curve),
            quarters("pv_inverter_2", "P_total", day_curve(25_000)),
            quarters("pv_inverter_3", "P_total", curve),
            quarters("pv_inverter_4", "P_total", curve),
        ]
    )
    [power, _] = panels(day_figure(frame, "s1", DAY))
    lines = [line(power, f"pv_inverter_{k} P_total") for k in (1, 3, 4)]
    for drawn in lines:  # the data as it is: no offset
        assert np.array_equal(drawn.get_ydata(), np.array(curve) / 1000)
    assert len({drawn.get_color() for drawn in lines}) == 3
    assert lines[0].get_linestyle() == "-"
    assert all(drawn.get_linestyle() == "--" for drawn in lines[1:])  # copies dashed ...
    assert lines[1]._dash_pattern != lines[2]._dash_pattern  # ... taking turns
    names = legend(power)
    assert "pv_inverter_3 P_total (same as pv_inverter_1)" in names
    assert "pv_inverter_4 P_total (same as pv_inverter_1)" in names
    assert "pv_inverter_2 P_total" in names  # not the same


def test_counters_gain_since_midnight_and_run_time_has_its_own_axis() -> None:
    yield_wh = list(1e6 + np.cumsum(np.array(day_curve(20_000)) / 4))  # Wh
    runtime_h = [100.0 + 0.25 * min(i, 20) for i in range(96)]  # ran 5 h in the early hours
    genset_w = [10_000.0 if i < 20 else 0.0 for i in range(96)]
    frame = pl.concat(
        [
            quarters("pv_inverter_1", "total_yield", yield_wh),
            quarters("dse855", "runtime", runtime_h, vid="dse-1"),
            quarters("dse855", "genset_P", genset_w, vid="dse-1"),
        ]
    )
    power, energy, runtime = panels(day_figure(frame, "s1", DAY))
    assert "h" in runtime.get_ylabel().split(",")[1] and "kWh" not in runtime.get_ylabel()
    assert "kWh" in energy.get_ylabel()
    assert [li.get_label().split(" (")[0] for li in runtime.get_lines()] == ["dse855 runtime"]
    assert all("runtime" not in li.get_label() for li in energy.get_lines())
    gained = line(energy, "pv_inverter_1 total_yield").get_ydata()
    assert np.nanmax(gained) == pytest.approx((yield_wh[-1] - yield_wh[0]) / 1000)
    assert np.nanmax(line(runtime, "dse855 runtime").get_ydata()) == pytest.approx(5.0)
    assert "dse855 runtime (5.00 h)" in legend(runtime)
    assert runtime.get_ylim()[0] == 0 and energy.get_ylim()[0] == 0
    genset = line(power, "dse855 genset_P")  # genset power is drawn, in kW
    assert np.nanmax(genset.get_ydata()) == 10


def test_a_counter_reset_does_not_lose_or_subtract_energy() -> None:
    values = [1000.0, 2000.0, 3000.0, 500.0, 1500.0]  # replaced after the third quarter
    frame = quarters("pv_inverter_1", "total_yield", values)
    frame = frame.with_columns(
        min=pl.when(pl.col("last") == 500).then(0.0).otherwise(pl.col("min"))
    )
    [_, energy] = panels(day_figure(frame, "s1", DAY))
    gained = line(energy, "pv_inverter_1 total_yield").get_ydata()
    assert list(gained[:6]) == [0, 0, 1, 2, 2.5, 3.5]  # kWh; the reset counts 0 -> 500 Wh


def test_a_gap_is_a_gap_and_a_lone_quarter_a_dot() -> None:
    values = [5_000.0] * 8 + [np.nan] * 8 + [6_000.0] + [np.nan] * 4 + [7_000.0] * 4
    [power, _] = panels(day_figure(quarters("pv_inverter_1", "P_total", values), "s1", DAY))
    drawn = line(power, "pv_inverter_1 P_total")
    assert np.isnan(drawn.get_ydata()[8:16]).all()  # nothing drawn across the gap
    assert drawn.get_marker() == "o" and drawn.get_markevery() == [16]


def test_alarm_periods_are_shaded_by_level_on_every_panel() -> None:
    def state(minute: int) -> tuple[int, str, int]:
        if 600 <= minute < 630:  # 10:00 .. 10:29
            return minute, "Low Oil Pressure", 3
        if 840 <= minute < 845 or minute == 1439:  # 14:00 .. 14:04, and the day's last reading
            return minute, "High Temperature", 2
        return minute, "OK", 0

    status = statuses([state(m) for m in range(24 * 60)])
    frame = quarters("pv_inverter_1", "P_total", day_curve(20_000))
    figure = day_figure(frame, "s1", DAY, status)
    for axis in panels(figure):
        spans = sorted(axis.patches, key=lambda p: p.get_x())
        assert len(spans) == 3
        assert spans[0].get_x() == pytest.approx(10.0)
        assert spans[0].get_width() == pytest.approx(0.5)  # to the next reading without it
        assert spans[0].get_facecolor() != spans[1].get_facecolor()  # level 3, level 2
        assert spans[1].get_facecolor() == spans[2].get_facecolor()
    names = legend(panels(figure)[0])
    assert "alarm level 2: High Temperature (dse855)" in names
    assert "alarm level 3: Low Oil Pressure (dse855)" in names
    periods = alarm_periods(status, DAY, device_names([("dse-1", "dse855")]))
    assert [(round(a.start, 3), round(a.end, 3), a.level) for a in periods] == [
        (10.0, 10.5, 3),
        (14.0, round(14 + 5 / 60, 3), 2),
        (round(1439 / 60, 3), 24.0, 2),  # plus the usual interval, cut at midnight
    ]


def test_an_alarm_ends_one_interval_after_its_last_reading_when_the_logger_falls_silent() -> None:
    status = statuses(
        [(m, "OK", 0) for m in range(60)] + [(60, "Fuel Low", 1), (61, "Fuel Low", 1)]
    )
    [alarm] = alarm_periods(status, DAY, device_names([("dse-1", "dse855")]))
    assert (alarm.start, alarm.end) == (1.0, pytest.approx(62 / 60))


def test_no_status_for_the_site_is_no_shading() -> None:
    frame = quarters("pv_inverter_1", "P_total", day_curve(20_000))
    for status in (None, STATUS_SCHEMA.to_frame(), statuses([(m, "OK", 0) for m in range(30)])):
        figure = day_figure(frame, "s1", DAY, status)
        assert all(not axis.patches for axis in panels(figure))
        assert not any(t.startswith("alarm") for t in legend(panels(figure)[0]))
    assert site_day_chart(frame, "s1", DAY).startswith(PNG)


def test_legend_names_follow_one_rule_and_a_device_keeps_its_colour() -> None:
    assert device_names([("m-1", "meter"), ("m-2", "meter"), ("pv-1", "pv"), ("x-9", None)]) == {
        ("m-1", "meter"): "meter [m-1]",
        ("m-2", "meter"): "meter [m-2]",
        ("pv-1", "pv"): "pv",
        ("x-9", None): "[x-9]",
    }
    frame = pl.concat(
        [
            quarters("meter", "P_total", [1000.0] * 4, vid="m-1"),
            quarters("meter", "P_total", [2000.0] * 4, vid="m-2"),
            quarters("meter", "E_exported", [1e3, 2e3, 3e3, 4e3], vid="m-1"),
            quarters(None, "P_total", [500.0] * 4, vid="x-9"),
        ]
    )
    power, energy = panels(day_figure(frame, "s1", DAY))
    assert [t.split(" (")[0] for t in legend(power)] == [
        "[x-9] P_total",
        "meter [m-1] P_total",
        "meter [m-2] P_total",
    ]
    assert legend(energy) == ["meter [m-1] E_exported (3.0 kWh)"]
    assert (
        line(power, "meter [m-1] P_total").get_color()
        == line(energy, "meter [m-1] E_exported").get_color()
    )


def test_logger_text_stays_plain_text() -> None:
    site = "$\\frac{" + "n" * 300
    frame = pl.concat(
        [
            quarters("$P$", "P_total", [1000.0] * 4, site=site),
            quarters("_hidden", "P_total", [2000.0] * 4, site=site),
        ]
    )
    status = statuses([(0, "$oops", 3)], device="$d$")
    figure = day_figure(frame, site, DAY, status)
    title = figure.get_suptitle()
    assert title.startswith("\\$\\frac{") and "…" in title and len(title) < 100
    names = legend(panels(figure)[0])
    assert r"\$P\$ P_total" in names and " _hidden P_total" in names
    assert r"alarm level 3: \$oops (\$d\$)" in names
    assert site_day_chart(frame, site, DAY, status).startswith(PNG)  # no mathtext error


def test_write_charts_draws_one_png_per_site_from_the_curated_tables(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    sites = {"b": quarters("pv_inverter_1", "P_total", day_curve(20_000), site="b")}
    sites["a"] = quarters("logger", "cpu_load", [0.1] * 96, site="a")  # nothing to draw
    tables = CuratedTables(store)
    for site, frame in sites.items():
        bucket = bucket_of(site, 16)
        for hour, part in frame.group_by(pl.col("period").dt.hour()):
            tables.replace("readings_15min", part, DAY, bucket, [hour[0]])
    alarms = statuses([(600, "Fault", 4), (601, "OK", 0)]).with_columns(site=pl.lit("b"))
    tables.replace("device_status", alarms, DAY, bucket_of("b", 16), [10])
    charts = write_charts(store, DAY)
    assert charts == [("a", layout.chart_key(DAY, "a")), ("b", layout.chart_key(DAY, "b"))]
    for _, key in charts:
        assert store.get(key).startswith(PNG)
    assert write_charts(store, DAY + timedelta(days=1)) == []


def test_charts_from_simulated_sites_through_the_pipeline(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=1, start=MIDNIGHT, minutes=24 * 60, seed=1, outage_sites=0)
    received = MIDNIGHT + timedelta(days=1)
    lines = (encode_record(t, body, received, 1) for t, body in simulate(spec))
    store.put_new(raw_key(received, "test"), encode_object(lines))
    process(store)
    [(site, key)] = write_charts(store, DAY)
    assert store.get(key).startswith(PNG)
    quarter_hours = pl.read_delta(str(store.root / "curated/readings_15min"))
    status = pl.read_delta(str(store.root / "curated/device_status"))
    power, energy, runtime = panels(day_figure(quarter_hours, site, DAY, status))
    assert np.nanmax(line(power, "dse855 genset_P").get_ydata()) >= 8  # the genset ran at night
    assert power.get_ylim()[0] == 0 and energy.get_ylim()[0] == 0
    assert line(runtime, "dse855 runtime")
    alarms = status.filter(pl.col("level") > 0)
    assert alarms.height > 0 and power.patches  # this seed's genset raises an alarm


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, data_acq.curate.charts; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
