"""Hostile input on real parts: poison payloads and odd site ids through a real Mosquitto, the
drain, processing and the warehouse. Whatever the bytes, each message is stored, then used or
rejected with a reason, and the valid messages around it reach every output under their own
site id."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from data_acq.curate.charts import write_charts
from data_acq.devtools.local_broker import LocalMosquitto
from data_acq.layout import CURATED
from data_acq.pipeline import process
from data_acq.settings import BrokerSettings
from data_acq.sites import site_from_key, site_key
from data_acq.storage import LocalStore
from data_acq_tests.drain_helpers import publish_in_background, start_drain

DAY = date(2024, 10, 12)
T0 = int(datetime(2024, 10, 12, 10, tzinfo=UTC).timestamp())
HUGE = str(10**400).encode()
DEEP = b"[" * 5_000 + b"]" * 5_000

# site ids a logger could choose: each must come back exactly, and stay apart from the others
SITES = [
    "",
    "unknown",
    "site=evil",
    "%2e%2e",
    "x%2Fy",
    "..",
    "UPPER",
    "a_b",
    "é中 ?!",
    "n" * 300,
    "b827eb2bb2a9",
]

POISON = [
    b"",
    b"\xff\xfe\x00 not UTF-8",
    DEEP,
    b'{"t": %d, "r": [], "m": {"deep": %s}}' % (T0, DEEP),
    b'{"t": %d, "r": [{"_vid": "a", "P": %s}]}' % (T0, DEEP),
    b'{"t": %s, "r": []}' % HUGE,
    b'{"t": %d, "r": [{"_vid": %s}]}' % (T0, HUGE),
    b'{"t": %d, "r": [{"_vid": "a", "_d": %s}]}' % (T0, HUGE),
    b'{"t": %d, "r": [{"_vid": "a", "P": %s, "Q": 1e400}]}' % (T0, HUGE),
    b'{"t": %d, "r": [{"_vid": "a", "_s": [{"c": "x", "l": %d}]}]}' % (T0, 2**63),
    b'{"t": %d, "r": [{"_vid": "a", "_s": [{"c": %s, "l": %s}]}]}' % (T0, HUGE, HUGE),
    b'{"t": %d, "r": [{"_vid": "a\\ud800", "P": 1}, {"_vid": "b", "\\udc00": 2}]}' % T0,
    b'{"t": %d, "r": [], "m": {"n": %s}}' % (T0, HUGE),
    b'{"t": %d, "r": [], "m": "%s"}' % (T0, b"x" * (1 << 20)),  # beyond the size limit
    # a `_s` that is no array, beside an array of objects where a value belongs: the `[` count
    # matches the status arrays', and the array must still be found
    b'{"t": %d, "r": [{"_vid": "a", "_s": 5}, {"_vid": "b", "x": [{}]}]}' % T0,
]


def _valid(site_number: int, minute: int) -> bytes:
    t = T0 + minute * 60
    return json.dumps(
        {
            "t": t,
            "r": [
                {"_d": "inv", "_vid": "inv-1", "P_total": 1000 + minute, "E": 5000 + 10 * minute},
                {"_d": "gen", "_vid": "gen-1", "_s": [{"c": "ok", "l": site_number % 3}]},
            ],
        }
    ).encode()


def test_poison_and_odd_site_ids_through_the_whole_pipeline(tmp_path: Path) -> None:
    minutes = 5
    valid = [
        (f"a/{site}/u/data", _valid(n, m)) for n, site in enumerate(SITES) for m in range(minutes)
    ]
    poison = [("a/poison/u/data", body) for body in POISON]
    sent = [*poison[:7], *valid, *poison[7:]]  # valid messages on both sides of the poison
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq") as broker:
        settings = BrokerSettings(host="127.0.0.1", port=broker.port, client_id="hostile")
        drain = start_drain(settings, store, until=len(sent))
        publish_in_background(broker.port, sent).join(60)
        stats = drain.join()
        # nothing was held back: a second drain of the same session finds nothing redelivered
        again = start_drain(settings, store, idle_exit_s=1).join()
    assert stats.stored == stats.acknowledged == len(sent) and stats.unacknowledged == 0
    assert again.messages == 0

    result = process(store)
    warehouse = store.root / "warehouse.duckdb"
    # whole-payload rejects have no measurement time: they are filed under the receive date
    assert result.dates == [DAY, datetime.now(UTC).date()]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        per_site = dict(con.execute("select site, count(*) from readings group by site").fetchall())
        energy = dict(
            con.execute(
                "select site, energy from energy_daily where field = 'E' and vid = 'inv-1'"
            ).fetchall()
        )
        status = con.execute(
            "select distinct site, level from device_status where site <> 'poison'"
        ).fetchall()
        rejects = con.execute(
            "select reason from rejects where site = 'poison' and time is null"
        ).fetchall()
        skipped = dict(
            con.execute(
                "select path, reason from rejects where site = 'poison' and path like '$.r[_]%'"
            ).fetchall()
        )
    # every valid message under its own site id, byte for byte: 2 fields a minute
    assert {site: per_site[site] for site in SITES} == {site: 2 * minutes for site in SITES}
    assert energy.keys() >= set(SITES) and all(energy[s] == 10 * (minutes - 1) for s in SITES)
    assert sorted(status) == sorted((site, n % 3) for n, site in enumerate(SITES))
    reasons = sorted(r for (r,) in rejects)
    assert len(reasons) == 7  # payloads rejected whole; the others lost only their bad parts
    assert sum("nested more than 64 levels deep" in r for r in reasons) == 3
    assert any("not UTF-8" in r for r in reasons) and any("t=" in r for r in reasons)
    assert skipped["$.r[0]._s"] == "_s is an integer, expected an array"
    assert skipped["$.r[1].x"] == "value is an array, expected a scalar"

    payloads = pl.read_delta(str(store.root / CURATED / "pipeline_payloads"))
    for site in SITES:
        assert payloads.filter(pl.col("site") == site).height == minutes

    charts = write_charts(store, DAY)
    assert {site for site, _ in charts} >= set(SITES)
    names = [key.rsplit("site=", 1)[1].removesuffix(".png") for _, key in charts]
    assert len(set(names)) == len(names)  # distinct files
    for site, name in zip((s for s, _ in charts), names, strict=True):
        assert name == site_key(site) and "/" not in name and len(name) <= 140
        if "~" not in name:
            assert site_from_key(name) == site
    # the warehouse's hive reading never renamed a site: no folder carries one any more
    assert not list((store.root / CURATED).rglob("site=*/"))


def test_a_raw_object_that_cannot_be_read_is_rejected_not_fatal(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    received = datetime(2024, 10, 12, 11, tzinfo=UTC)
    store.put_new(
        f"raw/date=2024-10-12/hour=11/{received:%Y%m%dT%H%M%S%fZ}-x-bad.ndjson.gz", b"junk"
    )
    from data_acq.acquire.raw import encode_object, raw_key
    from data_acq.messages import encode_record

    good = encode_object(
        [encode_record("a/s1/u/data", _valid(0, 0), received + timedelta(seconds=1))]
    )
    store.put_new(raw_key(received + timedelta(seconds=1), "x"), good)
    result = process(store)
    assert result.staged is not None and result.staged.messages == 2
    assert sum(unit.rows.get("readings", 0) for unit in result.units) == 2
    rejects = pl.read_delta(str(store.root / CURATED / "rejects"))
    assert rejects["reason"].str.starts_with("unreadable raw object").sum() == 1
