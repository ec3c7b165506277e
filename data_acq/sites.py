"""Site ids are data, not paths.

A site id is the second level of the topic a logger publishes to (`a/<site>/u/data`), so anyone
with broker credentials chooses it: it may be empty, hundreds of bytes long, or hold `=`, `%`,
`/`-encodings, dots or any Unicode character. Outputs keep it as a column, unchanged. Where it
must become part of a key or a file name (the daily charts), `site_key` maps it to a value that
is safe everywhere:

- `a`-`z`, `0`-`9` and `-` stand for themselves (an AMMP node id, `b827eb2bb2a9`, is unchanged);
- every other byte of the id's UTF-8 encoding is written `_XX` (upper-case hex): `.` is `_2E`,
  `=` is `_3D`, `%` is `_25`, `_` is `_5F`, `A` is `_41`;
- the empty id is `_`, and a message with no site at all (a topic not of the form `a/<site>/...`)
  is `~`;
- a key longer than 120 characters keeps its first 80 and ends `~<16 hex digits of the id's
  SHA-256>`: S3 keys end at 1,024 bytes and file names at 255, so such ids are told apart by
  the hash, and read back from the data, not from the key.

So keys never contain `/`, `=`, `%` or upper-case letters (hive readers decode `%` escapes;
case-insensitive file systems fold case), never start with a dot, and two different ids never
share a key. `site_from_key` reverses every key but the hashed ones.
"""

from __future__ import annotations

import hashlib
import re
import zlib

_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
NO_SITE = "~"
MAX_KEY = 120
_KEPT = 80
_ESCAPE = re.compile(r"_([0-9A-F]{2})")


def site_key(site: str | None) -> str:
    """A safe, distinct key for a site id (the rule is in the module docstring)."""
    if site is None:
        return NO_SITE
    if not site:
        return "_"
    raw = site.encode("utf-8", "surrogatepass")
    key = "".join(chr(b) if b in _PLAIN else f"_{b:02X}" for b in raw)
    if len(key) <= MAX_KEY:
        return key
    head = key[:_KEPT]
    if "_" in head[-2:]:  # do not cut an escape in two
        head = head[: head.rindex("_")]
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"


def site_from_key(key: str) -> str | None:
    """The site id a key stands for; ValueError for a hashed (long) key or a foreign string."""
    if key == NO_SITE:
        return None
    if key == "_":
        return ""
    if "~" in key:
        raise ValueError(f"site key {key!r} is hashed: read the site id from the data")
    if _ESCAPE.sub("", key).strip("abcdefghijklmnopqrstuvwxyz0123456789-"):
        raise ValueError(f"{key!r} is not a site key")
    raw = bytearray()
    for part in re.split(r"(_[0-9A-F]{2})", key):
        raw += bytes([int(part[1:], 16)]) if _ESCAPE.fullmatch(part) else part.encode()
    return raw.decode("utf-8", "surrogatepass")


def bucket_of(site: str | None, buckets: int) -> int:
    """A stable bucket for a site (CRC-32, not a seeded hash): one site always in one bucket."""
    return zlib.crc32((site or "").encode("utf-8", "surrogatepass")) % buckets
