"""Processing on real parts: simulated sites through Mosquitto and the drain into the warehouse,
checked against counts computed independently from what was sent."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
from deltalake import DeltaTable

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.aggregates import (
    COUNTER_FIELDS,
    completeness_daily,
    completeness_partials,
    covered_ratios,
    energy_daily,
    energy_partials,
)
from data_acq.curate.tables import CuratedTables
from data_acq.curate.units import PREVIEW_ROWS, UnitResult, preview_rows
from data_acq.curate.warehouse import connect_s3
from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.layout import CURATED
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.settings import BrokerSettings
from data_acq.storage import LocalStore, ObjectStore, S3Store
from data_acq_tests.conftest import MotoS3
from data_acq_tests.drain_helpers import start_drain

Sent = list[tuple[str, bytes]]


def _expected(sent: Sent) -> tuple[set, set, dict]:
    """Readings and status keys, and counter increases per (site, date, vid, field), by json."""
    readings: set[tuple] = set()
    status: set[tuple] = set()
    counters: dict[tuple, dict[int, float]] = defaultdict(dict)
    for topic, body in sent:
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("r"), list):
            continue
        t, site = payload.get("t"), topic.split("/")[1]
        if not isinstance(t, int) or isinstance(t, bool):
            continue
        for r in payload["r"]:
            if not isinstance(r, dict) or not isinstance(r.get("_vid"), str):
                continue
            for k, v in r.items():
                if k.startswith("_") or v is None:
                    continue
                readings.add((site, t, r["_vid"], r.get("_d"), k))
                if k in COUNTER_FIELDS:
                    counters[(site, r["_vid"], r.get("_d"), k)][t] = v
            for s in r.get("_s", []):
                status.add((site, t, r["_vid"], r.get("_d"), s["c"], s["l"]))
    energy: dict[tuple, float] = defaultdict(float)
    for (site, vid, _device, field), series in counters.items():
        times = sorted(series)
        for before, after in itertools.pairwise(times):
            day_before = datetime.fromtimestamp(before, UTC).date()
            day = datetime.fromtimestamp(after, UTC).date()
            energy[(site, day, vid, field)] += 0.0
            if day - day_before <= timedelta(days=1):  # the interval over midnight: its end's day
                energy[(site, day, vid, field)] += max(series[after] - series[before], 0)
    return readings, status, energy


def _messages() -> Sent:
    """Four sites over two days with duplicates, malformed messages and an outage whose backlog
    arrives hours late; then one site's backlog from three days earlier."""
    spec = SimulationSpec(
        sites=4,
        start=datetime(2024, 10, 12, 20, tzinfo=UTC),
        minutes=8 * 60,
        seed=12,
        duplicate_rate=0.02,
        outage_minutes=150,
        malformed_rate=0.01,
    )
    old = SimulationSpec(
        sites=1, start=datetime(2024, 10, 9, 10, tzinfo=UTC), minutes=90, seed=12, outage_sites=0
    )
    # mosquitto_pub -l sends one message per line: an empty payload cannot be written as one
    return [m for m in [*simulate(spec), *simulate(old)] if m[1]]


def _mosquitto_pub(port: int, messages: Sent) -> None:
    """Publish with Debian's mosquitto_pub (QoS 1): one process per topic, each site's messages
    in the order the simulator delivers them (its late backlog last)."""
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for topic, body in messages:
        by_topic[topic].append(body)
    for topic, bodies in by_topic.items():
        subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-l"],
            input=b"\n".join(bodies) + b"\n",
            check=True,
            timeout=60,
        )


def _warehouse_counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            table: con.execute(f"select count(*) from {table}").fetchone()[0]  # type: ignore[index]
            for table in ("readings", "device_status")
        }


def test_mosquitto_drain_process_warehouse_is_exact(tmp_path: Path) -> None:
    sent = _messages()
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq", extra=("max_queued_messages 100000",)) as broker:
        settings = BrokerSettings(host="127.0.0.1", port=broker.port, client_id="drain-process")
        drain = start_drain(settings, store, until=len(sent))
        _mosquitto_pub(broker.port, sent)
        drain.join()
    result = process(store)
    assert date(2024, 10, 9) in result.dates  # the old backlog's date
    assert result.staged is not None and result.staged.messages >= len(sent)
    warehouse = store.root / "warehouse.duckdb"
    readings, status, energy = _expected(sent)
    assert status  # the simulated sites include gensets with status readings
    assert _warehouse_counts(warehouse) == {"readings": len(readings), "device_status": len(status)}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        got = {
            (site, day, vid, field): value
            for site, day, vid, field, value in con.execute(
                "select site, date, vid, field, energy from energy_daily"
            ).fetchall()
        }
        assert con.execute("select count(*) from rejects").fetchone()[0] > 0  # type: ignore[index]
    assert got.keys() == energy.keys()
    for key, value in energy.items():
        assert abs(got[key] - value) < 1e-6, key
    assert sum(u.duplicates_removed for u in result.units) > 0  # duplicates were delivered


def _put_raw(store: ObjectStore, messages: Sent, received: datetime) -> None:
    lines = (encode_record(topic, body, received, 1) for topic, body in messages)
    store.put_new(raw_key(received, "test"), encode_object(lines))


def test_a_late_backlog_refreshes_exactly_its_dates(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    today = SimulationSpec(sites=2, start=datetime(2024, 10, 15, tzinfo=UTC), minutes=120, seed=3)
    _put_raw(store, list(simulate(today)), datetime(2024, 10, 15, 2, tzinfo=UTC))
    first = process(store)
    assert first.dates == [date(2024, 10, 15)]
    today_files = _date_files(store, "readings", date(2024, 10, 15))
    assert today_files

    backlog = SimulationSpec(
        sites=2, start=datetime(2024, 10, 12, 23, tzinfo=UTC), minutes=120, seed=3
    )
    _put_raw(store, list(simulate(backlog)), datetime(2024, 10, 15, 2, 5, tzinfo=UTC))
    second = process(store)
    assert second.staged is not None
    assert sorted({d for d, _ in second.staged.units}) == [date(2024, 10, 12), date(2024, 10, 13)]
    assert second.dates == [date(2024, 10, 12), date(2024, 10, 13)]
    assert _date_files(store, "readings", date(2024, 10, 15)) == today_files  # 10-15 untouched
    again = process(store)  # nothing new: nothing to do
    assert again.staged is None and again.units == []
    rebuilt = process(store, [date(2024, 10, 15)])  # idempotent rebuild on request
    assert _readings_written(rebuilt) == _readings_written(first) > 0
    assert _date_files(store, "readings", date(2024, 10, 15)).isdisjoint(today_files)


def _date_files(store: LocalStore, table: str, day: date) -> set[str]:
    """The files the table's current snapshot holds for the date."""
    return set(
        DeltaTable(str(store.root / CURATED / table)).file_uris(
            file_pruning_predicate=[("date", "=", day.isoformat())]
        )
    )


def _readings_written(result: object) -> int:
    return sum(u.rows.get("readings", 0) for u in result.units)  # type: ignore[attr-defined]


def test_the_same_pipeline_on_s3_with_views_read_through_httpfs(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="process-bucket")  # type: ignore[attr-defined]
    s3 = S3Store(client, "process-bucket", "acq")
    local = LocalStore(tmp_path / "store")
    messages = list(simulate(SimulationSpec(sites=2, minutes=90, seed=5, malformed_rate=0.02)))
    received = datetime(2024, 10, 12, 2, tzinfo=UTC)
    for store in (s3, local):
        _put_raw(store, messages, received)
    on_s3, on_disk = process(s3), process(local)
    assert [(u.unit, u.rows) for u in on_s3.units] == [(u.unit, u.rows) for u in on_disk.units]
    for table in ("energy_daily", "readings"):  # the same Delta tables, read from S3
        from_s3, from_disk = (
            CuratedTables(store).read(table, date(2024, 10, 12)) for store in (s3, local)
        )
        assert from_s3.height > 0 and from_s3.sort(pl.all()).equals(from_disk.sort(pl.all()))
    # the warehouse: views over s3:// paths, uploaded beside the data, read with httpfs
    assert on_s3.warehouse == "s3://process-bucket/acq/warehouse.duckdb"
    copy = tmp_path / "from-s3.duckdb"
    copy.write_bytes(s3.get("warehouse.duckdb"))
    counts = "select (select count(*) from readings), (select count(*) from energy_daily)"
    with duckdb.connect(str(copy), read_only=True) as a:
        connect_s3(a)
        from_s3 = a.execute(counts).fetchone()
    with duckdb.connect(str(local.root / "warehouse.duckdb"), read_only=True) as b:
        assert from_s3 == b.execute(counts).fetchone() and from_s3[0] > 0  # type: ignore[index]
    # a later date: the views see it at once; the file is not written again
    spec = SimulationSpec(sites=2, start=datetime(2024, 10, 14, tzinfo=UTC), minutes=30, seed=5)
    _put_raw(s3, list(simulate(spec)), datetime(2024, 10, 14, 1, tzinfo=UTC))
    assert process(s3).warehouse is None
    with duckdb.connect(str(copy), read_only=True) as con:
        connect_s3(con)
        days = con.execute("select distinct date from readings order by date").fetchall()
    assert [d for (d,) in days] == [date(2024, 10, 12), date(2024, 10, 14)]


def test_an_open_analyst_session_never_blocks_and_sees_new_data(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=2, minutes=60, seed=8)
    _put_raw(store, list(simulate(spec)), datetime(2024, 10, 12, 2, tzinfo=UTC))
    process(store)
    with duckdb.connect(str(store.root / "warehouse.duckdb"), read_only=True) as analyst:
        before = analyst.execute("select count(*) from readings").fetchone()
        later = SimulationSpec(sites=2, start=datetime(2024, 10, 13, tzinfo=UTC), minutes=60)
        _put_raw(store, list(simulate(later)), datetime(2024, 10, 13, 2, tzinfo=UTC))
        assert process(store).dates == [date(2024, 10, 13)]  # the session is still open
        after = analyst.execute("select count(*) from readings").fetchone()
    assert before is not None and after is not None and after[0] > before[0] > 0


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "site": pl.String,
            "time": pl.Datetime("us", "UTC"),
            "vid": pl.String,
            "device": pl.String,
            "field": pl.String,
            "value": pl.Float64,
        },
        orient="row",
    )


def _hourly(frame: pl.DataFrame, partials: object) -> pl.DataFrame:
    """Per-hour partials, as units keep them."""
    hours = frame.with_columns(hour=pl.col("time").dt.hour().cast(pl.Int64))
    return pl.concat(
        [
            partials(part.drop("hour")).with_columns(hour=pl.lit(hour, pl.Int64))  # type: ignore[operator]
            for (hour,), part in hours.partition_by("hour", as_dict=True).items()
        ]
    )


def test_a_preview_does_not_keep_the_frame_it_was_cut_from_alive() -> None:
    """A run keeps every unit's result, previews included: they must own their few rows. (As
    `head` slices they held each unit's last hour alive: a 3,000-site day grew to 3.1 GB.)"""

    def rss_mib() -> float:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    before = rss_mib()
    kept = []
    for _ in range(6):  # ~90 MiB each: as slices, 540 MiB would stay
        frame = pl.DataFrame({"value": pl.int_range(4_000_000, eager=True)})
        frame = frame.with_columns(site=pl.col("value").cast(pl.String))
        kept.append(preview_rows(frame))
        del frame
    assert [p.height for p in kept] == [PREVIEW_ROWS] * 6
    assert kept[-1]["site"].to_list() == [str(n) for n in range(PREVIEW_ROWS)]
    assert rss_mib() - before < 250


def test_energy_counts_increases_and_treats_a_drop_as_a_reset() -> None:
    t0 = datetime(2024, 10, 12, 10, 58, tzinfo=UTC)  # across an hour's end
    values = [100.0, 110.0, 5.0, 15.0, 15.0]  # replaced after the second reading
    readings = _frame(
        [
            ("s", t0 + timedelta(minutes=i), "inv", "pv", "total_yield", v)
            for i, v in enumerate(values)
        ]
        + [("s", t0, "inv", "pv", "P_total", 999.0)]  # not a counter
    )
    partials = _hourly(readings, energy_partials)
    out = energy_daily(partials, partials.clear(), date(2024, 10, 12))
    assert out.select("site", "vid", "field", "energy", "resets").rows() == [
        ("s", "inv", "total_yield", 20.0, 1)
    ]


def test_the_interval_over_midnight_counts_on_the_day_it_ends() -> None:
    midnight = datetime(2024, 10, 13, tzinfo=UTC)
    yesterday = _frame([("s", midnight - timedelta(minutes=1), "inv", "pv", "E", 1000.0)])
    today = _frame(
        [("s", midnight + timedelta(minutes=m), "inv", "pv", "E", 1010.0 + m) for m in range(3)]
    )
    day = date(2024, 10, 13)
    partials = _hourly(today, energy_partials)
    alone = energy_daily(partials, partials.clear(), day)
    assert alone["energy"].to_list() == [2.0]  # without the day before: its own steps only
    both = energy_daily(_hourly(today, energy_partials), _hourly(yesterday, energy_partials), day)
    assert both.select("energy", "resets", "readings").rows() == [(12.0, 0, 3)]


def test_completeness_counts_minutes_and_lists_gaps() -> None:
    day = date(2024, 10, 12)
    start = datetime(2024, 10, 12, tzinfo=UTC)
    # a 30-minute gap inside an hour, one of 90 across three hours, 10 minutes at the end
    minutes = [
        m
        for m in range(1440)
        if not 600 <= m < 630 and not 890 <= m < 980 and m < 1430 and m != 100
    ]
    payloads = pl.DataFrame(
        {
            "site": ["s"] * len(minutes),
            "time": [start + timedelta(minutes=m, seconds=7) for m in minutes],
        },
        schema={"site": pl.String, "time": pl.Datetime("us", "UTC")},
    )
    row = completeness_daily(_hourly(payloads, completeness_partials), day).row(0, named=True)
    received = 1440 - 30 - 90 - 10 - 1
    assert (row["expected"], row["received"], row["largest_gap_minutes"]) == (1440, received, 90)
    assert row["ratio"] == round(received / 1440, 4)
    assert row["gaps"] == [
        {"start": start + timedelta(minutes=600), "minutes": 30},
        {"start": start + timedelta(minutes=890), "minutes": 90},
        {"start": start + timedelta(minutes=1430), "minutes": 10},
    ]
    assert row["last_time"] == start + timedelta(minutes=1429, seconds=7)


def test_the_completeness_check_judges_the_minutes_the_data_covers() -> None:
    """A day whose data began at 19:50 (a new deployment, the UI demo's first day) is complete
    for a site that reported every minute since; a site that reported every other minute is
    not, and neither is one that stopped an hour before the others."""
    start = datetime(2024, 10, 12, 19, 50, tzinfo=UTC)
    sites = {"every": range(250), "half": range(0, 250, 2), "stopped": range(190)}
    payloads = pl.DataFrame(
        [(site, start + timedelta(minutes=m)) for site, ms in sites.items() for m in ms],
        schema={"site": pl.String, "time": pl.Datetime("us", "UTC")},
        orient="row",
    )
    ratios = covered_ratios(_hourly(payloads, completeness_partials))
    assert ratios == {"every": 1.0, "half": 0.5, "stopped": 0.76}
    assert covered_ratios(_hourly(payloads, completeness_partials).clear()) == {}


def test_silent_sites_are_those_that_stopped_before_the_day_ended() -> None:
    day = date(2024, 10, 12)
    built = UnitResult(
        day,
        0,
        last_payload={
            "all-day": datetime(2024, 10, 12, 23, 59, tzinfo=UTC),
            "stopped": datetime(2024, 10, 12, 14, 0, tzinfo=UTC),
        },
    )
    later = datetime(2024, 11, 1, tzinfo=UTC)
    assert built.silent_sites(later) == {"stopped": 599}
    # on the day itself, at 14:30, nobody has been silent for more than an hour yet
    assert built.silent_sites(datetime(2024, 10, 12, 14, 30, tzinfo=UTC)) == {}
    # a backlog still arriving (every site's data ends at 14:00 so far): nobody fell silent
    catching_up = UnitResult(
        day,
        0,
        last_payload={
            "a": datetime(2024, 10, 12, 14, 0, tzinfo=UTC),
            "b": datetime(2024, 10, 12, 13, 58, tzinfo=UTC),
        },
    )
    assert catching_up.silent_sites(later) == {}
    catching_up.last_payload["c"] = datetime(2024, 10, 12, 12, 0, tzinfo=UTC)
    assert catching_up.silent_sites(later) == {"c": 120}


def test_pipeline_documents_go_to_sqs_once(moto_s3: MotoS3, tmp_path: Path) -> None:
    """`data-acq process` with PIPELINE_SQS_QUEUE_URL, against moto's server (SQS and S3 alike)."""
    import boto3

    sqs = boto3.client("sqs", endpoint_url=moto_s3.endpoint, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="pipeline")["QueueUrl"]
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=2, minutes=40, seed=5, duplicate_rate=0.1, outage_sites=0)
    cut = int(spec.start.timestamp()) + 30 * 60
    messages = list(simulate(spec))
    early = [m for m in messages if json.loads(m[1])["t"] < cut]
    late = [m for m in messages if json.loads(m[1])["t"] >= cut]
    _put_raw(store, early, datetime(2024, 10, 12, 2, tzinfo=UTC))
    env = {**os.environ, "DATA_ACQ_STORAGE": str(store.root), "PIPELINE_SQS_QUEUE_URL": queue}
    command = [sys.executable, "-m", "data_acq.cli", "process"]
    first = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr
    bodies = []
    while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        bodies += [json.loads(m["Body"]) for m in batch]
        sqs.delete_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in batch],
        )
    assert len(bodies) == 2 * 30  # each payload once, duplicate deliveries removed
    assert all(set(body) == {"time", "data"} for body in bodies)
    # late data for the same date: only the new documents are sent
    _put_raw(store, late, datetime(2024, 10, 12, 3, tzinfo=UTC))
    second = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert b"sent 20 new pipeline documents to SQS" in second.stderr
