"""`data-acq ui`: the Dagster UI on local data, with simulated loggers publishing live.

A private Mosquitto (with persistence), simulated loggers and `dagster dev` with the sensors
switched on: the drain sensor keeps a drain running, the live sensor a live-processing run that
stages new raw objects and refreshes the units they touched every ten seconds -- runs,
partitions, lineage and checks appear as they happen.

The loggers first publish the last `hours` at `speed` simulated minutes per second (duplicate
deliveries included), and once they have caught up with the clock they go on live: one payload
per site per minute, in real time, for as long as the UI runs. It is one deterministic simulation
(one `SimulationSpec`, years long), so the counters keep growing across the change of pace.

`dagster dev` runs in its own session: on Ctrl-C or SIGTERM its whole process group (webserver,
daemon, code server, run workers) gets SIGTERM, and SIGKILL after a few seconds; its output goes
to `<folder>/dagster.log`, and only its warnings and errors reach the terminal.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

# with the module, not on first use: stopping must not pay Dagster's import (over a second)
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from data_acq.acquire.broker import publish_all
from data_acq.devtools.demo import BROKER_CONFIG
from data_acq.devtools.local_broker import LocalMosquitto, free_port
from data_acq.devtools.simulate import MINUTE, SimulationSpec, simulate
from data_acq.settings import BrokerSettings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
LIVE_MINUTES = 10 * 366 * 24 * 60  # the loggers' live part: ten years, as good as endless
START_TIMEOUT_S = 180.0  # for the webserver to answer; dagster dev takes 10-30 s to start
STOP_GRACE_S = 6.0  # after SIGTERM, before SIGKILL; dagster dev takes 3-5 s to stop
TAIL_LINES = 200  # dagster dev output kept to report a failed start
INSTANCE_YAML = "nux:\n  enabled: false\ntelemetry:\n  enabled: false\n"


class UiError(RuntimeError):
    """`data-acq ui` could not start or stopped on its own: one line for the user."""


# --- the simulated loggers --------------------------------------------------------------------


def logger_spec(sites: int, hours: float, now: datetime) -> SimulationSpec:
    """The loggers' simulation: `hours` of history up to `now`, then the live part."""
    start = now.replace(second=0, microsecond=0) - timedelta(hours=hours)
    # No outage: `simulate` puts it at a third of the run, which is years away here.
    return SimulationSpec(
        sites=sites, start=start, minutes=round(hours * 60) + LIVE_MINUTES, outage_sites=0
    )


def _payload_time(body: bytes) -> int | None:
    try:
        t = json.loads(body)["t"]
    except (ValueError, TypeError, KeyError):
        return None
    return t if isinstance(t, int) else None


def paced(
    messages: Iterable[tuple[str, bytes]],
    start: datetime,
    speed: float,
    stop: threading.Event,
    on_live: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.time,
) -> Iterator[tuple[str, bytes]]:
    """Messages at `speed` simulated minutes per second while their time (`t`) is behind the
    clock, and no payload before its time: once caught up, each minute in real time. Ends as
    soon as `stop` is set."""
    t0 = start.timestamp()
    begun = time.monotonic()
    live = False
    for message in messages:
        t = _payload_time(message[1])
        if t is not None:
            now = time.monotonic()
            accelerated = begun + (t - t0) / (MINUTE * speed)
            real = now + (t - clock())
            if not live and real > accelerated:
                live = True
                on_live()
            if stop.wait(max(0.0, max(accelerated, real) - now)):
                return
        if stop.is_set():
            return
        yield message


def _publish(
    broker: BrokerSettings, messages: Iterator[tuple[str, bytes]], stop: threading.Event
) -> None:
    """The publisher thread: a lost broker ends the loggers with one line, not a traceback."""
    try:
        publish_all(broker, None, messages)
    except Exception as exc:
        if not stop.is_set():
            print(f"data-acq ui: the simulated loggers stopped: {exc}", file=sys.stderr, flush=True)


# --- dagster dev ------------------------------------------------------------------------------


def ui_environment(folder: Path, broker_port: int, start: datetime) -> dict[str, str]:
    """The variables `dagster dev` runs with: everything points at the private broker and folder,
    the data is refreshed every ten seconds, and windows are five minutes (a local run starts in
    seconds, so its successor is launched 20 s before the window ends)."""
    return {
        "MQTT_BROKER": HOST,
        "MQTT_PORT": str(broker_port),
        "MQTT_CLIENT_ID": "data-acq-ui",
        "DATA_ACQ_STORAGE": str(folder / "storage"),
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "DATA_ACQ_SENSORS": "running",
        "DATA_ACQ_DRAIN_WINDOW": "300",
        "DATA_ACQ_LIVE_WINDOW": "300",
        "DATA_ACQ_HANDOVER": "20",
        "DATA_ACQ_BUCKETS": "1",
        "DATA_ACQ_START_DATE": start.date().isoformat(),
        "DATA_ACQ_REFRESH_INTERVAL": "10",
    }


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something listens on (or holds) `port`: binding it fails."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def webserver_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# Dagster's log lines: "2024-10-12 12:00:00 +0000 - dagster.daemon - WARNING - ..."
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r" - (WARNING|ERROR|CRITICAL) - ")
_ERROR = re.compile(r"error|exception|critical", re.IGNORECASE)
# uvicorn's, when the port was taken after all: the webserver then idles, never exits
_BIND_FAILED = re.compile(r"error while attempting to bind on address.*")


class DagsterDev:
    """`dagster dev` in its own session; its output into a log file, a tail kept in memory."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        log_file: Path,
        echo_all: bool,
        muted: Callable[[], bool],
    ):
        self.log_file = log_file
        self.echo_all = echo_all
        self.muted = muted  # true from the first signal on
        self.echo = False  # on once the UI answers, off once stopping: noise stays in the log
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.bind_failed: str | None = None
        try:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: signalled as a whole
            )
        except OSError as exc:
            raise UiError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
        self.reader = threading.Thread(target=self._read, name="dagster-dev-output", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.log_file.open("w", encoding="utf-8") as out:
            for raw in self.process.stdout:
                line = _COLOUR.sub("", raw.decode(errors="replace"))
                out.write(line)
                out.flush()
                self.tail.append(line.rstrip("\n"))
                if found := _BIND_FAILED.search(line):
                    self.bind_failed = found.group(0)
                if self.echo and not self.muted() and (self.echo_all or _LEVEL.search(line)):
                    sys.stderr.write(line)
                    sys.stderr.flush()

    def exited(self) -> bool:
        return self.process.poll() is not None

    def errors(self, limit: int = 12) -> list[str]:
        """The last error lines of its output (the last lines when none looks like one)."""
        self.reader.join(timeout=2)  # the output up to its exit
        lines = [line for line in self.tail if line.strip()]
        errors = [line for line in lines if _ERROR.search(line)]
        return (errors or lines)[-limit:]

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the whole group (and to processes it starts meanwhile, such as a run
        launched just then), SIGKILL to what is left after `grace_s`."""
        self.echo = False
        pgid = self.process.pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            self.process.poll()  # reap the leader, or it counts
            signalled = group_members(pgid)
            if signalled is not None and not signalled:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                time.sleep(0.1)
                self.process.poll()
                members = group_members(pgid)
                if members is None or signalled is None:  # no /proc: zombies count
                    try:
                        os.killpg(pgid, 0)
                    except ProcessLookupError:
                        break
                    continue
                if not members:
                    break
                for pid in members - signalled:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                signalled |= members
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        self.reader.join(timeout=2)


@dataclass(frozen=True, slots=True)
class ProcessStat:
    state: str  # R, S, Z ...
    parent: int
    group: int
    session: int
    started: str  # clock ticks after boot: with the pid, a process's identity


def processes() -> dict[int, ProcessStat] | None:
    """Every process by pid, from /proc/<pid>/stat (None without /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it has just exited
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
        found[int(entry.name)] = ProcessStat(
            fields[0], int(fields[1]), int(fields[2]), int(fields[3]), fields[19]
        )
    return found


def group_members(pgid: int) -> set[int] | None:
    """The running processes of group `pgid` (None without /proc). Zombies do not count: once
    their parent has exited they wait for init, which may take its time to reap them."""
    table = processes()
    if table is None:
        return None
    return {pid for pid, p in table.items() if p.group == pgid and p.state not in ("Z", "X")}


UNFINISHED = ("NOT_STARTED", "QUEUED", "STARTING", "STARTED", "CANCELING")


def request_cancel(dagster_home: Path) -> int:
    """Cancel the session's unfinished runs just before dagster dev is stopped. A started run is
    marked CANCELING (what Terminate in the UI records first): its worker, interrupted, sees the
    request and ends it CANCELED, not FAILURE ("interrupted unexpectedly"). A run not started
    yet is marked CANCELED at once: a worker that starts for a CANCELING run fails it, one that
    starts for a CANCELED run does nothing. (Terminating runs one by one while the daemon still
    ran would only let the sensors launch their successors.)"""

    def cancel(instance: DagsterInstance, run: DagsterRun) -> None:
        if run.status == DagsterRunStatus.STARTED:
            instance.report_run_canceling(run, message="data-acq ui is stopping.")
        else:
            instance.report_run_canceled(run, message="data-acq ui stopped before it started.")

    return _report_unfinished(dagster_home, [s for s in UNFINISHED if s != "CANCELING"], cancel)


def _end_runs(dagster_home: Path, how: Callable[[Path], int]) -> None:
    try:
        how(dagster_home)
    except Exception as exc:  # the instance is the session's own; say so and go on stopping
        print(f"data-acq ui: could not end the session's runs: {exc}", file=sys.stderr)


def cancel_leftover_runs(dagster_home: Path) -> int:
    """Mark the runs a previous session left unfinished (its processes are gone: the folder lock
    says no other `data-acq ui` uses it) as canceled, or the sensors would wait for them."""
    if not (dagster_home / "history" / "runs.db").exists():
        return 0  # a new instance (or not SQLite: not ours)
    return _report_unfinished(
        dagster_home,
        list(UNFINISHED),
        lambda instance, run: instance.report_run_canceled(
            run, message="The data-acq ui session this run belonged to has stopped."
        ),
    )


def _report_unfinished(
    dagster_home: Path,
    statuses: list[str],
    report: Callable[[DagsterInstance, DagsterRun], object],
) -> int:
    """`report(instance, run)` for each run of the session's instance in one of `statuses`."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its schema checks, at INFO
    wanted = [DagsterRunStatus(s) for s in statuses]
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(statuses=wanted))
        for run in runs:
            report(instance, run)
    return len(runs)


# --- the command ------------------------------------------------------------------------------


class _Interrupts:
    """While entered, SIGINT and SIGTERM set `received` instead of raising KeyboardInterrupt.

    A plain attribute, not an Event: setting an Event takes a lock the interrupted main thread
    may be holding."""

    def __init__(self) -> None:
        self.received = False
        self._previous: dict[int, Any] = {}

    def _handler(self, _signum: int, _frame: object) -> None:
        self.received = True

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds` (less once a signal came); whether one came."""
        deadline = time.monotonic() + seconds
        while not self.received and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return self.received

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)


def _lock(folder: Path) -> IO[Any]:
    handle = (folder / "ui.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UiError(f"another data-acq ui is running on {folder}") from None
    return handle


def run_ui(
    folder: Path, sites: int = 5, hours: float = 24.0, speed: float = 2.0, port: int = 3000
) -> None:
    """Run until Ctrl-C or SIGTERM (then stop everything and return), or raise UiError."""
    if sites < 1 or hours < 0 or speed <= 0:
        raise UiError("--sites and --speed must be more than 0, --hours at least 0")
    if not 0 <= port <= 65535:
        raise UiError(f"--port must be from 0 to 65535, got {port}")
    if port == 0:
        port = free_port()
    elif port_in_use(port):
        raise UiError(
            f"port {port} on {HOST} is already in use (another Dagster UI?): stop it, or choose "
            "another with --port (0 picks a free one)"
        )
    folder = folder.resolve()
    (folder / "dagster_home").mkdir(parents=True, exist_ok=True)
    instance = folder / "dagster_home" / "dagster.yaml"
    if not instance.exists() or not instance.read_text().strip():
        # no newsletter dialog on the first page load, and nothing sent anywhere
        instance.write_text(INSTANCE_YAML)
    url = f"http://{HOST}:{port}"
    with _lock(folder), _Interrupts() as interrupts:
        began = time.monotonic()
        broker = LocalMosquitto(
            folder / "mosquitto", persistence=True, extra=BROKER_CONFIG, own_session=True
        )
        dagster: DagsterDev | None = None
        publisher: threading.Thread | None = None
        stop_loggers = threading.Event()
        try:
            try:
                leftover = cancel_leftover_runs(folder / "dagster_home")
            except Exception as exc:  # a damaged instance: dagster dev will say more
                print(f"data-acq ui: could not check for unfinished runs: {exc}", file=sys.stderr)
            else:
                if leftover:
                    runs = "1 run" if leftover == 1 else f"{leftover} runs"
                    print(f"data-acq ui: canceled {runs} the last session left unfinished")
            try:
                broker.start()
            except RuntimeError as exc:  # Mosquitto missing, or it would not start
                raise UiError(str(exc).strip()) from None
            if interrupts.received:
                return
            spec = logger_spec(sites, hours, datetime.now(UTC))
            print(
                f"data-acq ui: starting dagster dev on {url} (its log: {folder / 'dagster.log'})\n"
                f"  broker {HOST}:{broker.port}; {sites} simulated sites publishing the last "
                f"{hours:g} h from {spec.start:%Y-%m-%d %H:%M} UTC at {speed:g} minutes per "
                "second, then live: one payload per site a minute\n"
                f"  storage {folder / 'storage'}; Dagster instance {folder / 'dagster_home'}\n"
                "  sensors on: drain_sensor, live_sensor",
                flush=True,
            )
            past_days = _days_before_today(spec.start)
            messages = paced(
                simulate(spec),
                spec.start,
                speed,
                stop_loggers,
                on_live=lambda: _caught_up(url, past_days),
            )
            settings = BrokerSettings(host=HOST, port=broker.port, client_id="ui-loggers")
            publisher = threading.Thread(
                target=_publish, args=(settings, messages, stop_loggers), daemon=True
            )
            publisher.start()
            dagster_bin = shutil.which("dagster", path=str(Path(sys.executable).parent))
            command = [dagster_bin or "dagster", "dev", "-m", "data_acq.definitions"]
            dagster = DagsterDev(
                [*command, "-h", HOST, "-p", str(port)],
                {**os.environ, **ui_environment(folder, broker.port, spec.start)},
                folder / "dagster.log",
                echo_all=log.isEnabledFor(logging.DEBUG),
                muted=lambda: interrupts.received,
            )
            if _wait_until_ready(dagster, url, interrupts):
                print(
                    f"Dagster UI: {url}  (started in {time.monotonic() - began:.0f} s; "
                    "Ctrl-C stops everything)",
                    flush=True,
                )
                dagster.echo = True
            while not interrupts.sleep(0.5):
                if dagster.exited():
                    _report(dagster)
                    raise UiError(
                        f"dagster dev stopped on its own (exit code {dagster.process.returncode}); "
                        f"its log: {dagster.log_file}"
                    )
        finally:
            interrupts.received = True  # a second Ctrl-C changes nothing now
            stop_loggers.set()
            ended = time.monotonic()
            running = dagster is not None and not dagster.exited()
            if running:
                print("data-acq ui: stopping ...", flush=True)
            if running:
                _end_runs(folder / "dagster_home", request_cancel)
            if dagster is not None:
                dagster.stop()
            if running:  # a run launched meanwhile, killed with dagster dev: not left STARTED
                _end_runs(folder / "dagster_home", cancel_leftover_runs)
            if publisher is not None:
                publisher.join(timeout=0.5)
            broker.stop()  # last: the drains were still acknowledging
            if running:
                print(f"data-acq ui: stopped in {time.monotonic() - ended:.1f} s", flush=True)


def _days_before_today(start: datetime) -> list[str]:
    today = datetime.now(UTC).date()
    day, days = start.date(), []
    while day < today:
        days.append(day.isoformat())
        day += timedelta(days=1)
    return days


def _caught_up(url: str, past_days: list[str]) -> None:
    """The history is published: say so, and draw the past days' charts, as the 00:30 schedule
    would have (it does not run for days before the session)."""
    print(
        f"data-acq ui: the loggers caught up with the clock at {datetime.now(UTC):%H:%M} UTC; "
        "publishing live",
        flush=True,
    )
    from dagster_graphql import DagsterGraphQLClient  # the webserver's own client

    host, _, port = url.removeprefix("http://").partition(":")
    client = DagsterGraphQLClient(host, port_number=int(port))
    for day in past_days:
        try:
            client.submit_job_execution("draw_charts", tags={"dagster/partition": day})
        except Exception as exc:  # the UI shows the chart missing; nothing else depends on it
            print(f"data-acq ui: could not launch {day}'s charts: {exc}", file=sys.stderr)


def _wait_until_ready(dagster: DagsterDev, url: str, interrupts: _Interrupts) -> bool:
    """Whether the webserver answers (False: interrupted); UiError if dagster dev failed."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not interrupts.received:
        if dagster.exited():
            _report(dagster)
            raise UiError(
                f"dagster dev exited before the UI answered at {url} "
                f"(exit code {dagster.process.returncode}); its log: {dagster.log_file}"
            )
        if dagster.bind_failed:
            raise UiError(f"the Dagster webserver could not start: {dagster.bind_failed}")
        if webserver_answers(url):
            return True
        if time.monotonic() > deadline:
            _report(dagster)
            raise UiError(
                f"the UI did not answer at {url} within {START_TIMEOUT_S:.0f} s; "
                f"its log: {dagster.log_file}"
            )
        interrupts.sleep(0.5)
    return False


def _report(dagster: DagsterDev) -> None:
    dagster.echo = False
    lines = dagster.errors()
    if lines:
        print("dagster dev said:", *(f"  {line}" for line in lines), sep="\n", file=sys.stderr)
