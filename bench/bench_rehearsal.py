"""Production rehearsal on this machine: the production Dagster instance on a real PostgreSQL,
with the webserver, the daemon and the code server as separate processes, simulated live sites,
and then the live run's process killed.

What it starts (all on free ports, in a temporary folder, and all stopped at the end, on Ctrl-C
or failure too):

- its own PostgreSQL cluster (initdb / postgres from /usr/lib/postgresql/*/bin; never the
  machine's own server) and its own Mosquitto (`LocalMosquitto` with the demo's broker settings);
- DAGSTER_HOME/dagster.yaml: deploy/dagster.yaml as the image's entry point renders it
  (deploy/render_instance.py's `render`, with the same environment as the processes), with only
  `run_launcher` replaced by Dagster's DefaultRunLauncher (no ECS here: each run is a process
  the code server spawns) and `compute_logs` by a LocalComputeLogManager in the temporary
  folder (no S3), plus `nux: {enabled: false}`; storage, run queue, run retries, run
  monitoring, retention and telemetry are deploy/dagster.yaml's;
- `dagster code-server start`, `dagster-daemon run` and `dagster-webserver`, the latter two on
  deploy/workspace.yaml pointed at the code server, like the three ECS services; the sensors on.

Then `--sites` simulated loggers publish live (one realistic payload per site a minute, spread
evenly over the minute, QoS 1; they start once the first drain has subscribed, since a broker
keeps messages only for sessions it knows), and every second a new read-only DuckDB session asks
the warehouse's `pipeline_payloads` for recent payloads, as an analyst would: a payload's latency
is the time it is first seen there less the time it was published. After `--warmup` seconds (the
first runs' start-ups, left out), `--minutes` of live operation are measured: runs created (by
job, per hour, per hour and live worker: judged on the mean interval between creations, since a
count in a short span is a whole number of windows), the Dagster database's size and growth
(extrapolated linearly to a day), publish -> queryable p50/p95/max, CPU-seconds per refresh (from
the live runs' own `cpu_s` / `ticks` metadata, and the whole run's processes from /proc), how
long runs waited to start, and how successors overlapped their predecessors.

Then (unless `--no-kill`), once the span's payloads are queryable and at a moment when one live
run works its slot with no successor yet, its run worker -- the process the code server spawned
for it, found from the run's "Started process for run (pid: N)" event (its command line does not
name the run) -- gets SIGKILL; `--kill-tree` kills the worker's whole process tree instead (its
compute-log tails; the live and drain jobs run their step in the worker itself), as the death
of an ECS task would. The script records who marks the run failed and when (the code server's check of
its run processes, or the daemon's run monitoring -- which with the DefaultRunLauncher cannot
look at a worker's health: `supports_check_run_worker_health` is printed), what becomes of the
processes the worker had started and what they still write into the failed run, what the live
sensor does, and when another live run works the slot. Last, the loggers stop, the pipeline
catches up, and the warehouse is checked: every published payload exactly once in
`pipeline_payloads`, and each one's (site, time) in `readings` with no reading twice.

Run workers import data_acq afresh from the working tree: code changed during a rehearsal takes
effect in the runs launched afterwards. A 30-minute rehearsal takes about 50 minutes in all (the
warm-up, the span, the kill phase, which lasts until the killed run's window would have ended,
and the catch-up).

Figures go to bench/out/rehearsal/<timestamp>.json, the processes' logs to
bench/out/rehearsal/<timestamp>/; a summary is printed with PASS/FAIL per target.

    .venv/bin/python bench/bench_rehearsal.py --sites 300 --minutes 30 --refresh 60
    # a short check (a few window handovers and the kill, about 12 minutes):
    .venv/bin/python bench/bench_rehearsal.py --sites 50 --minutes 4 --refresh 10 --warmup 60 \
        --live-window 120 --drain-window 120 --after-kill 90

Targets (issue "production rehearsal"): at most 12 runs an hour per live worker; Dagster's
database growing by under 100 MB a day at 300 sites; publish -> queryable p95 at most 90 s at a
60 s refresh and at most 30 s at a 10 s refresh (other refresh intervals: the line through
both, 30 + 1.2 x (refresh - 10) s); after the kill the run is failed, a new live run starts, and
every published payload is in the warehouse exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OUT_DIR = ROOT / "bench" / "out" / "rehearsal"
HOST = "127.0.0.1"
MINUTE = 60

TARGET_RUNS_PER_HOUR_PER_WORKER = 12.0
TARGET_DB_MB_PER_DAY = 100.0
PROBE_WINDOW_MIN = 15  # the probe asks for payloads with `time` in the last this many minutes
# DuckDB refuses a second connection to a file with another configuration in one process: the
# probe and the final checks share this one
DUCKDB_CONFIG = {"threads": "1"}
SAMPLE_EVERY_S = 2.0  # /proc CPU sampling of the run and service processes
START_TIMEOUT_S = 180.0
LIVE_JOB, DRAIN_JOB = "live_processing", "drain"
WORKER_PID = re.compile(r"Started process for run \(pid: (\d+)\)")
TOOK_OVER = re.compile(r": buckets .* every .* for ")  # the live op's line once it works


def p95_target_s(refresh_s: float) -> float:
    """The issue's p95 targets: 30 s at a 10 s refresh, 90 s at a 60 s refresh; other refresh
    intervals on the line through both."""
    return 30.0 + 1.2 * (refresh_s - 10.0)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: raised in the main thread so that every `finally` cleans up."""


_stopping = False  # once cleaning up, further signals are ignored


def _on_signal(signum: int, _frame: object) -> None:
    if not _stopping:
        raise Interrupted(signal.Signals(signum).name)


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


# --- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, identifies a process across pid reuse
    cpu_s: float  # its own user + system time, not its children's
    state: str


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, Proc]:
    """Every process's parent, start time and CPU time, from /proc."""
    table: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = Proc(
            pid=int(entry.name),
            ppid=int(fields[1]),
            start=int(fields[19]),
            cpu_s=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
            state=fields[0],
        )
    return table


def descendants(table: dict[int, Proc], root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, queue = [], deque([root])
    while queue:
        pid = queue.popleft()
        if pid in table:
            found.append(pid)
            queue.extend(children.get(pid, ()))
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def alive(pid: int, start: int) -> bool:
    """Whether that very process (not a later one with its pid) still runs."""
    proc = proc_table_one(pid)
    return proc is not None and proc.start == start and proc.state not in ("Z", "X")


def proc_table_one(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return Proc(pid, int(fields[1]), int(fields[19]), cpu_s, fields[0])


def group_alive(pgid: int) -> list[int]:
    """Running (not zombie) processes of process group `pgid` (none where there is no /proc)."""
    from data_acq.devtools.ui import group_members

    return sorted(group_members(pgid) or ())


def stop_group(process: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM to the process group this script started (the process and everything it started
    that kept the group, run workers and their orphans included), SIGKILL to what is left after
    `grace_s`. Returns how many needed SIGKILL."""
    pgid = process.pid
    killed = 0
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        process.poll()
        members = group_alive(pgid)
        if not members:
            break
        if sig == signal.SIGKILL:
            killed = len(members)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_alive(pgid):
            process.poll()
            time.sleep(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2)
    return killed


@dataclass
class Service:
    """One of the three Dagster processes, in a process group of its own."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])


def start_service(
    name: str, command: list[str], env: dict[str, str], cwd: Path, log: Path
) -> Service:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopped as a whole, never by name
        )
    say(f"{name} started (pid {process.pid}): {' '.join(command)}")
    return Service(name, process, log)


def wait_until(
    ready: Callable[[], bool], timeout_s: float, what: str, services: Iterable[Service] = ()
) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for service in services:
            if not service.running():
                raise RuntimeError(
                    f"{service.name} exited (code {service.process.returncode}) before {what}; "
                    f"its log {service.log}:\n{service.tail()}"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s:.0f} s did not happen")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest PostgreSQL server binaries Debian installed (not the machine's server)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/postgres: apt-get install postgresql")
    return found[-1].parent


class Postgres:
    """A PostgreSQL cluster of its own: initdb in `folder`, the server on `port` (TCP on
    127.0.0.1 only, no Unix socket), trust authentication, stopped by its own pid. As root, it
    runs as the `postgres` user (PostgreSQL refuses to run as root)."""

    DB = "dagster"

    def __init__(self, folder: Path, port: int, log: Path) -> None:
        self.folder, self.port, self.log = folder, port, log
        self.process: subprocess.Popen[bytes] | None = None
        self.user = "postgres" if os.geteuid() == 0 else None

    def _as_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def start(self) -> None:
        binaries = postgres_bin()
        self.folder.mkdir(parents=True)
        if self.user:
            shutil.chown(self.folder, self.user, self.user)
        data = self.folder / "data"
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            cwd=self.folder,
            check=True,
            capture_output=True,
            **self._as_user(),
        )
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={HOST}",
                    "-c",
                    "unix_socket_directories=",
                ],
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._as_user(),
            )
        say(
            f"PostgreSQL {binaries.parent.name} started (pid {self.process.pid}) on port {self.port}"
        )
        wait_until(self._answers, 60, "PostgreSQL answering")
        con = self.connect("postgres")
        try:
            con.autocommit = True  # CREATE DATABASE refuses a transaction block
            with con.cursor() as cur:
                cur.execute(f'create database "{self.DB}"')
        finally:
            con.close()

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited at start; its log: {self.log.read_text()}")
        try:
            self.connect("postgres").close()
        except Exception:
            return False
        return True

    def connect(self, db: str | None = None) -> Any:
        import psycopg2

        return psycopg2.connect(
            host=HOST, port=self.port, user="postgres", dbname=db or self.DB, connect_timeout=5
        )

    def snapshot(self) -> dict[str, Any]:
        """The Dagster database's size, its largest tables and the rows of the busy ones."""
        con = self.connect()
        try:
            with con.cursor() as cur:
                cur.execute("select pg_database_size(current_database())")
                size = cur.fetchone()[0]
                cur.execute(
                    "select c.relname, pg_total_relation_size(c.oid) from pg_class c "
                    "join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = 'public' and c.relkind = 'r' order by 2 desc limit 8"
                )
                tables = {name: int(total) for name, total in cur.fetchall()}
                rows = {}
                for table in ("runs", "event_logs", "job_ticks", "run_tags"):
                    if table in tables or table in ("runs", "event_logs", "job_ticks"):
                        with contextlib.suppress(Exception):
                            cur.execute(f"select count(*) from {table}")
                            rows[table] = cur.fetchone()[0]
        finally:
            con.close()
        return {"at": time.time(), "bytes": int(size), "tables": tables, "rows": rows}

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGQUIT, then SIGKILL."""
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait_s)
        # its own children (checkpointer, walwriter ...) stay in its group
        for pid in group_alive(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- the instance ------------------------------------------------------------------------------


def render_instance(env: dict[str, str], folder: Path) -> tuple[str, dict[str, Any]]:
    """deploy/dagster.yaml as the entry point renders it for `env`, with the two replacements
    this machine needs (and the newsletter dialog off). Returns the file's text and the
    rendered-but-unreplaced configuration, to show what was kept."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_instance", DEPLOY / "render_instance.py")
    assert spec is not None and spec.loader is not None
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)
    rendered = yaml.safe_load(renderer.render((DEPLOY / "dagster.yaml").read_text(), env))
    config = dict(rendered)
    config["run_launcher"] = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
    config["compute_logs"] = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(folder / "compute_logs")},
    }
    config["nux"] = {"enabled": False}
    header = (
        "# deploy/dagster.yaml rendered by deploy/render_instance.py, with (bench_rehearsal.py)\n"
        "# run_launcher -> DefaultRunLauncher (no ECS), compute_logs -> LocalComputeLogManager\n"
        "# (no S3), nux off; everything else as rendered.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False), rendered


# --- the simulated loggers ---------------------------------------------------------------------


def spread(
    messages: Iterable[tuple[str, bytes]],
    sites: int,
    stop: threading.Event,
    clock: Callable[[], float] = time.time,
) -> Iterator[tuple[str, bytes, str, int | None]]:
    """Each site's payload of minute `t` at `t` plus the site's share of the minute, so that
    publishing is spread evenly over the minute (as a fleet's loggers are), not a burst at every
    full minute; a redelivery (its `t` is past) goes at once."""
    order: dict[str, int] = {}
    step = MINUTE / sites
    for topic, body in messages:
        try:
            t = json.loads(body)["t"]
        except (ValueError, TypeError, KeyError):
            t = None
        site = topic.split("/")[1]
        index = order.setdefault(site, len(order))
        if isinstance(t, int):
            wait = t + index * step - clock()
            if wait > 0 and stop.wait(wait):
                return
        if stop.is_set():
            return
        yield topic, body, site, t if isinstance(t, int) else None


class Loggers(threading.Thread):
    """The fleet: one MQTT client publishing every site's payloads with QoS 1 in real time;
    records each payload's (site, t) and the wall time of its first publish."""

    def __init__(self, port: int, sites: int) -> None:
        super().__init__(name="loggers", daemon=True)
        self.port, self.sites = port, sites
        self.stop = threading.Event()
        self.sent: dict[tuple[str, int], float] = {}
        self.publishes = 0
        self.redeliveries = 0
        self.unacked: set[tuple[str, int]] = set()
        self.started_at: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        from data_acq.acquire.broker import connect, make_client
        from data_acq.devtools.simulate import simulate
        from data_acq.devtools.ui import logger_spec
        from data_acq.settings import BrokerSettings

        broker = BrokerSettings(host=HOST, port=self.port, client_id="rehearsal-loggers")
        client = make_client(broker, None)
        client.max_queued_messages_set(1000)
        pending: deque[tuple[Any, tuple[str, int] | None]] = deque()
        try:
            connect(client, broker)
            client.loop_start()
            self.started_at = time.time()
            spec = logger_spec(self.sites, 0, datetime.now(UTC))
            for topic, body, site, t in spread(simulate(spec), self.sites, self.stop):
                key = (site, t) if t is not None else None
                now = time.time()
                info = client.publish(topic, body, qos=1)
                while info.rc == 15:  # MQTT_ERR_QUEUE_SIZE: paho's queue is full, wait
                    time.sleep(0.005)
                    info = client.publish(topic, body, qos=1)
                self.publishes += 1
                if key is not None:
                    if key in self.sent:
                        self.redeliveries += 1
                    else:
                        self.sent[key] = now
                pending.append((info, key))
                while pending and pending[0][0].is_published():
                    pending.popleft()
        except Exception as exc:  # reported; the rehearsal then fails its checks
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            deadline = time.monotonic() + 60
            for info, _key in pending:
                with contextlib.suppress(Exception):
                    info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            self.unacked = {key for info, key in pending if key and not info.is_published()}
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_stop()


# --- the analyst's probe -----------------------------------------------------------------------


class Probe(threading.Thread):
    """Every second a new read-only DuckDB session on the warehouse, as an analyst's: a session
    keeps the file it opened, and the file is replaced when tables are added. Only the last
    PROBE_WINDOW_MIN minutes of `time` are asked for, to keep it light."""

    def __init__(self, warehouse: Path, sent: dict[tuple[str, int], float]) -> None:
        super().__init__(name="probe", daemon=True)
        self.warehouse, self.sent = warehouse, sent
        self.stop = threading.Event()
        self.seen: dict[tuple[str, int], float] = {}
        self.queries = 0
        self.errors = 0
        self.last_error: str | None = None
        self.query_s: list[float] = []

    def run(self) -> None:
        import duckdb

        next_at = time.monotonic()
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += 1.0
            since = datetime.now(UTC) - timedelta(minutes=PROBE_WINDOW_MIN)
            began = time.monotonic()
            try:
                with duckdb.connect(
                    str(self.warehouse), read_only=True, config=DUCKDB_CONFIG
                ) as con:
                    rows = con.execute(
                        "select site, epoch(time)::bigint from pipeline_payloads where time >= ?",
                        [since],
                    ).fetchall()
            except Exception as exc:  # no warehouse yet, or no views yet
                self.errors += 1
                self.last_error = str(exc).splitlines()[0][:200]
                continue
            now = time.time()
            self.queries += 1
            self.query_s.append(time.monotonic() - began)
            for site, t in rows:
                key = (site, int(t))
                if key not in self.seen and key in self.sent:
                    self.seen[key] = now


def warehouse_keys(warehouse: Path, table: str) -> tuple[set[tuple[str, int]], dict[str, int]]:
    """Every (site, time) in `table`, and row counts for the exactly-once check (a fresh
    read-only session, the whole table)."""
    import duckdb

    with duckdb.connect(str(warehouse), read_only=True, config=DUCKDB_CONFIG) as con:
        keys = {
            (site, int(t))
            for site, t in con.execute(
                f"select distinct site, epoch(time)::bigint from {table}"
            ).fetchall()
        }
        counts: dict[str, int] = {
            "rows": con.execute(f"select count(*) from {table}").fetchone()[0]
        }
        if table == "pipeline_payloads":
            counts["duplicated_keys"] = con.execute(
                "select count(*) from (select site, time from pipeline_payloads "
                "group by all having count(*) > 1)"
            ).fetchone()[0]
        else:  # a reading: site, time, vid, device, field
            counts["duplicated_readings"] = con.execute(
                "select count(*) from (select site, time, vid, device, field from readings "
                "group by all having count(*) > 1)"
            ).fetchone()[0]
    return keys, counts


# --- runs and their processes ------------------------------------------------------------------


def entry_text(entry: Any) -> str:
    event = entry.dagster_event
    return (event.message if event is not None and event.message else entry.user_message) or ""


def worker_pid(instance: Any, run_id: str) -> int | None:
    """The run worker's pid, from the engine event the worker writes when it starts ("Started
    process for run (pid: N)"): the DefaultRunLauncher's worker is a multiprocessing child of
    the code server, whose command line does not name the run."""
    from dagster import DagsterEventType

    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        if found := WORKER_PID.search(entry_text(entry)):
            return int(found.group(1))
    return None


class CpuSampler(threading.Thread):
    """Every SAMPLE_EVERY_S, the CPU time of each active run's processes (the run worker and
    what it started: the step process) and of the three services' processes (without the run
    processes under the code server). Cumulative per process, so a lower bound by at most one
    interval of each process's last moments."""

    ACTIVE = ("STARTING", "STARTED", "CANCELING")

    def __init__(self, home: Path, services: dict[str, int]) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.home, self.services = home, services
        self.stop = threading.Event()
        self.run_pid: dict[str, tuple[int, int]] = {}  # run id -> (pid, start)
        self.run_job: dict[str, str] = {}
        self.run_cpu: dict[str, dict[tuple[int, int], float]] = {}
        self.service_cpu: dict[str, dict[tuple[int, int], float]] = {n: {} for n in services}
        self.error: str | None = None

    def run(self) -> None:
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        statuses = [DagsterRunStatus(status) for status in self.ACTIVE]
        try:
            with DagsterInstance.from_config(str(self.home)) as instance:
                while not self.stop.wait(SAMPLE_EVERY_S):
                    table = proc_table()
                    for record in instance.get_run_records(RunsFilter(statuses=statuses)):
                        run = record.dagster_run
                        if run.run_id not in self.run_pid:
                            pid = worker_pid(instance, run.run_id)
                            if pid is not None and pid in table:
                                self.run_pid[run.run_id] = (pid, table[pid].start)
                                self.run_job[run.run_id] = run.job_name
                    under_runs: set[int] = set()
                    for run_id, (pid, start) in self.run_pid.items():
                        if pid not in table or table[pid].start != start:
                            continue
                        tree = descendants(table, pid)
                        under_runs.update(tree)
                        cpu = self.run_cpu.setdefault(run_id, {})
                        for member in tree:
                            cpu[(member, table[member].start)] = table[member].cpu_s
                    for name, root in self.services.items():
                        for member in descendants(table, root):
                            if member not in under_runs:
                                key = (member, table[member].start)
                                self.service_cpu[name][key] = table[member].cpu_s
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def services_total(self) -> dict[str, float]:
        return {name: sum(cpu.values()) for name, cpu in self.service_cpu.items()}

    def run_total(self, run_id: str) -> float | None:
        cpu = self.run_cpu.get(run_id)
        return sum(cpu.values()) if cpu else None


def window_metadata(instance: Any, run_id: str) -> dict[str, float] | None:
    """The live window's own figures (`ticks`, `cpu_s`, `busy_share` ...), from its output's
    metadata, or its failure's when it failed at the end of its window."""
    from dagster import DagsterEventType

    wanted = {DagsterEventType.STEP_OUTPUT, DagsterEventType.STEP_FAILURE}
    for entry in instance.all_logs(run_id, of_type=wanted):
        data = entry.dagster_event.event_specific_data
        metadata = getattr(data, "metadata", None)
        if metadata is None and getattr(data, "user_failure_data", None) is not None:
            metadata = data.user_failure_data.metadata
        if metadata and "ticks" in metadata:
            return {
                key: value.value
                for key, value in metadata.items()
                if isinstance(getattr(value, "value", None), int | float)
            }
    return None


def drain_subscribed(instance: Any) -> bool:
    """Whether a started drain run has logged that it is draining (it connects and subscribes
    right after that line)."""
    from dagster import DagsterRunStatus, RunsFilter

    started = RunsFilter(job_name=DRAIN_JOB, statuses=[DagsterRunStatus.STARTED])
    for record in instance.get_run_records(started):
        for entry in instance.all_logs(record.dagster_run.run_id):
            if entry_text(entry).startswith("draining "):
                return True
    return False


def run_rows(instance: Any, origin: float) -> list[dict[str, Any]]:
    """Every run of the session, oldest first, times relative to `origin` (the loggers' start)."""

    def rel(value: float | None) -> float | None:
        return None if value is None else round(value - origin, 1)

    rows = []
    for record in reversed(instance.get_run_records()):
        run = record.dagster_run
        created = record.create_timestamp.timestamp()
        rows.append(
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "status": run.status.value,
                "slot": run.tags.get("data_acq/live_worker")
                or run.tags.get("data_acq/subscription"),
                "parent": run.parent_run_id,
                "created": created,
                "started": record.start_time,
                "ended": record.end_time,
                "created_s": rel(created),
                "started_s": rel(record.start_time),
                "ended_s": rel(record.end_time),
                "wait_to_start_s": (
                    round(record.start_time - created, 1) if record.start_time else None
                ),
            }
        )
    return rows


def handovers(rows: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    """For each run of `job` and the run before it in its slot: how long the successor was
    started before its predecessor ended (> 0: it waited inside its run, as designed; < 0: a
    gap with no run working)."""
    found = []
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["job"] == job:
            by_slot.setdefault(str(row["slot"]), []).append(row)
    for runs in by_slot.values():
        for before, after in itertools.pairwise(runs):
            if before["ended"] and after["started"]:
                found.append(
                    {
                        "predecessor": before["run_id"][:8],
                        "successor": after["run_id"][:8],
                        "successor_started_s": after["started_s"],
                        "overlap_s": round(before["ended"] - after["started"], 1),
                        "predecessor_run_s": (
                            round(before["ended"] - before["started"], 1)
                            if before["started"]
                            else None
                        ),
                    }
                )
    return found


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


def sensor_ticks(instance: Any, name: str, after: float, before: float) -> list[dict[str, Any]]:
    """The sensor's ticks in (after, before): what it did or why it skipped."""
    ticks = []
    for state in instance.all_instigator_state():
        if state.instigator_name != name:
            continue
        for tick in instance.get_ticks(
            state.instigator_origin_id, state.selector_id, after=after, before=before
        ):
            ticks.append(
                {
                    "at": tick.timestamp,
                    "status": tick.status.value,
                    "skip_reason": tick.skip_reason,
                    "runs": [run_id[:8] for run_id in tick.run_ids],
                }
            )
    return sorted(ticks, key=lambda tick: tick["at"])


# --- the rehearsal -----------------------------------------------------------------------------


@dataclass
class Session:
    """Everything started, so that cleanup finds it whatever failed."""

    folder: Path
    out: Path
    keep: bool
    postgres: Postgres | None = None
    broker: Any = None
    services: dict[str, Service] = field(default_factory=dict)
    instance: Any = None
    threads: list[threading.Thread] = field(default_factory=list)
    orphans: list[tuple[int, int]] = field(default_factory=list)  # (pid, start) left by the kill
    notes: list[str] = field(default_factory=list)


def environment(args: argparse.Namespace, folder: Path, ports: dict[str, int]) -> dict[str, str]:
    """The processes' environment: the machine's, without any data-acq, MQTT, Dagster or AWS
    settings it may carry, plus the rehearsal's."""
    dropped = ("DATA_ACQ_", "MQTT_", "DAGSTER_", "CA_CERT_", "PIPELINE_SQS", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        {
            "DAGSTER_HOME": str(folder / "dagster_home"),
            "DAGSTER_PG_HOST": HOST,
            "DAGSTER_PG_PORT": str(ports["postgres"]),
            "DAGSTER_PG_DB": Postgres.DB,
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "trust-authentication-ignores-it",
            "DAGSTER_CODE_HOST": HOST,  # read by deploy/workspace.yaml
            "DAGSTER_CODE_PORT": str(ports["code"]),
            "MQTT_BROKER": HOST,
            "MQTT_PORT": str(ports["mqtt"]),
            "MQTT_CLIENT_ID": "data-acq-rehearsal",
            "DATA_ACQ_STORAGE": str(folder / "storage"),
            "DATA_ACQ_SENSORS": "running",
            "DATA_ACQ_REFRESH_INTERVAL": str(args.refresh),
            "DATA_ACQ_START_DATE": datetime.now(UTC).date().isoformat(),
            "DATA_ACQ_HANDOVER": str(args.handover),
            "DATA_ACQ_LIVE_WINDOW": str(args.live_window),
            "DATA_ACQ_DRAIN_WINDOW": str(args.drain_window),
            "DATA_ACQ_BUCKETS": str(args.buckets),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_everything(args: argparse.Namespace, session: Session) -> dict[str, Any]:
    """PostgreSQL, Mosquitto, the instance, the code server, the daemon and the webserver."""
    from data_acq.devtools.demo import BROKER_CONFIG
    from data_acq.devtools.local_broker import LocalMosquitto

    folder, out = session.folder, session.out
    session.postgres = Postgres(folder / "postgres", free_port(), out / "postgres.log")
    session.postgres.start()
    session.broker = LocalMosquitto(folder / "mosquitto", persistence=True, extra=BROKER_CONFIG)
    session.broker.start()
    say(f"Mosquitto started (pid {session.broker.process.pid}) on port {session.broker.port}")
    ports = {
        "postgres": session.postgres.port,
        "mqtt": session.broker.port,
        "code": free_port(),
        "web": args.port or free_port(),
    }
    env = environment(args, folder, ports)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True)
    text, rendered = render_instance(env, folder)
    (home / "dagster.yaml").write_text(text)
    (out / "dagster.yaml").write_text(text)
    kept = sorted(k for k in rendered if k not in ("run_launcher", "compute_logs"))
    say(
        "instance: deploy/dagster.yaml rendered by deploy/render_instance.py; replaced: "
        "run_launcher -> DefaultRunLauncher (no ECS), compute_logs -> LocalComputeLogManager "
        f"(no S3); added: nux disabled; kept as rendered: {', '.join(kept)}"
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith(("DAGSTER_", "DATA_ACQ_"))})
    from dagster import DagsterInstance

    # this process creates the schema first (three processes creating it at once could race)
    session.instance = DagsterInstance.from_config(str(home))
    bin_dir = Path(sys.executable).parent
    workspace = str(DEPLOY / "workspace.yaml")
    work = folder / "cwd"
    work.mkdir()
    code = start_service(
        "code server",
        [
            str(bin_dir / "dagster"),
            "code-server",
            "start",
            "-m",
            "data_acq.definitions",
            "-h",
            HOST,
            "-p",
            str(ports["code"]),
        ],
        env,
        work,
        out / "code-server.log",
    )
    session.services["code server"] = code
    health = [str(bin_dir / "dagster"), "api", "grpc-health-check", "-h", HOST]
    health += ["-p", str(ports["code"])]
    wait_until(
        lambda: subprocess.run(health, capture_output=True, env=env, check=False).returncode == 0,
        START_TIMEOUT_S,
        "the code server answering",
        [code],
    )
    session.services["daemon"] = start_service(
        "daemon",
        [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
        env,
        work,
        out / "daemon.log",
    )
    session.services["webserver"] = start_service(
        "webserver",
        [str(bin_dir / "dagster-webserver"), "-w", workspace, "-h", HOST, "-p", str(ports["web"])],
        env,
        work,
        out / "webserver.log",
    )
    url = f"http://{HOST}:{ports['web']}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    wait_until(
        answers,
        START_TIMEOUT_S,
        f"the webserver answering {url}/server_info",
        session.services.values(),
    )
    say(f"webserver answers at {url}")
    settings_env = {k: v for k, v in env.items() if k.startswith(("DATA_ACQ_", "MQTT_"))}
    return {"env": settings_env, "ports": ports, "url": url, "instance_file": text}


def kill_live_run(
    args: argparse.Namespace, session: Session, sampler: CpuSampler, loggers: Loggers
) -> dict[str, Any]:
    """SIGKILL the working live run's process, then watch: who fails the run and when, what
    becomes of the processes it had started, what the live sensor does, when a new live run
    starts and works."""
    from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

    instance = session.instance
    window, handover = float(args.live_window), float(args.handover)
    result: dict[str, Any] = {"scope": "process tree" if args.kill_tree else "run worker"}
    active = [DagsterRunStatus.STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.QUEUED]
    took_over: dict[str, float] = {}  # live run -> when it logged that it works its slot

    def working_since(run_id: str) -> float | None:
        if run_id not in took_over:
            for entry in instance.all_logs(run_id):
                if TOOK_OVER.search(entry_text(entry)):
                    took_over[run_id] = entry.timestamp
                    break
        return took_over.get(run_id)

    # The moment: one live run, working its slot for a refresh or more, its successor not due
    # for a while -- so that the kill is not a handover. Should a successor always be waiting
    # (a handover as long as the window), after a window the working run is killed whatever
    # waits behind it (with a third of its window or more left).
    fallback_at = time.time() + window + 60
    target = None
    while target is None:
        records = instance.get_run_records(RunsFilter(job_name=LIVE_JOB, statuses=active))
        started = [r for r in records if r.dagster_run.status == DagsterRunStatus.STARTED]
        working = [
            (r, since)
            for r in started
            if (since := working_since(r.dagster_run.run_id)) is not None
            and r.dagster_run.run_id in sampler.run_pid
        ]
        now = time.time()
        if working:
            record, since = min(working, key=lambda item: item[0].create_timestamp)
            assert record.start_time is not None
            successor_due = record.start_time + window - handover
            settled_in = now - since >= min(args.refresh + 5, window / 3)
            if settled_in and len(records) == 1 and successor_due - now >= 15:
                target = record
            elif settled_in and now > fallback_at and since + window - now >= window / 3:
                target = record
                result["note"] = (
                    f"no moment without a successor came within {window + 60:g} s; the working "
                    f"run was killed with {len(records) - 1} other live runs active"
                )
        if target is None:
            time.sleep(1.0)
    run_id = target.dagster_run.run_id
    pid, _start = sampler.run_pid[run_id]
    table = proc_table()
    tree = descendants(table, pid)
    processes = [
        {"pid": p, "start": table[p].start, "cmdline": cmdline(p)[:300], "worker": p == pid}
        for p in tree
    ]
    code_tree = descendants(table, session.services["code server"].process.pid)
    result.update(
        run_id=run_id,
        worker_pid=pid,
        worker_cmdline=cmdline(pid)[:300],
        worker_is_under_code_server=pid in code_tree,
        processes=processes,
        run_started_s=round(target.start_time - loggers.started_at, 1),
    )
    for proc in processes if args.kill_tree else processes[:1]:
        if alive(proc["pid"], proc["start"]):
            os.kill(proc["pid"], signal.SIGKILL)
    killed_at = time.time()
    result["killed_s"] = round(killed_at - loggers.started_at, 1)
    say(
        f"SIGKILL to the {result['scope']} of live run {run_id[:8]} (worker pid {pid}, "
        f"{len(tree)} processes in its tree)"
    )
    # watch until another live run has worked its slot for a while, or give up
    failed_at = new_working = step_ended = None
    new_id: str | None = None
    step_events = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    survivors = {(p["pid"], p["start"]): None for p in processes[1:]} if not args.kill_tree else {}
    watch_until = killed_at + max(600.0, 3 * window)
    while time.time() < watch_until:
        now = time.time()
        for key, gone in survivors.items():
            if gone is None and not alive(*key):
                survivors[key] = now - killed_at
        run = instance.get_run_by_id(run_id)
        if failed_at is None and run is not None and run.is_finished:
            failed_at = now
        if new_id is None:  # the first other live run to work the slot after the kill
            for record in instance.get_run_records(RunsFilter(job_name=LIVE_JOB, statuses=active)):
                other = record.dagster_run.run_id
                since = working_since(other) if other != run_id else None
                if since is not None and since > killed_at - 1:
                    new_id, new_working = other, since
        # the processes the kill left (with a multiprocess executor a step process went on with
        # its window): watched until they end, or until its window would have ended
        if survivors and step_ended is None:  # the orphaned step writes its end into the run
            ends = [e.timestamp for e in instance.all_logs(run_id, of_type=step_events)]
            step_ended = max(ends) if ends and max(ends) > killed_at else None
        settled = (
            all(gone is not None for gone in survivors.values())
            or (step_ended is not None and now - step_ended > 30)
            or now - killed_at > window + handover + 60
        )
        if new_working is not None and now - new_working >= args.after_kill and settled:
            break
        time.sleep(1.0)

    def rel(value: float | None) -> float | None:
        return None if value is None else round(value - killed_at, 1)

    record = instance.get_run_record_by_id(run_id)
    result["run_marked_finished_after_s"] = (
        rel(record.end_time) if record and record.end_time else rel(failed_at)
    )
    result["final_status"] = record.dagster_run.status.value if record else None
    events = []
    after_failure = Counter()
    for entry in instance.all_logs(run_id):
        if entry.timestamp < killed_at - 0.5:
            continue
        kind = entry.dagster_event.event_type_value if entry.dagster_event else "log"
        events.append(
            {"after_s": rel(entry.timestamp), "type": kind, "message": entry_text(entry)[:400]}
        )
        if record and record.end_time and entry.timestamp > record.end_time + 1:
            after_failure[kind] += 1
    result["events_after_kill"] = events[:40]
    result["events_written_after_the_failure"] = dict(after_failure)
    late = [
        e for e in events if record and record.end_time and e["after_s"] > rel(record.end_time) + 1
    ]
    result["last_event_after_the_failure_s"] = late[-1]["after_s"] if late else None
    step_end = [e for e in late if e["type"] in ("STEP_SUCCESS", "STEP_FAILURE")]
    result["step_ended_after_s"] = step_end[0]["after_s"] if step_end else None
    if late and new_working is not None:
        # two live workers on the same buckets: the orphaned step and the new run
        result["orphan_and_new_run_worked_together_s"] = round(
            max(0.0, late[-1]["after_s"] - rel(new_working)), 1
        )
    cpu_at_kill = {(p["pid"], p["start"]): table[p["pid"]].cpu_s for p in processes}
    result["surviving_processes"] = []
    for key, gone in survivors.items():
        now_proc = proc_table_one(key[0])
        still = gone is None and now_proc is not None and now_proc.start == key[1]
        result["surviving_processes"].append(
            {
                "pid": key[0],
                "cmdline": next(p["cmdline"] for p in processes if p["pid"] == key[0])[:200],
                "ended_after_s": None if gone is None else round(gone, 1),
                "still_alive_after_s": rel(time.time()) if still else None,
                "state": now_proc.state if still and now_proc else None,
                "wchan": _read(f"/proc/{key[0]}/wchan") if still else None,
                "cpu_s_since_kill": (
                    round(now_proc.cpu_s - cpu_at_kill[key], 1) if still and now_proc else None
                ),
            }
        )
        if still:
            session.orphans.append(key)
    daemon_lines = [
        line.strip()
        for line in session.services["daemon"].log.read_text(errors="replace").splitlines()
        if run_id in line
    ]
    code_lines = [
        line.strip()
        for line in session.services["code server"].log.read_text(errors="replace").splitlines()
        if run_id in line
    ]
    result["daemon_log_lines"] = daemon_lines[:10]
    result["code_server_log_lines"] = code_lines[:10]
    launcher = instance.run_launcher
    result["run_launcher"] = type(launcher).__name__
    result["supports_check_run_worker_health"] = bool(launcher.supports_check_run_worker_health)
    try:
        from dagster_aws.ecs import EcsRunLauncher

        probe = object.__new__(EcsRunLauncher)
        result["ecs_supports_check_run_worker_health"] = bool(
            EcsRunLauncher.supports_check_run_worker_health.fget(probe)  # type: ignore[attr-defined]
        )
    except Exception as exc:
        result["ecs_supports_check_run_worker_health"] = f"unknown ({exc})"
    new_record = instance.get_run_record_by_id(new_id) if new_id else None
    if new_record is not None:
        result["new_run"] = {
            "run_id": new_id,
            "status": new_record.dagster_run.status.value,
            "created_after_s": rel(new_record.create_timestamp.timestamp()),
            "started_after_s": rel(new_record.start_time),
            "working_after_s": rel(new_working),
            "parent_run_id": new_record.dagster_run.parent_run_id,
        }
    first_after = instance.get_run_records(
        RunsFilter(job_name=LIVE_JOB, created_after=datetime.fromtimestamp(killed_at, UTC))
    )
    if first_after:
        result["first_live_run_created_after_kill_s"] = rel(
            first_after[-1].create_timestamp.timestamp()
        )
    ticks = sensor_ticks(
        instance,
        "live_sensor",
        killed_at - 1,
        (new_working + 1) if new_working else time.time(),
    )
    result["live_sensor_ticks"] = [{**tick, "at": rel(tick["at"])} for tick in ticks]
    return result


def rehearse(args: argparse.Namespace, session: Session, results: dict[str, Any]) -> None:
    from data_acq.settings import Settings

    setup = start_everything(args, session)
    results["setup"] = {k: v for k, v in setup.items() if k != "instance_file"}
    live_workers = Settings.from_env(setup["env"]).live_workers
    instance = session.instance
    postgres = session.postgres
    assert postgres is not None
    storage = Path(setup["env"]["DATA_ACQ_STORAGE"])
    loggers = Loggers(setup["ports"]["mqtt"], args.sites)
    probe = Probe(storage / "warehouse.duckdb", loggers.sent)
    sampler = CpuSampler(
        Path(os.environ["DAGSTER_HOME"]),
        {name: service.process.pid for name, service in session.services.items()},
    )
    session.threads += [loggers, probe, sampler]
    sampler.start()
    # The broker keeps messages only for sessions it knows: the first drain's persistent session
    # must exist before the loggers publish (in production it has existed for ever).
    wait_until(
        lambda: drain_subscribed(instance),
        START_TIMEOUT_S,
        "the first drain run connecting",
        session.services.values(),
    )
    time.sleep(5)  # its connection and subscription, a second or two after the line
    say("the first drain is subscribed; the loggers start")
    loggers.start()
    probe.start()
    wait_until(lambda: loggers.started_at is not None or loggers.error is not None, 30, "loggers")
    if loggers.error:
        raise RuntimeError(f"the simulated loggers could not start: {loggers.error}")
    origin = loggers.started_at
    assert origin is not None
    say(
        f"{args.sites} simulated sites publishing live (one payload each a minute, spread over "
        f"the minute, QoS 1); warm-up {args.warmup:g} s, then {args.minutes:g} min measured"
    )

    def sleep_until(moment: float, what: str) -> None:
        while time.time() < moment:
            for service in session.services.values():
                if not service.running():
                    raise RuntimeError(
                        f"the {service.name} exited (code {service.process.returncode}) during "
                        f"{what}; its log {service.log}:\n{service.tail()}"
                    )
            if loggers.error:
                raise RuntimeError(f"the simulated loggers stopped: {loggers.error}")
            time.sleep(min(5.0, max(0.0, moment - time.time())))

    span_start = origin + args.warmup
    sleep_until(span_start, "the warm-up")
    db_start = postgres.snapshot()
    cpu_start = sampler.services_total()
    say(f"measuring: Dagster database {db_start['bytes'] / 1e6:.1f} MB")
    span_end = span_start + args.minutes * MINUTE
    next_note = span_start
    while time.time() < span_end:
        sleep_until(min(span_end, next_note + 60), "the measured span")
        next_note = time.time()
        say(
            f"  {len(loggers.sent):,} payloads published, {len(probe.seen):,} seen in the "
            f"warehouse; runs so far: {len(instance.get_run_records())}"
        )
    db_end = postgres.snapshot()
    cpu_end = sampler.services_total()
    span_s = db_end["at"] - db_start["at"]
    say(f"measured span over: Dagster database {db_end['bytes'] / 1e6:.1f} MB")

    # --- runs in the span
    rows = run_rows(instance, origin)
    in_span = [r for r in rows if span_start <= r["created"] < span_start + span_s]
    per_job = Counter(r["job"] for r in in_span)
    hours = span_s / 3600
    runs_per_hour = len(in_span) / hours
    intervals: dict[str, float | None] = {}
    for job in (DRAIN_JOB, LIVE_JOB):
        created = sorted(
            r["created"] for r in rows if r["job"] == job and r["created"] < span_start + span_s
        )
        # from the slot's second run on: the first had no predecessor to take over from, so its
        # window began at its own start and its successor came a take-over's wait early
        gaps = [b - a for a, b in itertools.pairwise(created[1:])]
        intervals[job] = round(statistics.mean(gaps), 1) if gaps else None
    steady = sum(3600 / gap for gap in intervals.values() if gap) / live_workers
    waits = [r["wait_to_start_s"] for r in in_span if r["wait_to_start_s"] is not None]
    results["runs"] = {
        "span_s": round(span_s, 1),
        "created_in_span": dict(per_job),
        "created_in_span_total": len(in_span),
        "per_hour": round(runs_per_hour, 1),
        "per_hour_per_live_worker": round(runs_per_hour / live_workers, 1),
        "live_workers": live_workers,
        "mean_interval_between_creations_s": intervals,
        "per_hour_per_live_worker_from_intervals": round(steady, 1),
        "wait_created_to_started_s": {
            job: percentiles(
                [
                    r["wait_to_start_s"]
                    for r in in_span
                    if r["job"] == job and r["wait_to_start_s"] is not None
                ]
            )
            for job in sorted(per_job)
        },
        "wait_created_to_started_all_s": percentiles(waits),
    }
    # --- the database
    growth = db_end["bytes"] - db_start["bytes"]
    per_hour_mb = growth / 1e6 / hours
    results["database"] = {
        "start": db_start,
        "end": db_end,
        "growth_bytes": growth,
        "growth_mb_per_hour": round(per_hour_mb, 2),
        "growth_mb_per_day_extrapolated": round(per_hour_mb * 24, 1),
        "table_growth_bytes": {
            name: size - db_start["tables"].get(name, 0) for name, size in db_end["tables"].items()
        },
        "row_growth": {
            name: count - db_start["rows"].get(name, 0) for name, count in db_end["rows"].items()
        },
    }
    # --- the kill, once the span's payloads are queryable (it must not delay what the span
    # measures)
    span_keys = [k for k, t in list(loggers.sent.items()) if t < span_start + span_s]
    deadline = time.time() + max(180.0, 6 * args.refresh)
    while time.time() < deadline and any(k not in probe.seen for k in span_keys):
        sleep_until(time.time() + 1, "the span's last payloads")
    if not args.no_kill:
        say("looking for the moment to kill the live run ...")
        results["kill"] = kill_live_run(args, session, sampler, loggers)
    # --- catch up and check
    loggers.stop.set()
    loggers.join(timeout=90)
    published = set(loggers.sent) - loggers.unacked
    say(
        f"loggers stopped: {len(loggers.sent):,} payloads ({loggers.publishes:,} publishes, "
        f"{loggers.redeliveries} redeliveries), {len(loggers.unacked)} not acknowledged; "
        "waiting until every payload is queryable ..."
    )
    warehouse = storage / "warehouse.duckdb"
    caught_up_at = None
    deadline = time.time() + args.catchup
    missing: set[tuple[str, int]] = set(published)
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            keys, _ = warehouse_keys(warehouse, "pipeline_payloads")
            missing = published - keys
            if not missing:
                caught_up_at = time.time()
                break
        time.sleep(5)
    stopped_at = time.time()
    probe.stop.set()
    payload_keys, payload_counts = warehouse_keys(warehouse, "pipeline_payloads")
    reading_keys, reading_counts = warehouse_keys(warehouse, "readings")
    # --- latency: from the probe's sightings up to the end (a payload of the span's last
    # minute is seen after it)
    in_span_sent = {
        k: t for k, t in list(loggers.sent.items()) if span_start <= t < span_start + span_s
    }
    measured = [probe.seen[k] - t for k, t in in_span_sent.items() if k in probe.seen]
    after_span = [
        probe.seen[k] - t
        for k, t in list(loggers.sent.items())
        if t >= span_start + span_s and k in probe.seen
    ]
    results["latency"] = {
        "published_in_span": len(in_span_sent),
        "seen": len(measured),
        "publish_to_queryable_s": percentiles(measured),
        "publish_to_queryable_after_span_s": percentiles(after_span),
        "probe": {
            "queries": probe.queries,
            "errors": probe.errors,
            "last_error": probe.last_error,
            "query_s_p50_p95_max": [
                round(statistics.median(probe.query_s), 3) if probe.query_s else None,
                round(sorted(probe.query_s)[int(0.95 * len(probe.query_s))], 3)
                if probe.query_s
                else None,
                round(max(probe.query_s), 3) if probe.query_s else None,
            ],
        },
    }
    results["exactly_once"] = {
        "published_payloads": len(published),
        "publishes": loggers.publishes,
        "redeliveries_published": loggers.redeliveries,
        "not_acknowledged": len(loggers.unacked),
        "caught_up_after_s": round(caught_up_at - loggers_stop_time(loggers, stopped_at), 1)
        if caught_up_at
        else None,
        "pipeline_payloads": {
            **payload_counts,
            "distinct_keys": len(payload_keys),
            "missing": len(published - payload_keys),
            "unexpected": len(payload_keys - published),
            "missing_examples": sorted(published - payload_keys)[:5],
        },
        "readings": {
            **reading_counts,
            "distinct_keys": len(reading_keys),
            "missing": len(published - reading_keys),
            "unexpected": len(reading_keys - published),
            "missing_examples": sorted(published - reading_keys)[:5],
        },
    }
    # --- CPU
    # every live run that worked in the span and ended (the killed one has no figures)
    rows = run_rows(instance, origin)
    killed = results.get("kill", {}).get("run_id")
    live_rows = [
        r
        for r in rows
        if r["job"] == LIVE_JOB
        and r["ended"]
        and r["started"]
        and r["started"] < span_start + span_s
        and r["ended"] > span_start
        and r["run_id"] != killed
    ]
    per_run = []
    for row in live_rows:
        metadata = window_metadata(instance, row["run_id"])
        proc_cpu = sampler.run_total(row["run_id"])
        per_run.append(
            {
                "run_id": row["run_id"][:8],
                "status": row["status"],
                "ticks": metadata.get("ticks") if metadata else None,
                "cpu_s": metadata.get("cpu_s") if metadata else None,
                "busy_share": metadata.get("busy_share") if metadata else None,
                "unit_refreshes": metadata.get("unit_refreshes") if metadata else None,
                "messages_staged": metadata.get("messages_staged") if metadata else None,
                "proc_cpu_s": round(proc_cpu, 1) if proc_cpu is not None else None,
            }
        )
    with_meta = [r for r in per_run if r["ticks"]]
    ticks = sum(r["ticks"] for r in with_meta)
    cpu = sum(r["cpu_s"] for r in with_meta)
    proc_rows = [r for r in with_meta if r["proc_cpu_s"] is not None]
    results["cpu"] = {
        "source": "live runs' metadata (cpu_s and ticks of the live_window op: its process's CPU, "
        "all threads); proc_cpu_s is the whole run from /proc (run worker + step process, "
        f"Dagster's own work included), sampled every {SAMPLE_EVERY_S:g} s",
        "live_runs": per_run,
        "cpu_s_per_refresh": round(cpu / ticks, 2) if ticks else None,
        "proc_cpu_s_per_refresh": (
            round(sum(r["proc_cpu_s"] for r in proc_rows) / sum(r["ticks"] for r in proc_rows), 2)
            if proc_rows
            else None
        ),
        "services_cpu_s_in_span": {
            name: round(cpu_end.get(name, 0) - cpu_start.get(name, 0), 1) for name in cpu_end
        },
        "sampler_error": sampler.error,
    }
    results["handovers"] = {
        LIVE_JOB: handovers(rows, LIVE_JOB),
        DRAIN_JOB: handovers(rows, DRAIN_JOB),
    }

    results["runs"]["all"] = [
        {k: v for k, v in r.items() if k not in ("created", "started", "ended")}
        for r in run_rows(instance, origin)
    ]
    results["database"]["after_kill_and_catch_up"] = postgres.snapshot()
    results["timeline"] = {
        "loggers_started": datetime.fromtimestamp(origin, UTC).isoformat(),
        "span_start_s": round(span_start - origin, 1),
        "span_end_s": round(span_start + span_s - origin, 1),
        "loggers_stopped_s": round(loggers_stop_time(loggers, stopped_at) - origin, 1),
        "checked_s": round(stopped_at - origin, 1),
    }


def loggers_stop_time(loggers: Loggers, fallback: float) -> float:
    return max(loggers.sent.values(), default=fallback)


def cleanup(session: Session, results: dict[str, Any]) -> None:
    """Stop in the order that leaves nothing behind: the loggers and probes, the daemon (no new
    runs), the runs (terminated through the launcher, so none is left STARTED), the webserver
    and code server (their whole process groups, orphaned run processes included), then
    PostgreSQL and Mosquitto."""
    global _stopping
    _stopping = True
    notes = results.setdefault("cleanup", [])
    for thread in session.threads:
        stop = getattr(thread, "stop", None)
        if isinstance(stop, threading.Event):
            stop.set()
    for thread in session.threads:
        thread.join(timeout=70 if isinstance(thread, Loggers) else 10)
    daemon = session.services.get("daemon")
    if daemon is not None:
        notes.append(f"daemon: {stop_group(daemon.process, 20)} processes needed SIGKILL")
    if session.instance is not None:
        try:
            notes.append(terminate_runs(session.instance))
        except Exception as exc:
            notes.append(f"terminating runs failed: {type(exc).__name__}: {exc}")
    lingering = [pid for pid, start in session.orphans if alive(pid, start)]
    if session.orphans:
        notes.append(
            f"processes left by the kill still alive at cleanup: {lingering or 'none'} "
            "(stopped with the code server's process group)"
        )
        results.setdefault("kill", {})["orphans_alive_at_cleanup"] = lingering
    for name in ("webserver", "code server"):
        service = session.services.get(name)
        if service is not None:
            notes.append(f"{name}: {stop_group(service.process, 15)} processes needed SIGKILL")
    if session.instance is not None:
        with contextlib.suppress(Exception):
            session.instance.dispose()
    if session.postgres is not None:
        session.postgres.stop()
    if session.broker is not None:
        session.broker.stop()
        with contextlib.suppress(OSError):
            shutil.copy(session.broker.log_file, session.out / "mosquitto.log")
    left = [
        pid for service in session.services.values() for pid in group_alive(service.process.pid)
    ]
    if session.postgres is not None and session.postgres.process is not None:
        left += group_alive(session.postgres.process.pid)
    broker = session.broker.process if session.broker is not None else None
    if broker is not None and broker.poll() is None:
        left.append(broker.pid)
    notes.append(f"processes left: {left or 'none'}")
    if not session.keep:
        shutil.rmtree(session.folder, ignore_errors=True)
    else:
        notes.append(f"kept {session.folder}")
    say("cleaned up: " + "; ".join(notes))


def terminate_runs(instance: Any) -> str:
    """Cancel queued runs and terminate started ones (the launcher asks the code server), wait
    for them to end, and mark whatever did not as canceled."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    runs = instance.get_runs(RunsFilter(statuses=unfinished))
    for run in runs:
        with contextlib.suppress(Exception):
            if run.status == DagsterRunStatus.QUEUED:
                instance.report_run_canceled(run, message="bench_rehearsal: cleanup")
            else:
                instance.run_launcher.terminate(run.run_id)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and instance.get_runs(RunsFilter(statuses=unfinished)):
        time.sleep(1)
    forced = instance.get_runs(RunsFilter(statuses=unfinished))
    for run in forced:
        instance.report_run_canceled(run, message="bench_rehearsal: cleanup, did not stop in time")
    return f"{len(runs)} unfinished runs stopped ({len(forced)} marked canceled by force)"


# --- the report --------------------------------------------------------------------------------


def verdicts(args: argparse.Namespace, results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    found: list[tuple[str, bool, str]] = []
    runs = results.get("runs")
    if runs:
        # judged on the mean interval between creations when every job has one (a count in a
        # short span is a whole number of windows: 3 or 4 in 30 minutes is 12 or 16 an hour)
        steady = runs["per_hour_per_live_worker_from_intervals"]
        intervals = runs["mean_interval_between_creations_s"].values()
        value = steady if all(intervals) else runs["per_hour_per_live_worker"]
        found.append(
            (
                f"runs per hour per live worker <= {TARGET_RUNS_PER_HOUR_PER_WORKER:g}",
                value <= TARGET_RUNS_PER_HOUR_PER_WORKER,
                f"{steady:g} from the mean interval between creations "
                f"{runs['mean_interval_between_creations_s']}; counted: "
                f"{runs['per_hour_per_live_worker']:g} ({runs['created_in_span_total']} created "
                f"in {runs['span_s'] / 60:.1f} min: {runs['created_in_span']})",
            )
        )
    database = results.get("database")
    if database:
        value = database["growth_mb_per_day_extrapolated"]
        found.append(
            (
                f"Dagster database growth < {TARGET_DB_MB_PER_DAY:g} MB/day at 300 sites",
                value < TARGET_DB_MB_PER_DAY,
                f"{value:g} MB/day extrapolated from {database['growth_bytes'] / 1e6:.2f} MB in "
                f"{runs['span_s'] / 60:.1f} min at {args.sites} sites"
                if runs
                else f"{value:g}",
            )
        )
    latency = results.get("latency")
    if latency:
        figures = latency["publish_to_queryable_s"]
        target = p95_target_s(args.refresh)
        complete = figures["n"] == latency["published_in_span"]
        found.append(
            (
                f"publish -> queryable p95 <= {target:g} s at a {args.refresh} s refresh",
                figures["p95"] is not None and figures["p95"] <= target and complete,
                f"p50 {figures['p50']} s, p95 {figures['p95']} s, max {figures['max']} s over "
                f"{figures['n']} of {latency['published_in_span']} payloads published in the span",
            )
        )
    kill = results.get("kill")
    if kill:
        failed = kill.get("final_status") == "FAILURE"
        found.append(
            (
                "killed live run marked failed",
                failed,
                f"{kill.get('final_status')} after {kill.get('run_marked_finished_after_s')} s",
            )
        )
        new = kill.get("new_run")
        found.append(
            (
                "a new live run starts and works",
                bool(new and new.get("working_after_s") is not None),
                f"created after {new['created_after_s']} s, started after "
                f"{new['started_after_s']} s, working after {new['working_after_s']} s"
                if new
                else "none",
            )
        )
    once = results.get("exactly_once")
    if once:
        pp, rd = once["pipeline_payloads"], once["readings"]
        ok = (
            once["not_acknowledged"] == 0
            and pp["missing"] == 0
            and pp["unexpected"] == 0
            and pp["duplicated_keys"] == 0
            and pp["rows"] == once["published_payloads"]
        )
        found.append(
            (
                "pipeline_payloads: every published payload exactly once",
                ok,
                f"{pp['rows']:,} rows for {once['published_payloads']:,} payloads; missing "
                f"{pp['missing']}, duplicated {pp['duplicated_keys']}, unexpected {pp['unexpected']}",
            )
        )
        found.append(
            (
                "readings: every published payload's (site, time), no duplicated reading",
                rd["missing"] == 0 and rd["unexpected"] == 0 and rd["duplicated_readings"] == 0,
                f"{rd['distinct_keys']:,} (site, time) of {once['published_payloads']:,}; missing "
                f"{rd['missing']}, duplicated readings {rd['duplicated_readings']}",
            )
        )
    return found


def print_summary(args: argparse.Namespace, results: dict[str, Any], json_path: Path) -> None:
    print()
    print(f"production rehearsal: {results['command']}")
    print(
        f"  {results['date']}; {results['machine']['cpus']} CPUs; load average at start "
        f"{results['machine']['load_start']}, at end {results['machine'].get('load_end')}"
    )
    print(
        f"  {args.sites} sites, refresh {args.refresh} s, live window {args.live_window} s, drain "
        f"window {args.drain_window} s, handover {args.handover} s, buckets {args.buckets}; "
        f"warm-up {args.warmup:g} s, measured {args.minutes:g} min"
    )
    print(
        "  instance: deploy/dagster.yaml as rendered, run_launcher -> DefaultRunLauncher, "
        "compute_logs -> LocalComputeLogManager, nux off"
    )
    runs = results.get("runs")
    if runs:
        print(
            f"  runs created in the span: {runs['created_in_span']} -> {runs['per_hour']:g}/h, "
            f"{runs['per_hour_per_live_worker']:g}/h per live worker; mean interval between "
            f"creations {runs['mean_interval_between_creations_s']}; created -> started "
            f"{runs['wait_created_to_started_all_s']}"
        )
    for job, rows in results.get("handovers", {}).items():
        if rows:
            overlaps = ", ".join(f"{row['overlap_s']:g}" for row in rows)
            lengths = ", ".join(f"{row['predecessor_run_s']:g}" for row in rows)
            print(
                f"  {job}: successor started before its predecessor ended by (s): {overlaps}; "
                f"run lengths (s): {lengths}"
            )
    database = results.get("database")
    if database:
        top = sorted(database["table_growth_bytes"].items(), key=lambda item: -item[1])[:4]
        print(
            f"  Dagster database: {database['start']['bytes'] / 1e6:.1f} -> "
            f"{database['end']['bytes'] / 1e6:.1f} MB: {database['growth_mb_per_hour']:g} MB/h, "
            f"{database['growth_mb_per_day_extrapolated']:g} MB/day (linear extrapolation); "
            f"growth by table: "
            + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in top)
            + f"; rows added: {database['row_growth']}"
        )
    cpu = results.get("cpu")
    if cpu:
        print(
            f"  CPU per refresh: {cpu['cpu_s_per_refresh']} CPU-s (live_window op, metadata); "
            f"{cpu['proc_cpu_s_per_refresh']} CPU-s (whole run, /proc); services in the span: "
            f"{cpu['services_cpu_s_in_span']}"
        )
    latency = results.get("latency")
    if latency:
        print(
            f"  publish -> queryable in the span: {latency['publish_to_queryable_s']}; after "
            f"the span (kill included): {latency.get('publish_to_queryable_after_span_s')}"
        )
    kill = results.get("kill")
    if kill:
        print(
            f"  kill ({kill['scope']}): run {kill['run_id'][:8]}, worker pid {kill['worker_pid']}"
            f" ({kill['worker_cmdline'][:80]}), {len(kill['processes'])} processes in its tree"
        )
        print(
            f"    -> {kill.get('final_status')} after {kill.get('run_marked_finished_after_s')} s;"
            f" run launcher {kill['run_launcher']}, supports_check_run_worker_health="
            f"{kill['supports_check_run_worker_health']} (EcsRunLauncher: "
            f"{kill['ecs_supports_check_run_worker_health']})"
        )
        for event in kill["events_after_kill"][:8]:
            print(f"      +{event['after_s']} s {event['type']}: {event['message'][:160]}")
        if kill["daemon_log_lines"]:
            print("    daemon log lines naming the run:")
            for line in kill["daemon_log_lines"][:4]:
                print(f"      {line[:200]}")
        for proc in kill["surviving_processes"]:
            fate = (
                f"ended after {proc['ended_after_s']} s"
                if proc["ended_after_s"] is not None
                else f"still alive after {proc['still_alive_after_s']} s (state {proc['state']}, "
                f"wchan {proc['wchan']}, {proc['cpu_s_since_kill']} CPU-s since the kill)"
            )
            print(
                f"    process left by the kill: pid {proc['pid']} ({proc['cmdline'][:60]}) {fate}"
            )
        if kill.get("step_ended_after_s") is not None or kill.get("last_event_after_the_failure_s"):
            print(
                f"    the failed run's step went on: last event {kill.get('last_event_after_the_failure_s')} s "
                f"after the kill, step ended {kill.get('step_ended_after_s')} s after; it and the new "
                f"run worked together for {kill.get('orphan_and_new_run_worked_together_s')} s"
            )
        if "orphans_alive_at_cleanup" in kill:
            print(f"    still alive at cleanup: {kill['orphans_alive_at_cleanup'] or 'none'}")
        if kill["events_written_after_the_failure"]:
            print(
                f"    events written to the failed run after it failed: {kill['events_written_after_the_failure']}"
            )
        reasons = Counter(
            (tick["status"], tick["skip_reason"]) for tick in kill["live_sensor_ticks"]
        )
        for (status, reason), count in reasons.items():
            print(f"    live_sensor: {count} x {status}: {(reason or '')[:150]}")
        if kill.get("new_run"):
            print(
                f"    the next live run to work the slot: {kill['new_run']}; the first live run "
                f"created after the kill: {kill.get('first_live_run_created_after_kill_s')} s"
            )
        if kill.get("note"):
            print(f"    note: {kill['note']}")
    once = results.get("exactly_once")
    if once:
        print(f"  caught up {once['caught_up_after_s']} s after the last publish")
    print()
    for name, ok, detail in results.get("verdicts", []):
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if results.get("error"):
        print(f"  ERROR: {results['error']}")
    print(f"\n  figures: {json_path}\n  logs: {results['logs']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=30.0, help="measured live operation")
    parser.add_argument("--refresh", type=int, default=60, help="DATA_ACQ_REFRESH_INTERVAL")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds left out at first")
    parser.add_argument("--handover", type=int, default=30, help="DATA_ACQ_HANDOVER")
    parser.add_argument("--live-window", type=int, default=600, help="DATA_ACQ_LIVE_WINDOW")
    parser.add_argument("--drain-window", type=int, default=600, help="DATA_ACQ_DRAIN_WINDOW")
    parser.add_argument("--buckets", type=int, default=1, help="DATA_ACQ_BUCKETS")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL of the live run")
    parser.add_argument(
        "--kill-tree",
        action="store_true",
        help="SIGKILL the live run's whole process tree (as an ECS task dies), not only its "
        "run worker",
    )
    parser.add_argument(
        "--after-kill",
        type=float,
        default=120.0,
        help="seconds the new live run works before the loggers stop",
    )
    parser.add_argument(
        "--catchup",
        type=float,
        default=600.0,
        help="seconds to wait at most for every payload to be queryable",
    )
    parser.add_argument("--port", type=int, default=0, help="webserver port (0: a free one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.sites < 1 or args.minutes <= 0 or args.warmup < 0:
        parser.error("--sites and --minutes must be more than 0, --warmup at least 0")

    # handlers, not SIG_IGN: the processes started here then get the default dispositions
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = OUT_DIR / stamp
    out.mkdir(parents=True)
    folder = Path(tempfile.mkdtemp(prefix="data-acq-rehearsal-"))
    folder.chmod(0o755)  # PostgreSQL's own user works in a folder inside it
    import dagster

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "dagster": dagster.__version__,
            "host": platform.node(),
        },
        "args": vars(args),
        "targets": {
            "runs_per_hour_per_live_worker": TARGET_RUNS_PER_HOUR_PER_WORKER,
            "db_mb_per_day": TARGET_DB_MB_PER_DAY,
            "p95_s": p95_target_s(args.refresh),
        },
        "logs": str(out),
        "temporary_folder": str(folder),
    }
    session = Session(folder=folder, out=out, keep=args.keep)
    say(f"temporary folder {folder}; logs in {out}")
    code = 0
    try:
        rehearse(args, session, results)
    except Interrupted as exc:
        results["error"] = f"interrupted ({exc})"
        code = 130
    except Exception as exc:
        results["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        cleanup(session, results)
    results["machine"]["load_end"] = [round(x, 2) for x in os.getloadavg()]
    results["verdicts"] = verdicts(args, results)
    if any(not ok for _name, ok, _detail in results["verdicts"]) and code == 0:
        code = 1
    json_path = OUT_DIR / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    print_summary(args, results, json_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
