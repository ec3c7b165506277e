"""The live window's core, without Dagster: bucket shares, failures that stay where they happen,
and the budget that keeps Dagster's database from growing with buckets and refreshes."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from data_acq import backoff
from data_acq.acquire.raw import encode_object, raw_key
from data_acq.curate.cursor import new_raw_keys
from data_acq.curate.staging import StageResult
from data_acq.curate.units import UnitResult, pending_units
from data_acq.live.reports import Reports, StagingReports, merged
from data_acq.live.shares import Share
from data_acq.live.window import STAGING, WindowLimits, WindowStats, live_ticks
from data_acq.messages import encode_record
from data_acq.storage import LocalStore


def test_shares_are_disjoint_and_cover_every_bucket() -> None:
    shares = [Share(worker, 3) for worker in (1, 2, 3)]
    owners = {bucket: [s.worker for s in shares if s.owns(bucket)] for bucket in range(10)}
    assert all(len(found) == 1 for found in owners.values())
    assert [s.stages for s in shares] == [True, False, False]  # one cursor, one writer
    with pytest.raises(ValueError, match=r"live worker 4 is not one of 1\.\.3"):
        Share(4, 3)


def _put(store: LocalStore, day: date, sites: list[str], received: datetime) -> None:
    t = int(datetime(day.year, day.month, day.day, 10, tzinfo=UTC).timestamp())
    lines = [
        encode_record(
            f"a/{site}/u/data",
            json.dumps({"t": t, "r": [{"_vid": "m", "P": 1}]}).encode(),
            received,
            1,
        )
        for site in sites
    ]
    store.put_new(raw_key(received, "test"), encode_object(lines))


class FailingUnitStore(LocalStore):
    """Writing one unit's partials (after its hours, before its daily tables) fails, always:
    as a unit that hits a bug would."""

    def __init__(self, root: Path, failing: str) -> None:
        super().__init__(root)
        self.failing = failing

    def put(self, key: str, data: bytes) -> None:
        if key.startswith("state/partials/") and self.failing in key:
            raise OSError(5, "Input/output error (injected)", key)
        super().put(key, data)


def test_a_failing_unit_is_retried_with_back_off_and_holds_nothing_else_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backoff, "BASE_S", 2.0)
    store = FailingUnitStore(tmp_path / "store", "date=2024-10-11/")
    received = datetime(2024, 10, 12, 12, tzinfo=UTC)
    _put(store, date(2024, 10, 11), ["late-site"], received)  # a backlog's date: fails
    _put(store, date(2024, 10, 12), ["a", "b"], received + timedelta(seconds=1))
    stats = WindowStats()
    ticks = list(
        live_ticks(store, Share(), 1, WindowLimits(window_s=5, interval_s=0.5), stats=stats)
    )
    first = ticks[0]
    # today's unit first, then the backlog's, which fails; the good one is done regardless
    assert [(u.day, u.bucket) for u in first.units] == [(date(2024, 10, 12), 0)]
    assert list(first.failed) == ["2024-10-11 bucket 00"]
    assert "Input/output error (injected)" in first.failed["2024-10-11 bucket 00"]
    # tried again after the back-off (2 s), not at every tick (0.5 s)
    attempts = [t.number for t in ticks if "2024-10-11 bucket 00" in t.failed]
    assert 2 <= len(attempts) < len(ticks) and attempts[1] - attempts[0] >= 3
    # still failing when the window ended: reported, and left pending for the next window
    assert list(stats.failing) == ["2024-10-11 bucket 00"]
    assert list(pending_units(store)) == [(date(2024, 10, 11), 0)]
    assert STAGING not in stats.failing


def test_a_refused_bucket_count_stops_the_window_before_any_work(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _put(store, date(2024, 10, 12), ["a"], datetime(2024, 10, 12, 12, tzinfo=UTC))
    list(live_ticks(store, Share(), 4, WindowLimits(window_s=0.1)))
    _put(store, date(2024, 10, 12), ["b"], datetime(2024, 10, 12, 13, tzinfo=UTC))
    with pytest.raises(Exception, match="DATA_ACQ_BUCKETS=4, not 2"):
        next(live_ticks(store, Share(), 2, WindowLimits(window_s=0.1)))
    assert len(new_raw_keys(store)) == 1  # the second object was not staged
    assert len(list(store.list_keys("state/staged/"))) == 1


def _result(day: int, hours: list[int], rows: int) -> UnitResult:
    return UnitResult(date(2024, 10, day), 0, hours=hours, rows={"readings": rows}, readings=rows)


def test_reports_stay_within_their_budget_least_recently_reported_first() -> None:
    now = [0.0]
    reports = Reports(per_hour=60, burst=2, clock=lambda: now[0])
    for day in (10, 11, 12):
        reports.add(_result(day, [1], 10))
    [first] = reports.due()  # one at once: a window's run does not start with a burst
    assert first.day == date(2024, 10, 10)
    reports.add(_result(10, [2], 5))
    reports.add(_result(10, [3], 7))  # refreshed twice meanwhile: one report with both
    assert reports.due() == []  # no budget left
    now[0] = 60.0  # a minute: one more report
    [second] = reports.due()
    assert second.day == date(2024, 10, 11)  # never reported before: first in line
    now[0] = 120.0
    assert [r.day for r in reports.due()] == [date(2024, 10, 12)]
    now[0] = 180.0
    [again] = reports.due()
    assert (again.day, again.hours, again.rows["readings"]) == (date(2024, 10, 10), [2, 3], 12)
    now[0] = 3600.0  # an idle hour earns no more than the burst
    for day in (20, 21, 22):
        reports.add(_result(day, [1], 1))
    assert len(reports.due()) == 2
    reports.add(_result(23, [1], 1))
    # the window's end: at least one more (the oldest), not the whole backlog
    assert [r.day for r in reports.last()] == [date(2024, 10, 22)]
    assert list(reports.waiting) == [(date(2024, 10, 23), 0)]


def test_staging_is_reported_at_most_once_a_minute_with_all_it_gathered() -> None:
    now = [0.0]
    staging = StagingReports(every_s=60, clock=lambda: now[0])
    first = staging.add(StageResult("a", raw_objects=1, messages=300, accepted=300))
    assert first is not None and first.messages == 300  # the first is reported at once
    for second in (10.0, 20.0, 30.0):  # a 10 s refresh: gathered, not reported
        now[0] = second
        assert staging.add(StageResult("b", raw_objects=1, messages=50, rejects=1)) is None
    now[0] = 60.0
    due = staging.add(StageResult("c", raw_objects=2, messages=50, accepted=50))
    assert due is not None
    assert (due.raw_objects, due.messages, due.accepted, due.rejects) == (5, 200, 50, 3)
    now[0] = 70.0
    assert staging.add(StageResult("d", raw_objects=1, messages=7)) is None
    left = staging.last()  # the window's end lets out the rest
    assert left is not None and left.messages == 7
    assert staging.last() is None


def test_merged_keeps_the_newer_day_and_both_refreshes_work() -> None:
    older, newer = _result(12, [1, 2], 10), _result(12, [2, 3], 4)
    newer.sent_to_queue, newer.readings = 3, 99
    both = merged(older, newer)
    assert (both.hours, both.rows, both.sent_to_queue, both.readings) == (
        [1, 2, 3],
        {"readings": 14},
        3,
        99,
    )


class ListingFailsOnce(LocalStore):
    """The first listing of the pending markers fails, as an S3 hiccup would."""

    failed = False

    def list_keys(self, prefix: str = "", start_after: str = ""):  # type: ignore[no-untyped-def]
        if prefix == "state/pending/" and not self.failed:
            self.failed = True
            raise ConnectionError("Could not connect to the endpoint URL (injected)")
        return super().list_keys(prefix, start_after)


def test_a_storage_hiccup_costs_a_tick_not_the_window(tmp_path: Path) -> None:
    store = ListingFailsOnce(tmp_path / "store")
    _put(store, date(2024, 10, 12), ["a"], datetime(2024, 10, 12, 12, tzinfo=UTC))
    stats = WindowStats()
    ticks = list(
        live_ticks(store, Share(), 1, WindowLimits(window_s=1.5, interval_s=0.5), stats=stats)
    )
    assert "ConnectionError" in ticks[0].failed["listing pending units"]
    assert ticks[0].units == [] and ticks[1].units  # refreshed at the next tick
    assert stats.failing == {} and pending_units(store) == {}
