"""The analysts' history: curated Delta tables, closed dates compacted, readers never seeing a
half-written change, late data landing on its dates."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from dagster import instance_for_test
from deltalake import DeltaTable

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.cli import main
from data_acq.curate import compaction
from data_acq.curate.tables import SCHEMAS, SORT, CuratedTables, location, storage_options
from data_acq.curate.warehouse import connect
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.layout import CURATED
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.storage import LocalStore, ObjectStore, S3Store
from data_acq_tests.conftest import MotoS3, canonical

DAY = date(2024, 10, 12)
Sent = list[tuple[str, bytes]]


def _put_raw(store: ObjectStore, messages: Sent, received: datetime) -> None:
    lines = (encode_record(topic, body, received, 1) for topic, body in messages)
    store.put_new(raw_key(received, "test"), encode_object(lines))


def _files(store: ObjectStore, table: str, day: date) -> list[str]:
    """The files the table's current snapshot holds for the date."""
    return DeltaTable(location(store, table), storage_options=storage_options(store)).file_uris(
        file_pruning_predicate=[("date", "=", day.isoformat())]
    )


def _tables(store: LocalStore) -> dict[str, pl.DataFrame]:
    """Every table, every stored column, as analysts read it through the warehouse too; but a
    reject's raw object, whose name is random."""
    out = {name: pl.read_delta(str(store.root / CURATED / name)) for name in SCHEMAS}
    with connect(store.root / "warehouse.duckdb") as con:
        for name in SCHEMAS:
            out[f"view {name}"] = con.sql(f'select * from "{name}"').pl()
    return {name: canonical(frame.drop("source", strict=False)) for name, frame in out.items()}


def _stamp(body: bytes) -> datetime:
    return datetime.fromtimestamp(json.loads(body)["t"], UTC)


def _hourly_raw(store: ObjectStore, messages: Sent) -> None:
    """Each hour's payloads in a raw object received at the hour's end: small files, live-like."""
    by_hour: dict[datetime, Sent] = {}
    for topic, body in messages:
        by_hour.setdefault(_stamp(body).replace(minute=0, second=0), []).append((topic, body))
    for hour, batch in sorted(by_hour.items()):
        _put_raw(store, batch, hour + timedelta(hours=1))


def test_closed_dates_are_compacted_into_one_sorted_file_per_table(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=4, start=datetime(2024, 10, 12, tzinfo=UTC), minutes=8 * 60)
    _hourly_raw(store, list(simulate(spec)))
    tables = CuratedTables(store)
    for number in range(1, 9):  # eight refreshes, as the hours come in: a file per hour
        process(store)
        if number == 4:  # a date still open keeps its small files
            kept = compaction.upkeep(tables, now=datetime(2024, 10, 12, 23, tzinfo=UTC))
            assert kept.compacted == {}
    before = {name: tables.read(name, DAY) for name in SCHEMAS}
    assert len(_files(store, "readings", DAY)) == 1  # `process` compacted the closed date
    for name, frame in before.items():
        assert len(_files(store, name, DAY)) == (1 if not frame.is_empty() else 0), name
    readings = pl.read_parquet(_files(store, "readings", DAY)[0])
    assert readings.height == before["readings"].height > 0
    assert readings.select(pl.struct(SORT["readings"]).is_sorted()).item()
    # nothing left to do; the expiry deletes the files the compaction replaced
    done = compaction.upkeep(tables, retain=timedelta(0))
    assert done.compacted == {} and done.removed_files["readings"] >= 8
    on_disk = {p.name for p in (store.root / CURATED / "readings" / f"date={DAY}").iterdir()}
    assert on_disk == {Path(f).name for f in _files(store, "readings", DAY)}
    after = {name: tables.read(name, DAY) for name in SCHEMAS}
    for name in SCHEMAS:
        assert canonical(after[name]).equals(canonical(before[name])), name


def test_a_backlog_three_days_late_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """One site is offline on the 13th; its payloads arrive on the 16th, after the 13th was
    compacted. The result equals one run that had everything (same receive times)."""
    spec = SimulationSpec(sites=2, start=datetime(2024, 10, 12, 22, tzinfo=UTC), minutes=28 * 60)
    messages = list(simulate(spec))
    site = messages[0][0]
    offline = [
        (topic, body)
        for topic, body in messages
        if topic == site and _stamp(body).date() == date(2024, 10, 13)
    ]
    assert offline
    on_time = [m for m in messages if m not in offline]
    late = datetime(2024, 10, 16, 9, tzinfo=UTC)

    uninterrupted = LocalStore(tmp_path / "uninterrupted")
    _put_raw(uninterrupted, on_time, datetime(2024, 10, 14, 9, tzinfo=UTC))
    _put_raw(uninterrupted, offline, late)
    process(uninterrupted)

    store = LocalStore(tmp_path / "store")
    _put_raw(store, on_time, datetime(2024, 10, 14, 9, tzinfo=UTC))
    first = process(store)
    assert first.compacted is not None and date(2024, 10, 13) in first.compacted.dates
    compacted = set(_files(store, "readings", date(2024, 10, 13)))
    _put_raw(store, offline, late)
    second = process(store)
    # the backlog refreshed the 13th (and the 14th's energy, whose first interval starts in
    # it), and the 13th was compacted again: one new file, the old one replaced
    assert date(2024, 10, 13) in second.dates
    assert second.compacted is not None and second.compacted.compacted["readings"] == [
        date(2024, 10, 13)
    ]
    now = _files(store, "readings", date(2024, 10, 13))
    assert len(now) == 1 and not compacted & set(now)
    expected, got = _tables(uninterrupted), _tables(store)
    for name, frame in expected.items():
        assert got[name].equals(frame), name
    for name in ("energy_daily", "completeness_daily"):  # small: a month in one file
        table = DeltaTable(location(store, name))
        assert len(table.file_uris()) == 1 and table.to_pyarrow_table().num_rows > 0
        assert table.metadata().partition_columns == []


def test_an_analyst_sees_whole_snapshots_while_refreshes_and_a_compaction_run(
    tmp_path: Path,
) -> None:
    """Queries in a loop, through the warehouse's views and through Polars, while the date is
    rebuilt hour by hour (a commit each) and compacted, again and again: every answer is the
    same rows, never a duplicate or a gap."""
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=3, start=datetime(2024, 10, 12, tzinfo=UTC), minutes=6 * 60)
    _hourly_raw(store, list(simulate(spec)))
    process(store)
    tables = CuratedTables(store)
    expected = tables.read("readings", DAY)
    key = ["site", "time", "vid", "device", "field"]
    truth = (expected.height, expected.select(key).n_unique(), expected["value"].sum())
    assert truth[0] == truth[1] > 0

    sql = (
        "select count(*), count(distinct (site, time, vid, device, field)), sum(value) "
        "from readings"
    )
    answers: list[tuple[int, int, float]] = []
    writing = threading.Event()
    writing.set()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(2):
                process(store, [DAY])  # every hour replaced, a commit each, then compacted
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            writing.clear()

    writer = threading.Thread(target=write)
    with connect(store.root / "warehouse.duckdb") as con:
        writer.start()
        while writing.is_set():
            count, distinct, total = con.execute(sql).fetchone()  # type: ignore[misc]
            answers.append((count, distinct, total))
            frame = pl.read_delta(str(store.root / CURATED / "readings"))
            answers.append((frame.height, frame.select(key).n_unique(), frame["value"].sum()))
        writer.join()
    assert not failures
    assert len(answers) >= 10  # the reads really overlapped the writes
    for count, distinct, total in answers:
        assert (count, distinct) == truth[:2]
        assert abs(total - truth[2]) <= 1e-9 * abs(truth[2])
    assert len(_files(store, "readings", DAY)) == 1


def test_compact_command_and_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=2, start=datetime(2024, 10, 12, 20, tzinfo=UTC), minutes=6 * 60)
    _hourly_raw(store, list(simulate(spec)))
    process(store)
    # an hour rewritten as a late refresh would: the compacted file is replaced (its other
    # hours' rows rewritten unsorted, the hour's appended), and the date needs compacting again
    tables = CuratedTables(store)
    hour = tables.read("readings", DAY, hour=21)
    compacted = _files(store, "readings", DAY)
    tables.replace("readings", hour, DAY, 0, [21])
    assert _files(store, "readings", DAY) != compacted
    assert compaction.needs_compaction(tables, datetime.now(UTC)) == {"readings": [DAY]}
    monkeypatch.setenv("DATA_ACQ_STORAGE", str(store.root))
    assert main(["compact", "--retain-hours", "1"]) == 0
    assert compaction.needs_compaction(tables, datetime.now(UTC)) == {}

    from data_acq.definitions import defs

    tables.replace("readings", hour, DAY, 0, [21])
    with instance_for_test() as instance:
        run = (
            defs()
            .resolve_job_def("compact_tables")
            .execute_in_process(
                instance=instance,
                resources={"storage": _storage(store)},
            )
        )
        assert run.success
        observed = [
            e.asset_observation_data.asset_observation
            for e in run.all_events
            if e.event_type_value == "ASSET_OBSERVATION"
        ]
    assert [o.asset_key.path for o in observed] == [["readings"]]
    assert compaction.needs_compaction(tables, datetime.now(UTC)) == {}
    assert len(_files(store, "readings", DAY)) == 1


def test_compact_on_s3_then_with_s3_gone_fails_clearly(
    moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="history")  # type: ignore[attr-defined]
    store = S3Store(client, "history", "acq")
    spec = SimulationSpec(sites=2, start=datetime(2024, 10, 12, 20, tzinfo=UTC), minutes=3 * 60)
    _hourly_raw(store, list(simulate(spec)))
    for _ in range(3):
        process(store)
    tables = CuratedTables(store)
    assert len(_files(store, "readings", DAY)) == 1
    assert tables.read("readings", DAY).height > 0
    monkeypatch.setenv("DATA_ACQ_STORAGE", "s3://history/acq")
    assert main(["compact", "--retain-hours", "1"]) == 0
    moto_s3.stop()  # S3 goes away
    assert main(["compact"]) == 1
    err = capsys.readouterr().err
    assert "data-acq compact:" in err and "Traceback" not in err and "testing" not in err


def _storage(store: LocalStore) -> object:
    from data_acq.defs.resources import LocalStorage

    return LocalStorage(root=str(store.root))


def test_a_large_date_is_compacted_into_bounded_files_by_bucket_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past TARGET_BYTES a date is one file per contiguous range of buckets (so that late data
    rewrites only its range's file), each sorted, together the same rows."""
    store = LocalStore(tmp_path / "store")
    spec = SimulationSpec(sites=8, start=datetime(2024, 10, 12, 20, tzinfo=UTC), minutes=120)
    _hourly_raw(store, list(simulate(spec)))
    monkeypatch.setattr(compaction, "TARGET_BYTES", 8_000)  # a few KB a file
    process(store, buckets=4)
    tables = CuratedTables(store)
    files = _files(store, "readings", DAY)
    assert len(files) > 1
    ranges = []
    for path in files:
        part = pl.read_parquet(path)
        assert part.select(pl.struct("bucket", *SORT["readings"]).is_sorted()).item()
        ranges.append((part["bucket"].min(), part["bucket"].max()))
    ranges.sort()
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))  # disjoint
    assert compaction.needs_compaction(tables, datetime.now(UTC)) == {}
    everything = pl.concat([pl.read_parquet(path) for path in files])
    stored = pl.read_delta(location(store, "readings")).drop("date")  # the partition
    assert canonical(everything).equals(canonical(stored))
