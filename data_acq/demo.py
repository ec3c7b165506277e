"""The main job on local, embedded defaults: a private broker, simulated sites, acquisition.

At this stage of the project it shows the Foundation end to end: payloads published with QoS 1
to a private Mosquitto, received by the same subscriber `data-acq listen` uses, and turned into
the pipeline format and tidy Parquet tables.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import polars as pl

from data_acq.broker import publish_all, run_subscriber
from data_acq.contract import Rejection, parse_payload
from data_acq.flatten import flatten
from data_acq.local_broker import LocalMosquitto
from data_acq.messages import Message
from data_acq.pipeline_format import to_pipeline
from data_acq.settings import BrokerSettings
from data_acq.simulate import SimulationSpec, simulate

log = logging.getLogger(__name__)


def run_demo(output: Path, sites: int = 5, hours: float = 6.0, seed: int = 42) -> None:
    output.mkdir(parents=True, exist_ok=True)
    spec = SimulationSpec(
        sites=sites, minutes=int(hours * 60), seed=seed, outage_minutes=60, malformed_rate=0.002
    )
    sent = list(simulate(spec))
    received: list[Message] = []
    lock = threading.Lock()

    def on_message(message: mqtt.MQTTMessage) -> None:
        with lock:
            received.append(Message(message.topic, bytes(message.payload), len(received) + 1))

    # Mosquitto drops QoS 1 messages past 1000 queued for a slow subscriber by default; the
    # demo's broker is sized like production (docs/operations.md once the drain lands).
    with (
        tempfile.TemporaryDirectory(prefix="data-acq-demo-") as tmp,
        LocalMosquitto(Path(tmp), extra=("max_queued_messages 0",)) as mq,
    ):
        broker = BrokerSettings(host="127.0.0.1", port=mq.port, client_id="data-acq-demo")
        log.info("private Mosquitto (pid %s) listening on 127.0.0.1:%d", mq.process.pid, mq.port)
        stop = threading.Event()
        subscriber = threading.Thread(
            target=run_subscriber, args=(broker, None, on_message, stop), daemon=True
        )
        subscriber.start()
        time.sleep(0.5)  # let the subscription settle before publishing
        publisher = BrokerSettings(host="127.0.0.1", port=mq.port, client_id="data-acq-demo-sim")
        log.info("publishing %d simulated messages from %d sites (QoS 1)", len(sent), sites)
        publish_all(publisher, None, iter(sent), on_progress=lambda n: log.info("published %d", n))
        _wait_until_quiet(received, len(sent))
        stop.set()
        subscriber.join(timeout=10)
    log.info("received %d of %d messages", len(received), len(sent))

    pipeline_path = output / "pipeline.ndjson"
    with pipeline_path.open("w") as out:
        for message in received:
            parsed = parse_payload(message.payload)
            if not isinstance(parsed, Rejection):
                out.write(json.dumps(to_pipeline(parsed), separators=(",", ":")) + "\n")
    tables = flatten(received)
    tables.readings.write_parquet(output / "readings.parquet")
    tables.status.write_parquet(output / "status.parquet")
    tables.rejects.write_parquet(output / "rejects.parquet")
    _print_report(tables, len(sent), len(received), output, pipeline_path)


def _wait_until_quiet(received: list[Message], expected: int, quiet_s: float = 5.0) -> None:
    """Until everything arrived, or nothing more arrived for `quiet_s` seconds."""
    count, last_change = len(received), time.monotonic()
    while len(received) < expected and time.monotonic() - last_change < quiet_s:
        time.sleep(0.1)
        if len(received) != count:
            count, last_change = len(received), time.monotonic()


def _print_report(tables, sent: int, received: int, output: Path, pipeline_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pl.Config(tbl_rows=20, tbl_hide_dataframe_shape=True, tbl_width_chars=120):
        print(f"\nmessages: {sent} published, {received} received")
        print(f"payloads: {tables.accepted} accepted, {tables.rejected_payloads} rejected")
        first = pipeline_path.read_text().split("\n", 1)[0]
        print(
            f"\nfirst payload in the pipeline format:\n{first[:400]}{'...' if len(first) > 400 else ''}"
        )
        print("\nreadings per site:")
        print(
            tables.readings.group_by("site")
            .agg(
                payloads=pl.col("time").n_unique(),
                readings=pl.len(),
                first=pl.col("time").min(),
                last=pl.col("time").max(),
            )
            .sort("site")
        )
        if tables.status.height:
            alarms = tables.status.filter(pl.col("level") > 0)
            print(f"\nstatus readings: {tables.status.height}, alarms (level > 0): {alarms.height}")
        print("\nrejects by reason:")
        print(tables.rejects.group_by("reason").len().sort("len", descending=True))
    print(
        f"\noutputs in {output}/: pipeline.ndjson, readings.parquet, status.parquet, rejects.parquet"
    )
