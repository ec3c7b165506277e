"""The main job on local, embedded defaults: a private broker, simulated sites, the whole pipeline.

Simulated loggers publish with QoS 1 to a private Mosquitto -- duplicates, malformed messages and
an outage whose backlog arrives late included; the drain stores everything in raw; processing
turns raw into curated tables and the DuckDB warehouse; a short report closes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from data_acq.acquire.broker import publish_all
from data_acq.acquire.drain import Drain, DrainLimits
from data_acq.curate.charts import write_charts
from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.layout import WAREHOUSE_FILE
from data_acq.pipeline import process
from data_acq.progress import Bars
from data_acq.settings import BrokerSettings
from data_acq.storage import LocalStore

log = logging.getLogger(__name__)

# A production-sized queue: Mosquitto's default (1000) drops messages during a fast publish.
BROKER_CONFIG = ("max_queued_messages 1000000", "max_inflight_messages 1000")


def run_demo(output: Path, sites: int = 5, hours: float = 48.0, seed: int = 42) -> None:
    if output.exists():
        log.info("removing the previous demo output in %s", output)
        shutil.rmtree(output)
    store = LocalStore(output)
    spec = SimulationSpec(
        sites=sites,
        start=datetime(2024, 10, 12, tzinfo=UTC),
        minutes=int(hours * 60),
        seed=seed,
        duplicate_rate=0.005,
        outage_minutes=6 * 60,
        malformed_rate=0.002,
    )
    messages = list(simulate(spec))
    log.info(
        "simulated %d messages from %d sites over %.0f h (site %s offline for 6 h, sending its "
        "backlog late)",
        len(messages),
        sites,
        hours,
        messages[0][0].split("/")[1],
    )
    with (
        tempfile.TemporaryDirectory(prefix="data-acq-demo-") as tmp,
        LocalMosquitto(Path(tmp), extra=BROKER_CONFIG) as broker,
    ):
        log.info("private Mosquitto (pid %s) on 127.0.0.1:%d", broker.process.pid, broker.port)  # type: ignore[union-attr]
        drain_settings = BrokerSettings(host="127.0.0.1", port=broker.port, client_id="demo-drain")
        drain = Drain(drain_settings, None, store, DrainLimits(idle_exit_s=3.0))
        # the drain's first connection creates its persistent session; what is published while
        # it is away is queued for it, as for a drain run started by the sensor
        Drain(drain_settings, None, store, DrainLimits(idle_exit_s=0.2)).run()
        publisher = BrokerSettings(host="127.0.0.1", port=broker.port, client_id="demo-loggers")
        with Bars() as bars:
            publish_all(
                publisher,
                None,
                iter(messages),
                on_progress=lambda n: bars("published", n, len(messages), "messages"),
            )
            drain.on_flush = lambda s: bars(
                "drained", min(s.stored, len(messages)), len(messages), "messages"
            )
            stats = drain.run()
    log.info(
        "drained %d messages into %d raw objects, %d acknowledged",
        stats.stored,
        stats.objects,
        stats.acknowledged,
    )
    with Bars() as bars:
        result = process(store, progress=bars, workers=2)
        charts = [key for day in result.dates for key in write_charts(store, day, bars)]
    log.info("drew %d daily charts", len(charts))
    _report(output / WAREHOUSE_FILE, len(messages), stats.stored, output)


def _report(warehouse: Path, published: int, stored: int, output: Path) -> None:
    with (
        duckdb.connect(str(warehouse), read_only=True) as con,
        pl.Config(
            tbl_rows=40,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
            fmt_str_lengths=70,
            tbl_width_chars=140,
        ),
    ):

        def table(sql: str) -> pl.DataFrame:
            return con.sql(sql).pl()

        print(f"\nmessages: {published} published, {stored} stored in raw (redeliveries included)")
        print("\nenergy per site and day (kWh; PV yield and grid export):")
        print(
            table(
                """select site, date,
                     round(sum(energy) filter (where field = 'total_yield') / 1000, 1) as pv_kwh,
                     round(sum(energy) filter (where field = 'E_exported') / 1000, 1) as export_kwh,
                     sum(resets) as counter_resets
                   from energy_daily group by site, date order by site, date"""
            )
        )
        print("\ncompleteness (payloads received of one a minute):")
        print(
            table(
                """select site, date, received, expected, ratio, largest_gap_minutes
                   from completeness_daily order by site, date"""
            )
        )
        print("\nalarms (device status level > 0):")
        print(
            table(
                """select site, device, content, level, count(*) as minutes,
                     min(time) as first, max(time) as last
                   from device_status where level > 0 group by all order by site, first"""
            )
        )
        print("\nrejects:")
        print(
            table(
                "select reason, count(*) as count from rejects group by reason order by count desc"
            )
        )
        counts = table(
            """select (select count(*) from readings) as readings,
                      (select count(*) from device_status) as status_readings,
                      (select count(distinct site) from readings) as sites"""
        )
        print(
            f"\n{counts.row(0)[0]} readings and {counts.row(0)[1]} status readings from {counts.row(0)[2]} sites"
        )
    print(
        f"\noutputs under {output}/:\n"
        f"  raw/        exactly what was received (gzip NDJSON by receive date and hour)\n"
        f"  curated/    readings, device_status, pipeline_payloads, rejects, readings_15min,\n"
        f"              energy_daily, completeness_daily (by measurement date)\n"
        f"  curated/charts/  a daily chart per site (PNG), e.g. {output / 'curated' / 'charts'}\n"
        f"  {WAREHOUSE_FILE}  views over curated/ for SQL: duckdb {warehouse}"
    )
