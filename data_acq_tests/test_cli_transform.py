"""`data-acq transform` as a user runs it: a real subprocess on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from data_acq_tests.conftest import FIXTURES

CLI = [sys.executable, "-m", "data_acq.cli"]


def _run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=120)


def test_pipeline_format_of_the_contract_example() -> None:
    example = (FIXTURES / "example_payload.json").read_bytes().replace(b"\n", b"")
    result = _run("transform", stdin=example + b"\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["time"] == "2024-10-12T12:03:00+00:00"
    assert '"P_total":14400,' in lines[0] and '"freq":499.0,' in lines[0]
    assert doc["data"]["strato-1"]["disk_usage"] == 63.8


def test_rejects_are_reported_with_line_numbers_and_do_not_fail(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(
        b'a/s1/u/data\t{"t": 1728734580, "r": [{"_vid": "a", "P": 1}]}\n'
        b"a/s1/u/data\tnot json\n"
        b"\n"
        b'{"t": 1728734640, "r": [{"P": 2}, {"_vid": "b", "Q": 1.5}]}\n'
    )
    result = _run("transform", str(source))
    assert result.returncode == 0
    assert [json.loads(line)["data"] for line in result.stdout.decode().splitlines()] == [
        {"a": {"P": 1}},
        {"b": {"Q": 1.5}},
    ]
    err = result.stderr.decode()
    assert f"{source}:2: rejected: $: not JSON: Expecting value at line 1 column 1" in err
    assert f"{source}:4: skipped: $.r[0]: reading has no _vid" in err
    assert "3 messages, 2 accepted, 1 rejected, 1 readings or values skipped" in err


def test_readings_and_status_to_parquet(tmp_path: Path) -> None:
    sim = _run("simulate", "--sites", "3", "--hours", "2", "--seed", "4")
    assert sim.returncode == 0, sim.stderr
    lines = sim.stdout.splitlines()
    readings = tmp_path / "readings.parquet"
    result = _run("transform", "--to", "readings", "--output", str(readings), stdin=sim.stdout)
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(readings)
    assert frame.columns == [
        "site",
        "time",
        "vid",
        "device",
        "field",
        "value",
        "value_text",
        "received_at",
    ]
    assert frame["received_at"].null_count() == frame.height  # files carry no receive time
    assert frame["site"].n_unique() == 3
    assert frame.select(pl.struct("site", "time").n_unique()).item() == 3 * 120
    status = tmp_path / "status.parquet"
    result = _run("transform", "--to", "status", "--output", str(status), stdin=b"\n".join(lines))
    assert result.returncode == 0, result.stderr
    assert pl.read_parquet(status).columns == ["site", "time", "vid", "device", "content", "level"]


def test_a_file_larger_than_a_block_is_read_whole_by_span_and_by_pipe(tmp_path: Path) -> None:
    """A file goes to the workers as spans they read themselves, standard input as blocks of
    bytes (TRANSFORM_BLOCK, 8 MiB): both give every row, and rejects under their line numbers."""
    fields = ", ".join(f'"f{i}": {i}.5' for i in range(100))
    good = [
        f'a/s{n % 7}/u/data\t{{"t": {1728734580 + 60 * n}, "r": [{{"_vid": "v", {fields}}}]}}'
        for n in range(7_000)
    ]
    bad = {1, 3_500, 7_003}  # line numbers: first, in the middle, last
    lines = iter(good)
    data = "\n".join("not json" if n in bad else next(lines) for n in range(1, 7_004)).encode()
    assert len(data) > 8 << 20  # two blocks at least
    source = tmp_path / "in.txt"
    source.write_bytes(data + b"\n")
    outputs = {}
    for how, args, stdin in [("span", [str(source)], b""), ("pipe", [], data + b"\n")]:
        outputs[how] = tmp_path / f"{how}.parquet"
        result = _run(
            "transform", "--to", "readings", "--output", str(outputs[how]), *args, stdin=stdin
        )
        assert result.returncode == 0, result.stderr
        reported = [
            int(line.split(":")[1])
            for line in result.stderr.decode().splitlines()
            if ": rejected: " in line
        ]
        assert reported == sorted(bad), how
        assert "7003 messages, 7000 accepted, 3 rejected" in result.stderr.decode()
    span, pipe = (pl.read_parquet(outputs[how]) for how in ("span", "pipe"))
    assert span.height == 7_000 * 100
    assert span.sort("time", "field").equals(pipe.sort("time", "field"))


def test_usage_and_io_errors_set_the_exit_code(tmp_path: Path) -> None:
    missing = _run("transform", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1
    assert b"cannot read" in missing.stderr and b"Traceback" not in missing.stderr
    no_output = _run("transform", "--to", "readings")
    assert no_output.returncode == 1 and b"--output" in no_output.stderr
    bad_choice = _run("transform", "--to", "csv")
    assert bad_choice.returncode == 2
    unwritable = _run(
        "transform",
        "--to",
        "readings",
        "--output",
        str(tmp_path / "no" / "dir" / "x.parquet"),
        stdin=b'{"t": 1728734580, "r": []}\n',
    )
    assert unwritable.returncode == 1 and b"cannot write" in unwritable.stderr
