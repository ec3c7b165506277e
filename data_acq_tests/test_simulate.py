"""The simulator is deterministic and has the imperfections of the field."""

from __future__ import annotations

import json
from collections import Counter

from data_acq.devtools.simulate import SimulationSpec, simulate

SPEC = SimulationSpec(sites=6, minutes=24 * 60, seed=3, duplicate_rate=0.01, outage_minutes=120)


def test_same_seed_same_messages() -> None:
    small = SimulationSpec(sites=2, minutes=30, seed=9)
    assert list(simulate(small)) == list(simulate(small))
    assert list(simulate(small)) != list(simulate(SimulationSpec(sites=2, minutes=30, seed=10)))


def test_one_payload_a_minute_per_site_plus_duplicates() -> None:
    messages = list(simulate(SPEC))
    per_site = Counter(topic for topic, _ in messages)
    assert len(per_site) == 6
    distinct = {body for _, body in messages}
    assert len(distinct) == 6 * 24 * 60
    assert len(messages) - len(distinct) > 0  # duplicate deliveries


def test_field_imperfections_are_present() -> None:
    bodies = [json.loads(body) for _, body in simulate(SPEC)]
    readings = [r for b in bodies for r in b["r"]]
    assert any("_vid" not in r for r in readings)
    assert any(v is None for r in readings for v in r.values())
    assert any(s["l"] > 0 for r in readings for s in r.get("_s", []))
    assert any(isinstance(v, str) for r in readings for k, v in r.items() if not k.startswith("_"))
    fields_first = {k for r in bodies[0]["r"] for k in r}
    fields_all = {k for r in readings for k in r}
    assert fields_all - fields_first  # a configuration change added fields
    # day curve: inverters produce at some hours and not at others
    power = [r["P_total"] for r in readings if r.get("_d", "").startswith("pv_inverter")]
    assert min(power) == 0 and max(power) > 10_000


def test_outage_backlog_arrives_late_and_in_bulk() -> None:
    delivered_t = [json.loads(body)["t"] for _, body in simulate(SPEC)]
    late = sum(1 for i in range(1, len(delivered_t)) if delivered_t[i] < delivered_t[i - 1] - 3600)
    assert late >= 1
    assert max(delivered_t) - min(delivered_t) == (24 * 60 - 1) * 60


def test_counters_grow_except_at_a_reset() -> None:
    spec = SimulationSpec(sites=30, minutes=600, seed=5, duplicate_rate=0, outage_sites=0)
    last: dict[tuple[str, str], int] = {}
    drops = 0
    for topic, body in simulate(spec):
        for r in json.loads(body)["r"]:
            if "total_yield" in r:
                key = (topic, r["_vid"])
                if key in last and r["total_yield"] < last[key]:
                    drops += 1
                last[key] = r["total_yield"]
    assert 1 <= drops <= 5
