"""A deterministic simulator of AMMP sites: what a broker would deliver, in delivery order.

Each site is a logger with the device mix of a real AMMP site (PV inverters with a day curve, a
meter, sometimes a genset with a fuel sensor or a battery, a controller's `_calc` values) and
publishes one payload a minute. The imperfections of the field are on purpose: nulls, readings
without `_vid`, `_s` alarms, counters that grow and occasionally reset, fields that appear after
a configuration change, duplicate deliveries, and an outage whose backlog arrives late.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MINUTE = 60


@dataclass(frozen=True, slots=True)
class SimulationSpec:
    sites: int = 5
    start: datetime = datetime(2024, 10, 12, tzinfo=UTC)
    minutes: int = 24 * 60
    seed: int = 42
    duplicate_rate: float = 0.003  # share of payloads delivered twice
    outage_sites: int = 1  # sites offline for a while whose backlog is delivered late
    outage_minutes: int = 180
    malformed_rate: float = 0.0  # share of extra messages that break the contract


@dataclass(slots=True)
class _Site:
    node_id: str
    inverters: int
    p_max: list[float]
    noon_offset_h: float
    has_genset: bool
    has_battery: bool
    yields: list[float]
    exported: float
    runtime: float
    e_charged: float
    boot_time: float
    config_change_minute: int
    reset_minute: int | None
    alarm: dict[str, Any] | None = field(default=None)


def _site(index: int, rng: random.Random, minutes: int) -> _Site:
    inverters = rng.randint(3, 8)
    return _Site(
        node_id=f"b827eb{rng.getrandbits(24):06x}",
        inverters=inverters,
        p_max=[rng.choice((15_000.0, 20_000.0, 25_000.0)) for _ in range(inverters)],
        noon_offset_h=rng.uniform(-3.0, 3.0),
        has_genset=rng.random() < 0.5,
        has_battery=rng.random() < 0.3,
        yields=[float(rng.randint(10_000_000, 60_000_000)) for _ in range(inverters)],
        exported=float(rng.randint(1_000_000_000, 2_000_000_000)),
        runtime=float(rng.randint(1_000, 20_000)),
        e_charged=float(rng.randint(100_000, 900_000)),
        boot_time=1_702_379_385.0 + index * 37,
        config_change_minute=rng.randint(minutes // 2, minutes) if rng.random() < 0.4 else -1,
        reset_minute=rng.randrange(minutes) if rng.random() < 0.05 else None,
    )


def _solar(site: _Site, t: int, rng: random.Random) -> float:
    hour = (t % 86_400) / 3_600 - site.noon_offset_h
    sun = math.sin(math.pi * (hour - 6) / 12)
    return max(0.0, sun) * rng.uniform(0.7, 1.0)


def _payload(site: _Site, t: int, minute: int, rng: random.Random) -> dict[str, Any]:
    changed = 0 <= site.config_change_minute <= minute
    sun = _solar(site, t, rng)
    readings: list[dict[str, Any]] = [
        {
            "_d": "logger",
            "_vid": "strato-1",
            "cpu_load": round(rng.uniform(0.01, 0.4), 4),
            "boot_time": site.boot_time,
            "memory_usage": round(rng.uniform(20, 40), 1),
        },
        {
            "_d": "logger_strato",
            "_vid": "strato-1",
            "cpu_temp": round(rng.uniform(45, 70), 3),
            "disk_usage": 63.8,
        },
    ]
    total_p = 0
    for k in range(site.inverters):
        p = int(site.p_max[k] * sun / 100) * 100
        total_p += p
        if site.reset_minute == minute and k == 0:
            site.yields[k] = 0.0  # inverter replaced: the counter starts again
        site.yields[k] += p / 60
        current = int(p / 69) if p else 0
        inverter: dict[str, Any] = {
            "_d": f"pv_inverter_{k + 1}",
            "_vid": f"pv-inverter-{k + 1}",
            "PF": 1 if p else 0,
            "I_L1": current,
            "I_L2": current + rng.randint(-1, 1) if p else 0,
            "I_L3": current,
            "V_L1": rng.randint(228, 234) if p else 0,
            "V_L2": rng.randint(228, 234) if p else 0,
            "V_L3": rng.randint(228, 234) if p else 0,
            "freq": round(rng.uniform(499.0, 501.0), 1),
            "P_total": p,
            "Q_total": 600 if p else 0,
            "S_total": p + (300 if p else 0),
            "dc_in_P1": int(p * 1.03),
            "dc_in_V1": rng.randint(580, 640) if p else 0,
            "total_yield": int(site.yields[k]),
        }
        if rng.random() < 0.01:
            inverter["Q_total"] = None  # a register that failed to read
        if changed:
            inverter["dc_in_P2"] = int(p * 0.48)
            inverter["temp_heatsink"] = round(25 + 30 * sun + rng.uniform(-1, 1), 1)
        readings.append(inverter)
    site.exported += total_p * 0.85 / 60  # the rest is used on site
    readings.append(
        {
            "_d": "power_meter",
            "_vid": "power-meter",
            "grid_status": 1,
            "I_L1": round(total_p / 690, 1),
            "I_L2": round(total_p / 690, 1),
            "I_L3": round(total_p / 690, 1),
            "P_total": total_p,
            "E_exported": int(site.exported),
            "freq": 50.0,
            "grid_connected": True,
        }
    )
    if site.has_genset:
        running = sun < 0.05 and not site.has_battery
        if running:
            site.runtime += 1 / 60
        genset: dict[str, Any] = {
            "_d": "dse855",
            "_vid": "dse-1",
            "genset_P": rng.randint(8_000, 12_000) if running else 0,
            "runtime": round(site.runtime, 3),
            "mode": "auto",
            "oil_pressure": round(rng.uniform(3.5, 4.5), 2) if running else None,
        }
        if site.alarm is None and rng.random() < 0.002:
            site.alarm = rng.choice(
                ({"c": "Low Oil Pressure", "l": 3}, {"c": "High Temperature", "l": 2})
            )
        elif site.alarm is not None and rng.random() < 0.05:
            site.alarm = None
        genset["_s"] = [site.alarm] if site.alarm else [{"c": "OK", "l": 0}]
        readings.append(genset)
        readings.append(
            {
                "_d": "diesel_sensor",
                "_vid": "gamicos-1",
                "analog": 4.0,
                "level": round(rng.uniform(0.5, 0.6), 3),
                "genset_fuel_level_percent": round(rng.uniform(60, 62), 1),
                "genset_fuel_volume": 3048.625,
            }
        )
    if site.has_battery:
        charge = total_p * 0.2 if sun > 0.2 else -3_000.0
        if charge > 0:
            site.e_charged += charge / 60
        readings.append(
            {
                "_d": "bms",
                "_vid": "bms-1",
                "soc": round(50 + 40 * sun, 1),
                "P_batt": round(charge, 1),
                "E_charged": int(site.e_charged),
            }
        )
    if rng.random() < 0.005:
        readings.append({"_d": "unknown_modbus", "temp": 21.5})  # no _vid: cannot be placed
    readings.append(
        {
            "_d": "_calc",
            "_vid": "schneider-controller",
            "pvinv_P_total": float(total_p),
            "pvinv_total_yield": float(sum(int(y) for y in site.yields)),
        }
    )
    meta = {
        "snap_rev": 912 if not changed else 935,
        "config_id": "3e43652" if not changed else "4a1b9c0",
        "reading_duration": round(rng.uniform(20, 90), 3),
        "data_provider": "ammp-edge",
    }
    return {"t": t, "r": readings, "m": meta}


_MALFORMED: tuple[bytes, ...] = (
    b'{"t": 1728734580, "r": [{"_vid": "x", "P": 1}',  # truncated
    b"\xff\xfe not utf-8 \x80",
    b'{"t": "yesterday", "r": []}',
    b'{"t": 1728734580, "r": {"_vid": "x"}}',
    b"[1, 2, 3]",
    b"",
)


def simulate(spec: SimulationSpec) -> Iterator[tuple[str, bytes]]:
    """(topic, payload bytes) in the order a broker would deliver them."""
    rng = random.Random(spec.seed)
    sites = [_site(i, rng, spec.minutes) for i in range(spec.sites)]
    t0 = int(spec.start.timestamp()) // MINUTE * MINUTE
    outage_start = spec.minutes // 3
    outage_end = min(spec.minutes, outage_start + spec.outage_minutes)
    offline = {s.node_id for s in sites[: spec.outage_sites]}
    backlog: list[tuple[str, bytes]] = []
    redeliver: dict[int, list[tuple[str, bytes]]] = {}
    for minute in range(spec.minutes):
        t = t0 + minute * MINUTE
        if minute == outage_end:
            yield from backlog  # the loggers reconnect and flush their queues
            backlog.clear()
        for site in sites:
            topic = f"a/{site.node_id}/u/data"
            body = json.dumps(_payload(site, t, minute, rng), separators=(",", ":")).encode()
            if site.node_id in offline and outage_start <= minute < outage_end:
                backlog.append((topic, body))
                continue
            yield topic, body
            if rng.random() < spec.duplicate_rate:
                redeliver.setdefault(minute + rng.randint(0, 5), []).append((topic, body))
            if rng.random() < spec.malformed_rate:
                yield topic, rng.choice(_MALFORMED)
        yield from redeliver.pop(minute, [])
    yield from backlog
    for pending in redeliver.values():
        yield from pending


def parse_start(text: str) -> datetime:
    """A start date or time from the command line, read as UTC when it has no offset."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
