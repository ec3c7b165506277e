"""`data-acq listen` end to end against real Mosquitto processes, with `mosquitto_pub`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_acq.acquire.broker import BrokerError, connect, make_client
from data_acq.devtools.local_broker import free_port
from data_acq.settings import BrokerSettings
from data_acq_tests.conftest import FIXTURES, MQTT_PASSWORD, MQTT_USER, SecureBroker

EXAMPLE = (FIXTURES / "example_payload.json").read_bytes().replace(b"\n", b"")


def _start_listen(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "data_acq.cli", "listen", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 20) -> bytes:
    """Read stderr until `text` appears (the listener logs when it has subscribed)."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stderr.fileno(), False)
    while text not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"never saw {text!r}; stderr so far: {seen!r}")
        chunk = proc.stderr.read()
        if chunk:
            seen += chunk
        else:
            time.sleep(0.05)
    return seen


def _stop(
    proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM
) -> tuple[bytes, bytes, int]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    return out, err, proc.returncode


def test_listen_tls_password_prints_pipeline_format(
    secure_mosquitto: SecureBroker, tmp_path: Path
) -> None:
    tls = secure_mosquitto.tls
    env = {
        "MQTT_BROKER": "localhost",
        "MQTT_PORT": str(secure_mosquitto.process.port),
        "MQTT_USERNAME": MQTT_USER,
        "MQTT_PASSWORD": MQTT_PASSWORD,
        "CA_CERT_FILE": str(tls.ca),
        "MQTT_CLIENT_ID": "listen-test",
    }
    proc = _start_listen(env, "--raw")
    early = _wait_for(proc, b"subscribed to a/+/u/data")
    port = str(secure_mosquitto.process.port)
    tls_pub = ["mosquitto_pub", "-h", "localhost", "-p", port, "--cafile", str(tls.ca)]
    tls_pub += ["-u", MQTT_USER, "-P", MQTT_PASSWORD, "-q", "1", "-t", "a/b827eb2bb2a9/u/data"]
    for body in (EXAMPLE.decode(), "{broken"):
        subprocess.run([*tls_pub, "-m", body], check=True, timeout=20)
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    out = b""
    while b"\n" not in out and time.monotonic() < deadline:
        out += proc.stdout.read() or b""
        time.sleep(0.05)
    time.sleep(0.5)  # the broken payload is reported after the good one
    rest, err, code = _stop(proc)
    out += rest
    err = early + err
    assert code == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["topic"] == "a/b827eb2bb2a9/u/data"
    assert json.loads(doc["raw"]) == json.loads(EXAMPLE)
    assert doc["pipeline"]["time"] == "2024-10-12T12:03:00+00:00"
    assert doc["pipeline"]["data"]["pv-inverter-1"]["P_total"] == 14400
    assert b"rejected: $: not JSON" in err
    assert MQTT_PASSWORD.encode() not in out + err


def test_listen_plain_mqtt_311(mosquitto) -> None:  # type: ignore[no-untyped-def]
    env = {"MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(mosquitto.port), "MQTT_PROTOCOL": "3.1.1"}
    proc = _start_listen(env)
    early = _wait_for(proc, b"subscribed to")
    subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(mosquitto.port),
            "-q",
            "1",
            "-t",
            "a/site1/u/data",
            "-m",
            '{"t": 1728734580, "r": [{"_vid": "a", "P": 5}]}',
        ],
        check=True,
        timeout=20,
    )
    time.sleep(1)
    out, err, code = _stop(proc, signal.SIGINT)
    assert code == 0, early + err
    assert json.loads(out) == {"time": "2024-10-12T12:03:00+00:00", "data": {"a": {"P": 5}}}


def _connect_error(broker: BrokerSettings, ca: Path | None) -> str:
    client = make_client(broker, ca)
    with pytest.raises(BrokerError) as info:
        connect(client, broker, timeout_s=10)
    return str(info.value)


def test_bad_password_is_a_clear_error(secure_mosquitto: SecureBroker) -> None:
    broker = secure_mosquitto.settings(password="wrong-password-123")
    message = _connect_error(broker, secure_mosquitto.tls.ca)
    assert "refused the connection" in message and "MQTT_PASSWORD" in message
    assert "wrong-password-123" not in message


def test_wrong_ca_is_a_clear_error(secure_mosquitto: SecureBroker) -> None:
    broker = secure_mosquitto.settings(ca_cert_file=str(secure_mosquitto.tls.other_ca))
    message = _connect_error(broker, secure_mosquitto.tls.other_ca)
    assert message.startswith(
        f"TLS verification of localhost:{secure_mosquitto.process.port} failed: "
    )
    assert "self-signed certificate in certificate chain" in message


def test_hostname_is_verified(secure_mosquitto: SecureBroker) -> None:
    """The server certificate names localhost only: the same server as 127.0.0.1 is refused."""
    broker = secure_mosquitto.settings(host="127.0.0.1")
    message = _connect_error(broker, secure_mosquitto.tls.ca)
    assert "TLS verification" in message and "IP address mismatch" in message


def test_plain_client_on_tls_port(secure_mosquitto: SecureBroker) -> None:
    broker = BrokerSettings(host="localhost", port=secure_mosquitto.process.port, client_id="x")
    message = _connect_error(broker, None)
    assert "dropped before the broker answered" in message or "cannot reach" in message


def test_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    message = _connect_error(BrokerSettings(host="127.0.0.1", port=port, client_id="x"), None)
    assert message == f"connection refused by 127.0.0.1:{port}: is the broker running on that port?"
    unknown = _connect_error(BrokerSettings(host="no-such-host.invalid", client_id="x"), None)
    assert "cannot resolve broker host 'no-such-host.invalid'" in unknown


def test_listen_exits_1_with_a_message_for_bad_credentials(secure_mosquitto: SecureBroker) -> None:
    env = {
        "MQTT_BROKER": "localhost",
        "MQTT_PORT": str(secure_mosquitto.process.port),
        "MQTT_USERNAME": MQTT_USER,
        "MQTT_PASSWORD": "not-the-password",
        "CA_CERT_FILE": str(secure_mosquitto.tls.ca),
    }
    result = subprocess.run(
        [sys.executable, "-m", "data_acq.cli", "listen"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert b"data-acq listen: broker localhost:" in result.stderr
    assert b"not-the-password" not in result.stderr and b"Traceback" not in result.stderr


def test_listen_reconnects_after_the_broker_restarts(tmp_path: Path) -> None:
    from data_acq.devtools.local_broker import LocalMosquitto

    broker = LocalMosquitto(tmp_path / "mq", persistence=True).start()
    try:
        env = {"MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port)}
        proc = _start_listen(env)
        seen = _wait_for(proc, b"subscribed to")
        pub = ["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t", "a/s/u/data", "-m"]
        subprocess.run(
            [*pub, '{"t": 1728734580, "r": [{"_vid": "a", "n": 1}]}'], check=True, timeout=20
        )
        broker.stop()
        seen += _wait_for(proc, b"connection lost")
        broker.start()
        seen += _wait_for(proc, b"subscribed to", timeout=30)
        subprocess.run(
            [*pub, '{"t": 1728734640, "r": [{"_vid": "a", "n": 2}]}'], check=True, timeout=20
        )
        time.sleep(1)
        out, err, code = _stop(proc)
    finally:
        broker.stop()
    assert code == 0, seen + err
    assert [json.loads(line)["data"]["a"]["n"] for line in out.decode().splitlines()] == [1, 2]
