"""The CA certificate: downloaded from a real local HTTPS server, checked, cached atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_acq.ca_cert import CACertError, download_ca_cert, local_ca_cert, resolve_ca
from data_acq.defs.resources import CACertificate
from data_acq.local_broker import free_port
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
