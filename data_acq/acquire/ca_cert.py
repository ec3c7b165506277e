"""The broker's CA certificate: download over HTTPS, check, pin, cache atomically.

A broken or expired CA makes every TLS connection fail with an opaque handshake error, so the
certificate is checked here, once, with a message that says what is wrong. The download is
bounded in time and size, and the CA can be pinned to a SHA-256 fingerprint (CA_CERT_SHA256),
because the usual source is a mutable branch of a public repository.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from concurrent.futures import Future, wait
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from urllib3.exceptions import HTTPError as RawReadError
from urllib3.exceptions import SSLError as RawSSLError

from data_acq.settings import Settings
from data_acq.storage import LocalStore

DOWNLOAD_DEADLINE_S = 30.0  # the whole download, retries and pauses included
READ_TIMEOUT_S = 10.0  # connecting, and each wait for bytes
MAX_CA_BYTES = 1 << 20  # a CA bundle is a few KB; Mozilla's whole bundle is about 220 KB
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_CHUNK = 64 * 1024


class CACertError(RuntimeError):
    """The CA certificate cannot be had or cannot be used."""


def check_pem(data: bytes, source: str, now: datetime | None = None) -> datetime:
    """Raise unless `data` is PEM X.509 certificate(s) valid now; return the earliest expiry."""
    now = now or datetime.now(UTC)
    certs = _load(data, source)
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


def _load(data: bytes, source: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CACertError(f"{source} is not a PEM X.509 certificate") from None


def parse_fingerprint(text: str | None) -> bytes | None:
    """The pinned SHA-256 digest from CA_CERT_SHA256, or None when nothing is pinned.

    64 hex digits, any case, colons allowed (`openssl x509 -noout -fingerprint -sha256`
    prints `AA:BB:...`). A malformed pin is an error rather than "no pin", so that a typo
    cannot silently switch the check off.
    """
    if text is None or not text.strip():
        return None
    digits = text.strip().replace(":", "")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digits):
        raise CACertError(
            f"CA_CERT_SHA256 must be a SHA-256 fingerprint (64 hex digits, colons allowed), "
            f"got {text.strip()!r}"
        )
    return bytes.fromhex(digits)


def format_fingerprint(digest: bytes) -> str:
    """`AA:BB:...`, the way openssl prints fingerprints."""
    return ":".join(f"{byte:02X}" for byte in digest)


def fingerprints(data: bytes, source: str) -> list[bytes]:
    """SHA-256 of the DER encoding of each certificate in the PEM `data`."""
    return [cert.fingerprint(hashes.SHA256()) for cert in _load(data, source)]


def check_ca(data: bytes, source: str, pin: bytes | None) -> None:
    """Raise unless `data` is valid PEM certificate(s) and, when pinned, one of them is the pin.

    A bundle of several certificates matches when any one of them has the pinned fingerprint:
    the pin names the CA to trust, the others may be intermediates or alternatives.
    """
    check_pem(data, source)
    if pin is None:
        return
    found = fingerprints(data, source)
    if pin not in found:
        plural = "s" if len(found) > 1 else ""
        raise CACertError(
            f"CA from {source} has SHA-256 fingerprint{plural} "
            f"{', '.join(format_fingerprint(f) for f in found)}, "
            f"expected {format_fingerprint(pin)} (CA_CERT_SHA256)"
        )


def public_url(url: str) -> str:
    """The URL without credentials or query, fit for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def cache_path(cache_dir: Path, url: str) -> Path:
    return cache_dir / f"ca-{hashlib.sha256(url.encode()).hexdigest()[:16]}.crt"


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def download_ca_cert(
    url: str,
    dest: Path,
    timeout: float = READ_TIMEOUT_S,
    retries: int = 3,
    backoff: float = 0.5,
    *,
    deadline: float = DOWNLOAD_DEADLINE_S,
    max_bytes: int = MAX_CA_BYTES,
    sha256: str | None = None,
) -> Path:
    """The CA at `url`, from a valid cached copy at `dest` or freshly downloaded there.

    Bounds, so that a slow or hostile server cannot hang a run or fill memory:
    `timeout` (10 s) per connect and per wait for bytes; `deadline` (30 s) for the whole
    download, retries and their pauses (`backoff` 0.5 s, doubling) included, since a server
    that drips one byte at a time never trips a per-read timeout; `max_bytes` (1 MiB) for the
    body, refused from Content-Length before reading, or as soon as the bytes exceed it.
    Connection errors, timeouts and HTTP 429/5xx are retried `retries` times.

    `sha256` pins the CA (see `parse_fingerprint`, `check_ca`): a cached copy that does not
    match is downloaded again, and a download that does not match is refused and not cached.
    """
    shown = public_url(url)
    if urlsplit(url).scheme != "https":
        raise CACertError(f"CA_CERT_URL must be an https:// URL, got {shown}")
    pin = parse_fingerprint(sha256)
    if dest.is_file():
        try:
            check_ca(dest.read_bytes(), str(dest), pin)
            return dest
        except CACertError:
            pass  # stale, damaged or not the pinned CA: fetch again
    data = _fetch(url, shown, timeout, retries, backoff, deadline, max_bytes)
    check_ca(data, shown, pin)
    LocalStore(dest.parent).put(dest.name, data)  # atomic replace
    return dest


def _fetch(
    url: str,
    shown: str,
    timeout: float,
    retries: int,
    backoff: float,
    deadline: float,
    max_bytes: int,
) -> bytes:
    """The body at `url`, or CACertError at the deadline whatever the server does.

    The download runs in a daemon thread and the caller waits for it at most until the
    deadline: the thread checks the deadline between reads, but a server dripping the TLS
    handshake or the headers byte by byte is out of its reach, and must not hold the caller.
    Such a thread ends when the server gives up or the header size limits are reached.
    """
    stop_at = time.monotonic() + deadline
    answer: Future[bytes] = Future()

    def run() -> None:
        try:
            answer.set_result(
                _download(url, shown, timeout, retries, backoff, stop_at, deadline, max_bytes)
            )
        except BaseException as exc:  # handed to the caller
            answer.set_exception(exc)

    threading.Thread(target=run, name="ca-cert-download", daemon=True).start()
    wait([answer], timeout=max(0.0, stop_at - time.monotonic()) + 0.5)
    if not answer.done():
        raise CACertError(
            f"cannot download the CA from {shown}: no complete answer within {deadline:g} s"
        )
    return answer.result()


class _Retry(Exception):
    """A failure worth another attempt; `reason` is what the final message reports."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _download(
    url: str,
    shown: str,
    timeout: float,
    retries: int,
    backoff: float,
    stop_at: float,
    deadline: float,
    max_bytes: int,
) -> bytes:
    """Attempts with backoff, all within `stop_at` (a `time.monotonic()` value)."""
    late = f"cannot download the CA from {shown}: no complete answer within {deadline:g} s"
    last: str | None = None
    with requests.Session() as session:
        for attempt in range(retries + 1):
            if attempt:
                pause = backoff * 2 ** (attempt - 1)
                if time.monotonic() + pause >= stop_at:
                    break
                time.sleep(pause)
            left = stop_at - time.monotonic()
            if left <= 0:
                break
            try:
                return _attempt(session, url, shown, min(timeout, left), stop_at, late, max_bytes)
            except _Retry as failure:
                last = failure.reason
        else:
            after = f" after {retries} retries" if retries else ""
            raise CACertError(f"cannot download the CA from {shown}: {last}{after}")
    raise CACertError(f"{late} (last error: {last})" if last else late)


def _attempt(
    session: requests.Session,
    url: str,
    shown: str,
    timeout: float,
    stop_at: float,
    late: str,
    max_bytes: int,
) -> bytes:
    """One GET, read in chunks as they arrive, checking the size and the deadline."""
    fail = f"cannot download the CA from {shown}"
    try:
        # identity: the bytes as they are; a server that compresses anyway is decoded, at
        # most a chunk at a time, and the cap counts the decoded bytes
        with session.get(
            url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
        ) as response:
            if response.status_code in RETRY_STATUS:
                raise _Retry(f"HTTP {response.status_code}")
            if not response.ok:
                raise CACertError(f"{fail}: HTTP {response.status_code}")
            if urlsplit(response.url).scheme != "https":
                raise CACertError(f"{fail}: redirected to {public_url(response.url)}, not https")
            too_big = f"{fail}: the answer is larger than {_size(max_bytes)}"
            announced = response.headers.get("Content-Length", "")
            if announced.isdigit() and int(announced) > max_bytes:
                raise CACertError(too_big)
            body = bytearray()
            # read1: whatever has arrived, so that the deadline is checked while bytes drip
            while chunk := response.raw.read1(_CHUNK, decode_content=True):
                body += chunk
                if len(body) > max_bytes:
                    raise CACertError(too_big)
                if time.monotonic() > stop_at:
                    raise CACertError(late)
            return bytes(body)
    except (requests.exceptions.SSLError, RawSSLError):
        raise CACertError(f"{fail}: TLS verification failed") from None
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        RawReadError,  # from the raw reads: timeouts, broken connections
    ) as exc:
        raise _Retry(type(exc).__name__) from None
    except requests.exceptions.RequestException as exc:
        raise CACertError(f"{fail}: {type(exc).__name__}") from None


def local_ca_cert(path: Path, sha256: str | None = None) -> Path:
    """A CA file given by path (CA_CERT_FILE), checked and pinned like a downloaded one."""
    pin = parse_fingerprint(sha256)
    if not path.is_file():
        raise CACertError(f"CA_CERT_FILE {path} does not exist")
    check_ca(path.read_bytes(), str(path), pin)
    return path


def ca_file(
    file: str | None,
    url: str | None,
    sha256: str | None,
    cache_dir: Path,
    *,
    timeout: float = READ_TIMEOUT_S,
    retries: int = 3,
    deadline: float = DOWNLOAD_DEADLINE_S,
) -> Path | None:
    """The broker's CA file: `file` (CA_CERT_FILE), else `url` (CA_CERT_URL, cached under
    `cache_dir`), else None (the system CAs, or no TLS)."""
    if file:
        return local_ca_cert(Path(file), sha256)
    if url:
        return download_ca_cert(
            url,
            cache_path(cache_dir, url),
            timeout,
            retries,
            deadline=deadline,
            sha256=sha256,
        )
    return None


def resolve_ca(settings: Settings) -> Path | None:
    """The CA file for the configured broker (the command line's; Dagster's is a resource)."""
    broker = settings.broker
    return ca_file(
        broker.ca_cert_file, broker.ca_cert_url, broker.ca_cert_sha256, settings.cache_dir
    )
