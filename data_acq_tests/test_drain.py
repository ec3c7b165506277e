"""The drain against real Mosquitto processes: at least once, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_acq.acquire.broker import BrokerError
from data_acq.acquire.drain import Drain, DrainError, DrainLimits
from data_acq.acquire.raw import raw_keys, read_raw_object
from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.settings import BrokerSettings, Settings
from data_acq.storage import LocalStore
from data_acq_tests.drain_helpers import (
    missing,
    publish_in_background,
    start_drain,
    stored,
    unique_messages,
)

PRODUCTION_QUEUE = ("max_queued_messages 100000",)


def _drain_settings(port: int, client_id: str, protocol: str = "5") -> BrokerSettings:
    return BrokerSettings(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        protocol=protocol,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_default_mosquitto_10k_at_1000_per_second(tmp_path: Path) -> None:
    """Mosquitto's defaults: 20 unacknowledged deliveries, 1000 queued; nothing may be dropped."""
    sent = unique_messages(10_000)
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq") as broker:
        drain = start_drain(_drain_settings(broker.port, "drain-10k"), store, until=10_000)
        publish_in_background(broker.port, sent, rate=1000).join(60)
        stats = drain.join()
        log = broker.log_file.read_text()
    assert missing(sent, store) == 0
    assert stats.messages == stats.stored == stats.acknowledged == 10_000
    assert stats.unacknowledged == 0
    assert "dropped" not in log.lower(), log


def test_sigkill_mid_stream_then_restart_loses_nothing(tmp_path: Path) -> None:
    sent = unique_messages(4_000)
    store_dir = tmp_path / "store"
    with LocalMosquitto(tmp_path / "mq", extra=PRODUCTION_QUEUE) as broker:
        env = {
            **os.environ,
            "MQTT_BROKER": "127.0.0.1",
            "MQTT_PORT": str(broker.port),
            "MQTT_CLIENT_ID": "drain-killed",
            "DATA_ACQ_STORAGE": str(store_dir),
        }
        command = [sys.executable, "-m", "data_acq.cli", "drain"]
        first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        _wait_for_line(first, b"subscribed to")
        publisher = publish_in_background(broker.port, sent, rate=2000)
        deadline = time.monotonic() + 20
        while not any(store_dir.rglob("*.ndjson.gz")) and time.monotonic() < deadline:
            time.sleep(0.01)  # kill it right after its first durable write
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        stored_before = sum(stored(LocalStore(store_dir)).values())
        assert 0 < stored_before < len(sent)  # killed in mid-stream
        publisher.join(60)
        second = subprocess.run(
            [*command, "--idle-exit", "1.5"], env=env, capture_output=True, timeout=120
        )
    assert second.returncode == 0, second.stderr
    assert missing(sent, LocalStore(store_dir)) == 0


def test_mosquitto_restart_mid_drain(tmp_path: Path) -> None:
    sent = unique_messages(3_000)
    store = LocalStore(tmp_path / "store")
    broker = LocalMosquitto(tmp_path / "mq", persistence=True, extra=PRODUCTION_QUEUE).start()
    try:
        drain = start_drain(
            _drain_settings(broker.port, "drain-restart"),
            store,
            until=lambda stats: stats.stored >= len(sent) and missing(sent, store) == 0,
        )
        publish_in_background(broker.port, sent[:1500], rate=1500).join(60)
        broker.stop()  # persistence: Mosquitto saves the sessions and their queues
        time.sleep(0.5)
        broker.start()
        publish_in_background(broker.port, sent[1500:], rate=1500).join(60)
        stats = drain.join()
    finally:
        broker.stop()
    assert missing(sent, store) == 0
    assert stats.stored == stats.messages >= len(sent)


def test_malformed_payloads_are_kept_byte_for_byte(tmp_path: Path) -> None:
    hostile = [
        b"\xff\xfe\x00 not utf-8 \x80\x81",
        b"{broken json",
        b"",
        b'{"t": 1728734580, "r": [{"_vid": "a", "P": 1}]}\n{"second": "line"}',
        b'  {"t": 1728734580, "r": []}  ',
        b'{"t":1728734580,"r":[{"_vid":"x","s":"\\u0000\\ud800 \xe2\x80\xae"}]}',
        "\u202eemoji 🌞 and accents éà".encode(),
        b"[1, 2, 3]",
        b"\r\n",
    ]
    sent = [("a/b827eb000001/u/data", body) for body in hostile]
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq") as broker:
        drain = start_drain(
            _drain_settings(broker.port, "drain-hostile"), store, until=len(hostile)
        )
        publish_in_background(broker.port, sent).join(30)
        stats = drain.join()
    assert sorted(stored(store)) == sorted(sent)
    assert stats.not_json >= 5


def test_meta_and_bridge_topics_land_beside_data(tmp_path: Path) -> None:
    sent = [
        ("a/b827eb000001/u/data", b'{"t": 1728734580, "r": []}'),
        ("a/b827eb000001/u/meta/boot_time", b"1728734000"),
        ("a/b827eb000001/u/meta/snap_rev", b"912"),
        ("a/b827eb000001/bridge_state", b"1"),
        ("a/b827eb000001/d/config", b'{"must": "not be consumed"}'),
    ]
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq") as broker:
        settings = BrokerSettings(
            host="127.0.0.1",
            port=broker.port,
            client_id="drain-topics",
            topics=("a/+/u/data", "a/+/u/meta/#", "a/+/bridge_state"),
        )
        drain = start_drain(settings, store, idle_exit_s=2)
        publish_in_background(broker.port, sent).join(30)
        stats = drain.join()
    assert sorted(stored(store)) == sorted(sent[:4])
    assert stats.topics == {"u/data": 1, "u/meta/#": 2, "bridge_state": 1}
    keys = raw_keys(store)
    assert keys and all(k.startswith("raw/date=") and "/hour=" in k for k in keys)
    record = next(read_raw_object(store, keys[0]))
    assert record.received_at is not None and record.received_at.tzinfo is not None


def test_mqtt_311_persistent_session(tmp_path: Path) -> None:
    sent = unique_messages(500)
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq", extra=PRODUCTION_QUEUE) as broker:
        settings = _drain_settings(broker.port, "drain-311", protocol="3.1.1")
        start_drain(settings, store, idle_exit_s=0.5).join()  # creates the session
        publish_in_background(broker.port, sent).join(30)  # queued while the drain is away
        stats = start_drain(settings, store, idle_exit_s=2).join()
    assert missing(sent, store) == 0 and stats.messages == len(sent)


def _wait_for_line(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 20) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while text not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stderr.readline()


def test_a_subscription_without_qos1_fails_the_run(tmp_path: Path) -> None:
    """A broker that grants only QoS 0 cannot redeliver: the drain refuses to run on it."""
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq", extra=("max_qos 0",)) as broker:
        settings = BrokerSettings(host="127.0.0.1", port=broker.port, client_id="drain-qos0")
        drain = Drain(settings, None, store, DrainLimits(max_seconds=20))
        started = time.monotonic()
        with pytest.raises(BrokerError, match=r"refused the QoS 1 subscription to a/\+/u/data"):
            drain.run()
    assert time.monotonic() - started < 10


def test_parallel_workers_share_a_queue_through_a_shared_subscription(tmp_path: Path) -> None:
    settings = Settings.from_env({"MQTT_CLIENT_ID": "acq", "DATA_ACQ_DRAIN_WORKERS": "2"})
    assert [(s.name, s.topics, s.client_id) for s in settings.subscriptions] == [
        ("main-1", ("$share/data-acq/a/+/u/data",), "acq-1"),
        ("main-2", ("$share/data-acq/a/+/u/data",), "acq-2"),
    ]
    sent = unique_messages(2_000)
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq", extra=PRODUCTION_QUEUE) as broker:
        members = [
            BrokerSettings(
                host="127.0.0.1", port=broker.port, client_id=s.client_id, topics=s.topics
            )
            for s in settings.subscriptions
        ]
        for member in members:  # create both persistent sessions, then go away
            start_drain(member, store, idle_exit_s=0.2).join()
        publish_in_background(broker.port, sent).join(60)  # queued, split between the two
        drains = [start_drain(member, store, idle_exit_s=2) for member in members]
        stats = [drain.join() for drain in drains]
    assert missing(sent, store) == 0
    assert sum(s.stored for s in stats) == len(sent)
    assert all(s.stored > len(sent) / 4 for s in stats)  # both did their share


class _BrokenCounter(Drain):
    """A drain whose per-message bookkeeping has a bug (it fails on the 3rd message)."""

    def _count(self, *args: object) -> None:
        if self.stats.messages == 2:
            raise ZeroDivisionError("a bug")
        super()._count(*args)  # type: ignore[arg-type]


def test_a_failing_callback_fails_the_run_and_loses_nothing(
    tmp_path: Path, mosquitto: LocalMosquitto
) -> None:
    """paho's thread would die quietly and the window end as a success; instead the run fails,
    what was stored before is acknowledged, and the rest is redelivered to the next run."""
    store = LocalStore(tmp_path / "store")
    broker = BrokerSettings(host="127.0.0.1", port=mosquitto.port, client_id="broken-callback")
    Drain(broker, None, store, DrainLimits(idle_exit_s=0.2)).run()  # makes the session
    sent = unique_messages(50)
    publish_in_background(mosquitto.port, sent).join(30)
    with pytest.raises(DrainError, match="an MQTT callback failed \\(ZeroDivisionError: a bug\\)"):
        _BrokenCounter(broker, None, store, DrainLimits(idle_exit_s=2, max_seconds=30)).run()
    Drain(broker, None, store, DrainLimits(idle_exit_s=1)).run()
    assert missing(sent, store) == 0
