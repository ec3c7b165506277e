"""The CA certificate: downloaded from a real local HTTPS server, checked, cached atomically."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from data_acq.acquire.ca_cert import CACertError, download_ca_cert, local_ca_cert, resolve_ca
from data_acq.defs.resources import CACertificate, build_resources
from data_acq.devtools.local_broker import free_port
from data_acq.settings import Settings
from data_acq_tests.certs import TLSFiles
from data_acq_tests.conftest import HTTPSServer


def test_downloads_a_good_certificate(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    dest = tmp_path / "cache" / "ca.crt"
    assert download_ca_cert(https_server.url("ca.crt"), dest) == dest
    assert dest.read_bytes() == tls_files.ca.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["ca.crt"]  # no temporary files left


def test_a_valid_cached_copy_is_reused(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    dest = tmp_path / "ca.crt"
    dest.write_bytes(tls_files.ca.read_bytes())
    # nothing is served: a download attempt would fail with HTTP 404
    assert download_ca_cert(https_server.url("missing.crt"), dest) == dest


def test_an_expired_cached_copy_is_replaced(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    dest = tmp_path / "ca.crt"
    dest.write_bytes(tls_files.expired_ca.read_bytes())
    download_ca_cert(https_server.url("ca.crt"), dest)
    assert dest.read_bytes() == tls_files.ca.read_bytes()


def test_not_a_certificate(https_server: HTTPSServer, tmp_path: Path) -> None:
    (https_server.root / "ca.crt").write_text("<html>Sign in</html>")
    with pytest.raises(CACertError, match=r"ca\.crt is not a PEM X\.509 certificate"):
        download_ca_cert(https_server.url("ca.crt"), tmp_path / "ca.crt")
    assert not (tmp_path / "ca.crt").exists()


def test_expired_certificate(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.expired_ca.read_bytes())
    with pytest.raises(
        CACertError, match=r"certificate CN=expired test CA expired on \d{4}-\d\d-\d\d"
    ):
        download_ca_cert(https_server.url("ca.crt"), tmp_path / "ca.crt")
    assert not (tmp_path / "ca.crt").exists()


def test_http_error(https_server: HTTPSServer, tmp_path: Path) -> None:
    with pytest.raises(CACertError, match="HTTP 404"):
        download_ca_cert(https_server.url("missing.crt"), tmp_path / "ca.crt", retries=0)


def test_unreachable_host(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}/ca.crt?token=abc"
    with pytest.raises(
        CACertError,
        match=r"cannot download the CA from https://127\.0\.0\.1:\d+/ca\.crt: ConnectionError after 1 retries",
    ) as info:
        download_ca_cert(url, tmp_path / "ca.crt", retries=1, backoff=0.01)
    assert "token" not in str(info.value)


def test_untrusted_https_server(
    https_server: HTTPSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(CACertError, match="TLS verification failed"):
        download_ca_cert(https_server.url("ca.crt"), tmp_path / "ca.crt", retries=0)


def test_plain_http_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CACertError, match="must be an https:// URL"):
        download_ca_cert("http://example.invalid/ca.crt", tmp_path / "ca.crt")


def test_local_file(tls_files: TLSFiles, tmp_path: Path) -> None:
    assert local_ca_cert(tls_files.ca) == tls_files.ca
    with pytest.raises(CACertError, match="does not exist"):
        local_ca_cert(tmp_path / "none.crt")
    with pytest.raises(CACertError, match="expired"):
        local_ca_cert(tls_files.expired_ca)


def test_settings_pick_file_over_url(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    by_url = Settings.from_env(
        {"CA_CERT_URL": https_server.url("ca.crt"), "DATA_ACQ_CACHE": str(tmp_path)}
    )
    path = resolve_ca(by_url)
    assert (
        path is not None
        and path.parent == tmp_path
        and path.read_bytes() == tls_files.ca.read_bytes()
    )
    by_file = Settings.from_env(
        {"CA_CERT_URL": "https://unused.invalid/x", "CA_CERT_FILE": str(tls_files.ca)}
    )
    assert resolve_ca(by_file) == tls_files.ca
    assert resolve_ca(Settings.from_env({})) is None


def test_dagster_resource(https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    resource = CACertificate(url=https_server.url("ca.crt"), cache_dir=str(tmp_path))
    path = resource.path()
    assert path is not None and path.read_bytes() == tls_files.ca.read_bytes()
    os.utime(path, (0, 0))
    assert resource.path() == path  # cached copy reused


# --- bounded downloads, against servers that misbehave on purpose --------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = cast(_Server, self.server)
        server.requests += 1
        try:
            server.reply(self, server)
        except OSError:
            pass  # the client hung up, as it should when it refuses
        finally:
            self.close_connection = True
            server.finished.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


Reply = Callable[[_Handler, "_Server"], None]


class _Server(http.server.ThreadingHTTPServer):
    """An HTTPS server on a free port whose answer is `reply`; counts the body bytes it sent."""

    daemon_threads = True

    def __init__(self, reply: Reply, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.reply = reply
        self.requests = 0
        self.sent = 0
        self.stopping = threading.Event()  # ends replies that would go on forever
        self.finished = threading.Event()

    def url(self, name: str = "ca.crt") -> str:
        return f"https://localhost:{self.server_address[1]}/{name}"

    def send(self, handler: _Handler, data: bytes) -> None:
        handler.wfile.write(data)
        handler.wfile.flush()
        self.sent += len(data)


@pytest.fixture
def serve(
    tls_files: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Reply], _Server]]:
    """Start servers with a given reply; all are stopped when the test ends."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files.ca))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    servers: list[_Server] = []

    def start(reply: Reply) -> _Server:
        server = _Server(reply, context)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stopping.set()
            server.shutdown()
            server.server_close()


def _drip_body(handler: _Handler, server: _Server) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/x-pem-file")
    handler.end_headers()  # no length: the body ends when the connection does, i.e. never
    while not server.stopping.wait(0.2):
        server.send(handler, b"-")


def _drip_headers(handler: _Handler, server: _Server) -> None:
    server.send(handler, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not server.stopping.wait(0.2):
        server.send(handler, b"a")


@pytest.mark.parametrize("reply", [_drip_body, _drip_headers], ids=["body", "headers"])
def test_a_dripping_server_fails_at_the_deadline(
    serve: Callable[[Reply], _Server], reply: Reply, tmp_path: Path
) -> None:
    server = serve(reply)
    started = time.monotonic()
    with pytest.raises(
        CACertError,
        match=r"^cannot download the CA from https://localhost:\d+/ca\.crt: "
        r"no complete answer within 2 s$",
    ):
        download_ca_cert(server.url(), tmp_path / "ca.crt", deadline=2)
    assert time.monotonic() - started < 5  # 2 s and a little, not the per-read timeout
    assert not (tmp_path / "ca.crt").exists()


HUGE = 300 * 1024 * 1024


def _huge(framing: str) -> Reply:
    """300 MB: announced in Content-Length, or chunked, or delimited by closing."""

    def reply(handler: _Handler, server: _Server) -> None:
        handler.send_response(200)
        if framing == "length":
            handler.send_header("Content-Length", str(HUGE))
        elif framing == "chunked":
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        block = b"A" * 65536
        if framing == "chunked":
            block = b"%x\r\n%s\r\n" % (len(block), block)
        while server.sent < HUGE and not server.stopping.is_set():
            server.send(handler, block)

    return reply


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_huge_answer_is_refused_without_reading_it(
    serve: Callable[[Reply], _Server], framing: str, tmp_path: Path
) -> None:
    server = serve(_huge(framing))
    started = time.monotonic()
    with pytest.raises(
        CACertError,
        match=r"^cannot download the CA from https://localhost:\d+/ca\.crt: "
        r"the answer is larger than 1 MiB$",
    ):
        download_ca_cert(server.url(), tmp_path / "ca.crt")
    assert time.monotonic() - started < 5
    assert server.finished.wait(5)  # the client hung up, so the server stopped sending
    assert server.sent < HUGE // 10  # at most what the socket buffers took in
    assert server.requests == 1  # too large is final, not retried
    assert not (tmp_path / "ca.crt").exists()


def test_a_server_error_is_retried(
    serve: Callable[[Reply], _Server], tls_files: TLSFiles, tmp_path: Path
) -> None:
    def flaky(handler: _Handler, server: _Server) -> None:
        body = tls_files.ca.read_bytes() if server.requests > 2 else b"busy"
        handler.send_response(200 if server.requests > 2 else 503)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        server.send(handler, body)

    server = serve(flaky)
    dest = download_ca_cert(server.url(), tmp_path / "ca.crt", backoff=0.01)
    assert dest.read_bytes() == tls_files.ca.read_bytes() and server.requests == 3
    with pytest.raises(CACertError, match=r"/ca\.crt: HTTP 503 after 1 retries$"):
        download_ca_cert(serve(flaky).url(), tmp_path / "other.crt", retries=1, backoff=0.01)


# --- pinning ---------------------------------------------------------------------------------


def _fingerprint(path: Path) -> str:
    """`AA:BB:...` as openssl prints it."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def test_the_pin_is_what_openssl_prints(tls_files: TLSFiles) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(tls_files.ca)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip().rpartition("=")[2] == _fingerprint(tls_files.ca)


@pytest.mark.parametrize("form", ["colons", "lower", "plain", "spaced"])
def test_a_matching_pin_is_accepted(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path, form: str
) -> None:
    pin = _fingerprint(tls_files.ca)
    pin = {
        "colons": pin,
        "lower": pin.lower(),
        "plain": pin.replace(":", ""),
        "spaced": f"  {pin.replace(':', '').lower()}\n",
    }[form]
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    dest = tmp_path / "ca.crt"
    assert download_ca_cert(https_server.url("ca.crt"), dest, sha256=pin) == dest
    assert dest.read_bytes() == tls_files.ca.read_bytes()
    assert local_ca_cert(tls_files.ca, sha256=pin) == tls_files.ca


def test_a_mismatching_pin_is_refused_and_not_cached(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.other_ca.read_bytes())
    expected, served = _fingerprint(tls_files.ca), _fingerprint(tls_files.other_ca)
    with pytest.raises(CACertError) as info:
        download_ca_cert(https_server.url("ca.crt?token=abc"), tmp_path / "ca.crt", sha256=expected)
    assert str(info.value) == (
        f"CA from {https_server.url('ca.crt')} has SHA-256 fingerprint {served}, "
        f"expected {expected} (CA_CERT_SHA256)"
    )
    assert not (tmp_path / "ca.crt").exists()


def test_a_cached_copy_not_matching_the_pin_is_downloaded_again(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    dest = tmp_path / "ca.crt"
    dest.write_bytes(tls_files.other_ca.read_bytes())  # valid, but not the pinned CA
    pin = _fingerprint(tls_files.ca)
    assert download_ca_cert(https_server.url("ca.crt"), dest, sha256=pin) == dest
    assert dest.read_bytes() == tls_files.ca.read_bytes()
    # a cached copy that matches is used without asking the server
    assert download_ca_cert(https_server.url("missing.crt"), dest, sha256=pin) == dest


def test_a_bundle_matches_when_one_certificate_does(tls_files: TLSFiles, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(tls_files.other_ca.read_bytes() + tls_files.ca.read_bytes())
    assert local_ca_cert(bundle, _fingerprint(tls_files.ca)) == bundle
    with pytest.raises(CACertError, match=r"has SHA-256 fingerprints .+, .+, expected"):
        local_ca_cert(bundle, _fingerprint(tls_files.expired_ca))


def test_ca_cert_file_with_a_wrong_pin(tls_files: TLSFiles) -> None:
    wrong = _fingerprint(tls_files.other_ca)
    with pytest.raises(CACertError, match=rf"^CA from {re.escape(str(tls_files.ca))} has SHA"):
        local_ca_cert(tls_files.ca, wrong)
    settings = Settings.from_env({"CA_CERT_FILE": str(tls_files.ca), "CA_CERT_SHA256": wrong})
    with pytest.raises(CACertError, match=r"expected .+ \(CA_CERT_SHA256\)$"):
        resolve_ca(settings)


@pytest.mark.parametrize(
    "pin", ["abc", "0" * 63, "0" * 65, "g" * 64, "sha256 Fingerprint=" + "0" * 64]
)
def test_a_malformed_pin_is_an_error(tls_files: TLSFiles, tmp_path: Path, pin: str) -> None:
    message = r"^CA_CERT_SHA256 must be a SHA-256 fingerprint \(64 hex digits, colons allowed\)"
    with pytest.raises(CACertError, match=message):
        local_ca_cert(tls_files.ca, pin)
    dest = tmp_path / "ca.crt"
    dest.write_bytes(tls_files.ca.read_bytes())  # even a good cached copy is not used
    with pytest.raises(CACertError, match=message):
        download_ca_cert("https://unused.invalid/ca.crt", dest, sha256=pin)


def test_the_pin_reaches_the_dagster_resource(
    https_server: HTTPSServer, tls_files: TLSFiles, tmp_path: Path
) -> None:
    (https_server.root / "ca.crt").write_bytes(tls_files.ca.read_bytes())
    env = {
        "CA_CERT_URL": https_server.url("ca.crt"),
        "CA_CERT_SHA256": _fingerprint(tls_files.other_ca),
        "DATA_ACQ_CACHE": str(tmp_path / "cache"),
        "DATA_ACQ_STORAGE": str(tmp_path / "data"),
    }
    resource = build_resources(Settings.from_env(env))["ca_certificate"]
    assert isinstance(resource, CACertificate) and resource.sha256 == env["CA_CERT_SHA256"]
    with pytest.raises(CACertError, match=r"\(CA_CERT_SHA256\)$"):
        resource.path()
    with pytest.raises(CACertError, match=r"\(CA_CERT_SHA256\)$"):
        resolve_ca(Settings.from_env(env))
    env["CA_CERT_SHA256"] = _fingerprint(tls_files.ca)
    assert resolve_ca(Settings.from_env(env)) is not None
