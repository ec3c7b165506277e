"""The broker's CA certificate: download over HTTPS, check, cache atomically.

A broken or expired CA makes every TLS connection fail with an opaque handshake error, so the
certificate is checked here, once, with a message that says what is wrong.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography import x509
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from data_acq.settings import Settings
from data_acq.storage import LocalStore


class CACertError(RuntimeError):
    """The CA certificate cannot be had or cannot be used."""


def check_pem(data: bytes, source: str, now: datetime | None = None) -> datetime:
    """Raise unless `data` is PEM X.509 certificate(s) valid now; return the earliest expiry."""
    now = now or datetime.now(UTC)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CACertError(f"{source} is not a PEM X.509 certificate") from None
    for cert in certs:
        subject = cert.subject.rfc4514_string() or "(no subject)"
        if cert.not_valid_after_utc <= now:
            raise CACertError(
                f"{source}: certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
            )
        if cert.not_valid_before_utc > now:
            raise CACertError(
                f"{source}: certificate {subject} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d}"
            )
    return min(cert.not_valid_after_utc for cert in certs)


def public_url(url: str) -> str:
    """The URL without credentials or query, fit for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def cache_path(cache_dir: Path, url: str) -> Path:
    return cache_dir / f"ca-{hashlib.sha256(url.encode()).hexdigest()[:16]}.crt"


def download_ca_cert(
    url: str,
    dest: Path,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> Path:
    """The CA at `url`, from a valid cached copy at `dest` or freshly downloaded there."""
    shown = public_url(url)
    if urlsplit(url).scheme != "https":
        raise CACertError(f"CA_CERT_URL must be an https:// URL, got {shown}")
    if dest.is_file():
        try:
            check_pem(dest.read_bytes(), str(dest))
            return dest
        except CACertError:
            pass  # stale or damaged cache: fetch again
    session = requests.Session()
    retry = Retry(
        total=retries,
        backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=("GET",),
    )
    session.mount("https://", HTTPAdapter(max_retries=retry))
    try:
        response = session.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.exceptions.SSLError:
        raise CACertError(f"cannot download the CA from {shown}: TLS verification failed") from None
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise CACertError(f"cannot download the CA from {shown}: HTTP {status}") from None
    except requests.exceptions.RequestException as exc:
        reason = type(exc).__name__
        raise CACertError(
            f"cannot download the CA from {shown}: {reason} after {retries} retries"
        ) from None
    check_pem(response.content, shown)
    LocalStore(dest.parent).put(dest.name, response.content)  # atomic replace
    return dest


def local_ca_cert(path: Path) -> Path:
    """A CA file given by path (CA_CERT_FILE), checked like a downloaded one."""
    if not path.is_file():
        raise CACertError(f"CA_CERT_FILE {path} does not exist")
    check_pem(path.read_bytes(), str(path))
    return path


def resolve_ca(settings: Settings) -> Path | None:
    """The CA file for the configured broker: CA_CERT_FILE, else CA_CERT_URL (cached), else None."""
    broker = settings.broker
    if broker.ca_cert_file:
        return local_ca_cert(Path(broker.ca_cert_file))
    if broker.ca_cert_url:
        return download_ca_cert(
            broker.ca_cert_url, cache_path(settings.cache_dir, broker.ca_cert_url)
        )
    return None
