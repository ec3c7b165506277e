"""Real parts for the tests: Mosquitto processes on free ports, a test CA, an HTTPS server."""

from __future__ import annotations

import http.server
import logging
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import requests

from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.settings import BrokerSettings
from data_acq_tests.certs import TLSFiles, make_tls_files

CONTRACT = Path(__file__).resolve().parents[1].parent / "shared" / "contract"
FIXTURES = Path(__file__).parent / "fixtures"

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request

MQTT_USER = "logger-test"
MQTT_PASSWORD = "s3cr3t-Pa55-w0rd"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    """A plain, anonymous Mosquitto with the default queue and in-flight limits."""
    with LocalMosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@dataclass(frozen=True)
class SecureBroker:
    process: LocalMosquitto
    tls: TLSFiles

    def settings(self, **overrides: object) -> BrokerSettings:
        values: dict[str, object] = {
            "host": "localhost",
            "port": self.process.port,
            "username": MQTT_USER,
            "password": MQTT_PASSWORD,
            "ca_cert_file": str(self.tls.ca),
            "client_id": "data-acq-test",
        }
        values.update(overrides)
        return BrokerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def secure_mosquitto(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
) -> Iterator[SecureBroker]:
    """Mosquitto with TLS (the test CA) and a password file."""
    folder = tmp_path_factory.mktemp("mosquitto-tls")
    passwords = folder / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), MQTT_USER, MQTT_PASSWORD], check=True
    )
    broker = LocalMosquitto(
        folder,
        tls_files=(tls_files.ca, tls_files.server_cert, tls_files.server_key),
        password_file=passwords,
    )
    with broker:
        yield SecureBroker(broker, tls_files)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class HTTPSServer:
    root: Path
    port: int

    def url(self, name: str) -> str:
        return f"https://localhost:{self.port}/{name}"


@pytest.fixture
def https_server(
    tmp_path: Path, tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HTTPSServer]:
    """An HTTPS file server whose certificate requests trusts through REQUESTS_CA_BUNDLE."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: _Files(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files.ca))
    try:
        yield HTTPSServer(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class MotoS3:
    """moto's threaded S3 server on a free port; `stop()` and `start()` simulate an outage."""

    port: int
    server: object = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # type: ignore[attr-defined]
            self.server = None

    def client(self, attempts: int = 1) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(
                retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=2
            ),
        )


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoS3]:
    from data_acq.devtools.local_broker import free_port

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = MotoS3(free_port())
    s3.start()
    # moto keeps its state in the process, across servers (a restart keeps the buckets): each
    # test starts from nothing
    requests.post(f"{s3.endpoint}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    try:
        yield s3
    finally:
        s3.stop()


def receive_all(sqs: object, queue: str) -> list[tuple[str, str]]:
    """Every message waiting in an SQS queue, as (site attribute, body) strings, deleted once
    read: what a consumer of the pipeline feed would get."""
    got = []
    while batch := sqs.receive_message(  # type: ignore[attr-defined]
        QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages"):
        for message in batch:
            assert message["MessageAttributes"]["site"]["DataType"] == "String.json"
            got.append((message["MessageAttributes"]["site"]["StringValue"], message["Body"]))
        sqs.delete_message_batch(  # type: ignore[attr-defined]
            QueueUrl=queue,
            Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in batch],
        )
    return got


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """A table in one order whatever order it was written in, to compare two runs' outputs."""
    if "gaps" in frame.columns:  # lists of structs do not sort: compare them as text
        frame = frame.with_columns(
            pl.col("gaps").list.eval(pl.element().struct.json_encode()).list.join(";")
        )
    return frame.sort(pl.all())
