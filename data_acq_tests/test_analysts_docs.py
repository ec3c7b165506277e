"""docs/analysts.md's examples, run as written against processed data: the DuckDB SQL through
the warehouse, the direct `delta_scan`, the Polars code, and the S3 query against moto."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.warehouse import connect, install_extensions
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.messages import encode_record
from data_acq.pipeline import process
from data_acq.storage import LocalStore, ObjectStore, S3Store
from data_acq_tests.conftest import MotoS3

DOC = Path(__file__).parents[1] / "docs" / "analysts.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _statements(block: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in block.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _fill(store: ObjectStore) -> None:
    spec = SimulationSpec(
        sites=3, start=datetime(2024, 10, 12, 9, tzinfo=UTC), minutes=180, malformed_rate=0.05
    )
    received = datetime(2024, 10, 12, 13, tzinfo=UTC)
    lines = (encode_record(topic, body, received, 1) for topic, body in simulate(spec))
    store.put_new(raw_key(received, "docs"), encode_object(lines))
    process(store)


def test_the_duckdb_and_polars_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _fill(LocalStore(tmp_path / "data" / "demo"))
    first, direct = _blocks(_section("DuckDB"), "sql")
    with connect("data/demo/warehouse.duckdb") as con:
        answers = [con.execute(statement).fetchall() for statement in _statements(first)]
    # energy, power and rejects have rows; three hours of three sites may have no gap or alarm
    assert len(answers) == 5 and answers[0] and answers[1] and answers[4]
    with duckdb.connect() as con:
        install_extensions(con)
        [(count,)] = con.execute(*_statements(direct)).fetchall()
    assert count > 0

    (code,) = _blocks(_section("Polars"), "python")
    names: dict[str, object] = {}
    exec(code, names)
    assert names["peaks"].height > 0 and names["daily_kwh"].height > 0  # type: ignore[attr-defined]


def test_the_s3_example_runs_against_s3(moto_s3: MotoS3, tmp_path: Path) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="analysts")  # type: ignore[attr-defined]
    store = S3Store(client, "analysts", "prefix")
    _fill(store)
    copy = tmp_path / "warehouse.duckdb"
    copy.write_bytes(store.get("warehouse.duckdb"))
    (block,) = _blocks(_section("S3"), "sql")
    *setup, query = _statements(block)
    assert any("create secret" in s for s in setup)  # connect() makes the session's secret
    with connect(copy, store) as con:
        assert con.execute(query).fetchall()
