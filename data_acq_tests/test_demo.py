"""The README's run command, and `simulate --publish`, against real Mosquitto processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from data_acq.local_broker import LocalMosquitto


def test_demo_receives_everything_and_reports(tmp_path: Path) -> None:
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
            "2",
            "--output",
            str(out),
        ],
        capture_output=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = result.stdout.decode()
    published = int(report.split("messages: ")[1].split(" published")[0])
    assert f"messages: {published} published, {published} received" in report
    assert "rejects by reason" in report and str(out) in report
    readings = pl.read_parquet(out / "readings.parquet")
    assert readings["site"].n_unique() == 3
    accepted = int(report.split("payloads: ")[1].split(" accepted")[0])
    assert accepted >= 3 * 120  # every simulated minute of every site, plus any duplicates
    assert len((out / "pipeline.ndjson").read_text().splitlines()) == accepted


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
