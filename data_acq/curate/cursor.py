"""Which raw objects are staged: the discovery cursor, and the journal it is rebuilt from.

Discovery costs what is new. Raw keys sort by the time their first message arrived, so the
cursor (`state/cursor.json`) keeps the latest key time staged (the watermark) and the keys staged
within a look-back window before it; the next listing starts at the window (S3's StartAfter),
never at the beginning of history, and reads no index. The window covers objects written a little
after their name's time (a batch is at most seconds old when written, a write retried for seconds
more; another drain's clock may be a little behind).

Every staging also writes a journal entry (`state/staged/date=D/<batch>.json`: the raw keys it
staged). The cursor is only a summary of the journal: if it is lost or unreadable (a crash
mid-write on some file systems, an operator's mistake), it is rebuilt from the newest entries;
and a damaged staging file is staged again from the raw keys its batch's entry names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice

from data_acq import layout
from data_acq.acquire.raw import key_time
from data_acq.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

LOOKBACK = timedelta(minutes=15)


class StateError(StorageError):
    """Processing state that cannot be read or recovered; the message names it and the repair."""


@dataclass
class Cursor:
    """The latest raw key time staged, and the keys staged within LOOKBACK of it."""

    watermark: datetime | None = None
    seen: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, store: ObjectStore) -> Cursor:
        """The saved cursor; rebuilt from the journal when it is missing or unreadable."""
        try:
            text = store.get(layout.CURSOR)
        except FileNotFoundError:
            rebuilt = rebuild_cursor(store)
            if rebuilt.watermark is not None:  # staged before: the cursor alone was lost
                log.warning("%s was missing: rebuilt from the staging journal", layout.CURSOR)
                rebuilt.save(store)
            return rebuilt
        try:
            state = json.loads(text)
            return cls(datetime.fromisoformat(state["watermark"]), set(state["seen"]))
        except (ValueError, KeyError, TypeError) as exc:
            why = "empty" if not text.strip() else f"{type(exc).__name__}: {exc}"
            rebuilt = rebuild_cursor(store)
            if rebuilt.watermark is None:
                raise StateError(
                    f"{store.url(layout.CURSOR)} is unreadable ({why}) and there is no staging "
                    f"journal ({layout.JOURNAL}) to rebuild it from: delete it to stage all of "
                    "raw again (duplicates are removed), or restore it from a backup"
                ) from None
            log.warning(
                "%s was unreadable (%s): rebuilt from the staging journal", layout.CURSOR, why
            )
            rebuilt.save(store)
            return rebuilt

    def start_after(self) -> str:
        """The listing starts here: the first key name of the look-back window."""
        if self.watermark is None:
            return ""
        t = self.watermark - LOOKBACK
        return f"{layout.RAW}date={t:%Y-%m-%d}/hour={t:%H}/{t:%Y%m%dT%H%M%S%fZ}"

    def advanced(self, keys: Iterable[str]) -> Cursor:
        keys = list(keys)
        times = [t for t in map(key_time, keys) if t is not None]
        if not times:
            return self
        watermark = max([*times, *([self.watermark] if self.watermark else [])])
        keep = watermark - LOOKBACK
        seen = {k for k in self.seen | set(keys) if (key_time(k) or watermark) >= keep}
        return Cursor(watermark, seen)

    def save(self, store: ObjectStore) -> None:
        if self.watermark is None:  # nothing staged yet
            return
        state = {"watermark": self.watermark.isoformat(), "seen": sorted(self.seen)}
        store.put(layout.CURSOR, json.dumps(state, indent=1).encode())


def new_raw_keys(
    store: ObjectStore, cursor: Cursor | None = None, limit: int | None = None
) -> list[str]:
    """Raw objects not staged yet, oldest first (at most `limit`), listing only from the
    look-back window on."""
    cursor = cursor or Cursor.load(store)
    new = (
        key
        for key in store.list_keys(layout.RAW, start_after=cursor.start_after())
        if key.endswith(".ndjson.gz") and key not in cursor.seen
    )
    return list(islice(new, limit))


# --- the journal ------------------------------------------------------------------------------


def write_journal(store: ObjectStore, batch: str, keys: list[str]) -> None:
    """Record which raw objects a staging batch took (before the cursor moves past them)."""
    store.put(layout.journal_key(batch), json.dumps({"keys": keys}).encode())


def journal_keys(store: ObjectStore, batch: str) -> list[str] | None:
    """The raw keys a batch staged, or None when its entry is missing or unreadable."""
    try:
        return list(json.loads(store.get(layout.journal_key(batch)))["keys"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def rebuild_cursor(store: ObjectStore, now: datetime | None = None) -> Cursor:
    """The cursor as the journal's newest entries make it (an empty cursor without a journal).

    An object is staged after it is written and named no later than that, so the entries
    staged from the look-back window before the newest key time on hold every key the cursor
    keeps; the listing starts a day before today and goes back to the beginning only when that
    does not reach so far."""
    if next(store.list_keys(layout.JOURNAL), None) is None:  # nothing ever staged
        return Cursor()
    now = now or datetime.now(UTC)
    since = f"{layout.JOURNAL}date={(now - timedelta(days=1)).date().isoformat()}"
    cursor = _folded(store, store.list_keys(layout.JOURNAL, start_after=since))
    reaches_back = (
        cursor.watermark is not None
        and (cursor.watermark - LOOKBACK - timedelta(minutes=5)).date()
        >= (now - timedelta(days=1)).date()
    )
    return cursor if reaches_back else _folded(store, store.list_keys(layout.JOURNAL))


def _folded(store: ObjectStore, entries: Iterable[str]) -> Cursor:
    cursor = Cursor()
    for entry in entries:
        try:
            keys = json.loads(store.get(entry))["keys"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            log.warning("skipping the unreadable journal entry %s", entry)
            continue
        cursor = cursor.advanced(keys)
    return cursor
