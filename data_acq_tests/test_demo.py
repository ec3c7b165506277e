"""The README's run command, and `simulate --publish`, against real Mosquitto processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from data_acq.devtools.local_broker import LocalMosquitto


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_acq.cli",
            "demo",
            "--sites",
            "3",
            "--hours",
            "26",
            "--output",
            str(out),
        ],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = result.stdout.decode()
    published = int(report.split("messages: ")[1].split(" published")[0])
    stored = int(report.split("published, ")[1].split(" stored")[0])
    assert published > 3 * 26 * 60 and stored >= published
    for heading in ("energy per site and day", "completeness", "alarms", "rejects:"):
        assert heading in report
    with duckdb.connect(str(out / "warehouse.duckdb"), read_only=True) as con:
        sites, days = con.execute(
            "select count(distinct site), count(distinct date) from readings"
        ).fetchone()  # type: ignore[misc]
    assert (sites, days) == (3, 2)
    assert any((out / "raw").rglob("*.ndjson.gz")) and any((out / "curated").rglob("*.parquet"))


def test_simulate_publish_with_qos1(tmp_path: Path) -> None:
    with LocalMosquitto(tmp_path / "mq") as broker:
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-p",
                str(broker.port),
                "-q",
                "1",
                "-t",
                "a/+/u/data",
                "-C",
                "120",
                "-W",
                "60",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            time.sleep(0.5)
            env = {**os.environ, "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port)}
            pub = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "data_acq.cli",
                    "simulate",
                    "--sites",
                    "2",
                    "--hours",
                    "1",
                    "--duplicate-rate",
                    "0",
                    "--outage-sites",
                    "0",
                    "--publish",
                ],
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert pub.returncode == 0, pub.stderr
            assert b"published 120 messages" in pub.stderr
            out, _ = sub.communicate(timeout=60)
        finally:
            sub.kill()
    assert sub.returncode == 0  # it ended by receiving its 120 messages, not at its -W time-out
    assert len(out.splitlines()) == 120
