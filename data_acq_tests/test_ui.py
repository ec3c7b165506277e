"""`data-acq ui`: loggers that keep publishing, a busy port refused in one line, and a Ctrl-C that
stops every process it started within seconds, without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from data_acq.devtools.simulate import simulate
from data_acq.devtools.ui import logger_spec, paced, port_in_use, processes

START_TIMEOUT_S = 180.0  # dagster dev takes 10-30 s to start on a small machine


# --- the loggers and the port check -----------------------------------------------------------


def _counters(messages: Iterator[tuple[str, bytes]]) -> Iterator[tuple[int, str, int]]:
    """(time, node/device, total_yield) of every inverter reading."""
    for topic, body in messages:
        payload = json.loads(body)
        for reading in payload["r"]:
            if "total_yield" in reading:
                yield payload["t"], f"{topic}/{reading['_d']}", reading["total_yield"]


def test_the_loggers_go_on_past_the_history_and_counters_keep_growing() -> None:
    now = datetime(2024, 10, 12, 18, 30, 15, tzinfo=UTC)
    spec = logger_spec(sites=2, hours=2.0, now=now)
    assert spec.start == datetime(2024, 10, 12, 16, 30, tzinfo=UTC)
    history_end = int((spec.start + timedelta(hours=2)).timestamp())
    later = history_end + 6 * 3600
    stop = threading.Event()
    # a clock far ahead: everything is history, published at a million minutes a second
    messages = paced(simulate(spec), spec.start, 1e6, stop, clock=lambda: later + 3600.0)
    last: dict[str, tuple[int, int]] = {}
    for t, device, total in _counters(messages):
        if t > later:
            break
        previous_t, previous = last.get(device, (0, 0))
        if t <= previous_t:
            continue  # a duplicate delivery, late
        assert total >= previous, device
        last[device] = (t, total)
    assert min(t for t, _ in last.values()) >= later  # every site went on past the history
    assert len(last) >= 2 * 3


def test_the_loggers_publish_live_once_caught_up_and_stop_at_once() -> None:
    spec = logger_spec(sites=3, hours=0.1, now=datetime.now(UTC))
    stop = threading.Event()
    went_live = threading.Event()

    def on_live() -> None:
        went_live.set()
        threading.Timer(0.2, stop.set).start()

    started = time.monotonic()
    messages = list(paced(simulate(spec), spec.start, 600.0, stop, on_live=on_live))
    assert went_live.is_set() and time.monotonic() - started < 5
    times = {json.loads(body)["t"] for _, body in messages}
    assert max(times) <= time.time()  # no payload before its time
    assert len(messages) >= 3 * 6  # the six minutes of history, all sites


def test_port_in_use() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)


# --- the command: start, Ctrl-C, nothing left -------------------------------------------------


def _started_by(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of the processes below `root`, and of the sessions they lead (which
    keeps orphans whose parent has already exited)."""
    table = processes() or {}
    mine = {root}
    changed = True
    while changed:
        sessions = {table[pid].session for pid in mine if pid in table}
        more = {pid for pid, p in table.items() if p.parent in mine or p.session in sessions}
        changed = not more <= mine
        mine |= more
    return {(pid, table[pid].started) for pid in mine if pid in table and pid != root}


def _running(pid: int, started: str) -> bool:
    """Whether that very process (not a reused pid) runs; a zombie does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    found = (processes() or {}).get(pid)
    return found is not None and found.started == started and found.state not in ("Z", "X")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ui(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = folder.parent / f"{folder.name}.out", folder.parent / f"{folder.name}.err"
    command = [sys.executable, "-m", "data_acq.cli", "ui", "--folder", str(folder)]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--hours", "1", "--sites", "2"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group: SIGINT to it is a Ctrl-C
        )
    return process, out, err


def _clean_up(process: subprocess.Popen[bytes], seen: set[tuple[int, str]]) -> None:
    for pid, started in seen | _started_by(process.pid):
        if _running(pid, started):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_a_busy_port_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        process, _, err = _ui(tmp_path / "ui", port)
        try:
            assert process.wait(timeout=60) == 1
        finally:
            _clean_up(process, set())
    lines = err.read_text().strip().splitlines()
    assert lines == [
        f"data-acq ui: port {port} on 127.0.0.1 is already in use (another Dagster UI?): "
        "stop it, or choose another with --port (0 picks a free one)"
    ]
    assert not (tmp_path / "ui" / "mosquitto").exists()  # nothing started


@pytest.mark.slow
def test_ctrl_c_stops_everything_started_within_seconds(tmp_path: Path) -> None:
    port = _free_port()
    folder = tmp_path / "ui"
    process, out, err = _ui(folder, port)
    seen: set[tuple[int, str]] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while f"Dagster UI: http://127.0.0.1:{port}" not in out.read_text():
            assert process.poll() is None, out.read_text() + err.read_text()
            assert time.monotonic() < deadline, "the UI did not start"
            seen |= _started_by(process.pid)
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as answer:
            assert answer.status == 200
        # a drain run in flight when Ctrl-C comes: the case that used to linger for minutes
        deadline = time.monotonic() + 90
        log = folder / "dagster.log"
        while 'Started execution of run for "drain"' not in log.read_text():
            assert time.monotonic() < deadline, "no drain run started"
            seen |= _started_by(process.pid)
            time.sleep(0.5)
        seen |= _started_by(process.pid)
        assert len(seen) >= 5  # Mosquitto, dagster dev, its webserver, daemon and code server

        interrupted = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=10) == 0
        stopped_s = time.monotonic() - interrupted
        time.sleep(max(0.0, interrupted + 10 - time.monotonic()))
        left = [pid for pid, started in seen if _running(pid, started)]
        assert not left, f"still running 10 s after SIGINT: {left}"
    finally:
        _clean_up(process, seen)
    assert stopped_s < 9
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr
    assert "data-acq ui: stopped in" in out.read_text()
    # the runs in flight were cancelled, not killed: none is left failed or unfinished
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(folder / "dagster_home")) as instance:
        runs = instance.get_runs()
    statuses = {run.run_id: run.status.value for run in runs}
    assert statuses and set(statuses.values()) <= {"SUCCESS", "CANCELED"}, statuses
