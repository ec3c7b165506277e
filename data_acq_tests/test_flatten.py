"""Polars flattening: nothing lost, nothing invented, late fields kept."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import polars as pl
import pytest

from data_acq.contract import parse_payload
from data_acq.curate.flatten import (
    READINGS_SCHEMA,
    STATUS_SCHEMA,
    flatten,
    iter_flatten_parallel,
    write_parquet,
)
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.messages import Message, encode_record, read_records
from data_acq.pipeline_format import to_pipeline
from data_acq_tests.conftest import FIXTURES


def _messages(spec: SimulationSpec) -> list[Message]:
    return [Message(topic, body, i) for i, (topic, body) in enumerate(simulate(spec))]


def _expected_counts(messages: list[Message]) -> tuple[int, int, int]:
    """Readings, status rows and unplaceable readings, counted with plain json."""
    readings = status = orphans = 0
    for message in messages:
        try:
            body = json.loads(message.payload)
        except ValueError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("r"), list):
            continue
        for reading in body["r"]:
            if "_vid" not in reading:
                orphans += 1
                continue
            readings += sum(
                1 for k, v in reading.items() if not k.startswith("_") and v is not None
            )
            status += len(reading.get("_s", []))
    return readings, status, orphans


def test_contract_example_flattens_to_every_field() -> None:
    body = (FIXTURES / "example_payload.json").read_bytes()
    tables = flatten([Message("a/b827eb2bb2a9/u/data", body, 1)])
    readings = tables.readings
    assert readings.schema == READINGS_SCHEMA
    assert readings.height == 99
    assert readings["site"].unique().to_list() == ["b827eb2bb2a9"]
    assert readings["time"].unique().to_list() == [datetime(2024, 10, 12, 12, 3, tzinfo=UTC)]
    row = readings.filter(pl.col("device") == "power_meter", pl.col("field") == "E_exported")
    assert row.select("vid", "value", "value_text").row(0) == ("power-meter", 1540509000.0, None)
    assert tables.device_status.height == 0 and tables.rejects.height == 0


def test_simulated_batch_counts_match_an_independent_count() -> None:
    messages = _messages(SimulationSpec(sites=4, minutes=600, seed=7, malformed_rate=0.01))
    readings, status, orphans = _expected_counts(messages)
    tables = flatten(messages, chunk_size=500)  # several chunks
    assert tables.readings.height == readings
    assert tables.device_status.height == status > 0
    assert tables.device_status.schema == STATUS_SCHEMA
    skipped = tables.rejects.filter(pl.col("time").is_not_null())
    assert skipped.height == orphans > 0
    rejected = tables.rejects.filter(pl.col("time").is_null())
    assert rejected.height == tables.messages - tables.accepted > 0


def test_text_and_boolean_values_go_to_value_text() -> None:
    body = json.dumps(
        {"t": 1728734580, "r": [{"_vid": "g", "mode": "auto", "on": True, "off": False, "n": 2}]}
    )
    readings = flatten([Message("a/x/u/data", body.encode())]).readings
    got = {r["field"]: (r["value"], r["value_text"]) for r in readings.iter_rows(named=True)}
    assert got == {
        "mode": (None, "auto"),
        "on": (None, "true"),
        "off": (None, "false"),
        "n": (2.0, None),
    }


def test_a_field_first_seen_deep_in_a_batch_is_kept() -> None:
    usual = {"t": 1728734580, "r": [{"_vid": "inv", "P": 1, "E": 2}]}
    late = {"t": 1728734640, "r": [{"_vid": "inv", "P": 1, "E": 2, "new_field": "x", "V": 230.5}]}
    lines = [
        encode_record("a/site/u/data", json.dumps(usual).encode(), datetime.now(UTC))
        for _ in range(40_000)
    ]
    lines.append(encode_record("a/site/u/data", json.dumps(late).encode(), datetime.now(UTC)))
    readings = flatten(read_records(lines)).readings
    assert readings.height == 80_004
    tail = readings.filter(pl.col("field").is_in(["new_field", "V"]))
    assert tail.select("field", "value", "value_text").rows() == [
        ("new_field", None, "x"),
        ("V", 230.5, None),
    ]


def test_rejects_point_back_to_the_message() -> None:
    messages = [
        Message("a/s1/u/data", b'{"t": 1728734580, "r": [{"P": 1}]}', 11),
        Message("a/s2/u/data", b"\xff", 12),
    ]
    rejects = flatten(messages).rejects
    assert rejects.select("ref", "site", "path", "reason").rows() == [
        (11, "s1", "$.r[0]", "reading has no _vid, so it cannot be placed"),
        (12, "s2", "$", "not UTF-8: invalid byte 0xff at offset 0"),
    ]


def test_empty_batch_has_the_schemas() -> None:
    tables = flatten([])
    assert tables.readings.schema == READINGS_SCHEMA and tables.readings.height == 0
    assert tables.messages == 0


def test_payloads_without_readings_add_no_rows() -> None:
    messages = [
        Message("a/s1/u/data", b'{"t": 1728734580, "r": []}'),
        Message("a/s2/u/data", b'{"t": 1728734580, "r": [{"_vid": "a", "P": 1}]}'),
        Message(
            "a/s3/u/data", b'{"t": 1728734580, "r": [{"_vid": "b"}, {"_vid": "c", "Q": null}]}'
        ),
        Message("a/s4/u/data", b'{"t": 1728734640, "r": [{"_vid": "d", "E": 7, "x": "y"}]}'),
    ]
    readings = flatten(messages).readings
    assert readings.select("site", "vid", "field").rows() == [
        ("s2", "a", "P"),
        ("s4", "d", "E"),
        ("s4", "d", "x"),
    ]


def test_pipeline_documents_and_receive_times_ride_along() -> None:
    received = datetime(2024, 10, 13, 1, 2, 3, tzinfo=UTC)
    example = (FIXTURES / "example_payload.json").read_bytes().replace(b"\n", b"")
    lines = [
        encode_record("a/b827eb2bb2a9/u/data", example, received),
        encode_record("a/b827eb2bb2a9/u/data", b"{oops", received),
    ]
    tables = flatten(read_records(lines), pipeline=True)
    assert tables.pipeline_payloads.height == 1
    row = tables.pipeline_payloads.row(0, named=True)
    assert row["site"] == "b827eb2bb2a9" and row["received_at"] == received
    assert json.loads(row["document"]) == to_pipeline(parse_payload(example))  # type: ignore[arg-type]
    assert '"P_total":14400,' in row["document"] and '"freq":499.0,' in row["document"]
    assert tables.readings["received_at"].unique().to_list() == [received]
    assert tables.rejects.select("ref", "received_at").rows() == [(1, received)]


def test_worker_processes_give_the_tables_one_process_gives() -> None:
    """Workers hand their tables over in parts (readings as one row per reading plus one per
    field); joined again they are the serial tables, rejects, statuses and documents included."""
    received = datetime(2024, 10, 13, 1, 2, 3, tzinfo=UTC)
    spec = SimulationSpec(sites=5, minutes=60, seed=11, malformed_rate=0.05)
    lines = [encode_record(topic, body, received) for topic, body in simulate(spec)]
    lines.insert(7, b"not a raw record\n")
    chunks = [lines[i : i + 60] for i in range(0, len(lines), 60)]
    sources = [partial(read_records, chunk, n * 60) for n, chunk in enumerate(chunks)]
    allocator = os.environ.get("_RJEM_MALLOC_CONF")  # workers get their own; put back after
    parallel = list(iter_flatten_parallel(sources, workers=2, pipeline=True))
    assert os.environ.get("_RJEM_MALLOC_CONF") == allocator
    serial = [flatten(source(), pipeline=True) for source in sources]
    assert len(parallel) == len(serial) == len(chunks) > 2
    for mine, theirs in zip(parallel, serial, strict=True):
        for name in ("readings", "device_status", "rejects", "pipeline_payloads"):
            assert getattr(mine, name).equals(getattr(theirs, name)), name
        assert (mine.messages, mine.accepted) == (theirs.messages, theirs.accepted)
    assert sum(t.device_status.height for t in parallel) > 0
    assert sum(t.rejects.height for t in parallel) > 1


def test_a_failed_parquet_write_leaves_no_file_under_the_name(tmp_path: Path) -> None:
    """A transform that fails or is interrupted midway must not leave a truncated file that
    looks like its output; an earlier complete file stays as it was."""
    frame = flatten(_messages(SimulationSpec(sites=2, minutes=5, seed=3))).readings
    out = tmp_path / "readings.parquet"

    def failing() -> Iterator[pl.DataFrame]:
        yield frame
        raise OSError("the input went away")

    with pytest.raises(OSError, match="went away"):
        write_parquet(failing(), out, READINGS_SCHEMA)
    assert list(tmp_path.iterdir()) == []
    assert write_parquet([frame, frame], out, READINGS_SCHEMA) == 2 * frame.height
    assert pl.read_parquet(out).height == 2 * frame.height
    with pytest.raises(OSError, match="went away"):
        write_parquet(failing(), out, READINGS_SCHEMA)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert pl.read_parquet(out).height == 2 * frame.height
