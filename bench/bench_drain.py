"""Benchmark: draining a queued persistent MQTT session, the project's Drain against mosquitto_sub.

One private Mosquitto (configured like production for a draining consumer: a deep queue and a
wide in-flight window) holds one persistent session per contender (drain-parallel: one per
worker). The sessions are created and checked (the broker answers `session present` on
reconnection) before anything is published, so one publish of N unique simulated payloads
(~1.9 KB each, QoS 1) queues N messages in every session (drain-parallel's workers: split between
them). Then each contender drains its own session(s), one contender after another, each in its
own process(es):

- mosquitto_sub: Debian's `mosquitto_sub -q 1 -c -i <id> -C N`, output to a file; timed from
  process start until it exits after the N-th message;
- drain-local:   `data_acq.acquire.drain.Drain` into a `LocalStore` (fsynced gzip NDJSON objects),
  timed from the start of `run()` until `stats.stored == N` (the `on_flush` callback notes the
  time and sets `stop`, so the run ends at once);
- drain-s3:      the same into an `S3Store` on moto's ThreadedMotoServer (run in this, the
  parent, process: a local stand-in for S3, not a model of S3 latency);
- drain-parallel: `--workers` (2) drains at once, each in its own process and its own persistent
  session (`bench-drain-par-1..N`), all members of the MQTT v5 shared subscription
  `$share/data-acq/a/+/u/data`: the broker splits the published messages between them
  round-robin, also while they are offline, so each session holds its share. Each worker
  imports and sets up, says it is ready and waits; once all are ready they are told to start
  together. Each writes to the same `LocalStore` folder and leaves after 1 s without messages;
  timed from the earliest start of `run()` to the latest flush (CLOCK_MONOTONIC, one clock for
  every process). Peak RSS and CPU are the workers' sums;
- paho-bare:     (diagnostic, only with `--only`) the MQTT client alone: paho connected exactly
  as the drain connects (same `make_client`/`connect`, manual acknowledgements, same Receive
  Maximum), acknowledging each message on arrival and doing nothing else.

Every contender must deliver exactly the N published payloads, each once (mosquitto_sub's output
lines and the drain's raw objects, read back with `raw_keys`/`read_raw`, are compared with what
was published -- for drain-parallel the union of what all workers stored; paho-bare counts
distinct payloads), and the broker log must not report dropped messages; otherwise the run fails
with a non-zero exit code. The targets (>= 0.3x mosquitto_sub, stretch 0.5x) are judged for the
fastest drain contender that passed these checks.

Peak memory is each process's own VmHWM (from /proc/<pid>/status). `os.wait4`'s `ru_maxrss` is
printed too but not used: on Linux it includes the parent's RSS at spawn time (a /bin/true
started from a 300 MB Python process reports 311 MB).

Run it from the project root:

    .venv/bin/python bench/bench_drain.py                      # 50,000 messages, production limits
    .venv/bin/python bench/bench_drain.py --inflight 20        # Mosquitto's default in-flight limit
    .venv/bin/python bench/bench_drain.py --workers 3 --only mosquitto_sub,drain-parallel
    .venv/bin/python bench/bench_drain.py --messages 5000 --only mosquitto_sub,drain-local
    .venv/bin/python bench/bench_drain.py --only mosquitto_sub,paho-bare,drain-local
    .venv/bin/python bench/bench_drain.py --profile --only drain-local   # cProfile, every thread

Everything (broker folder, raw objects, mosquitto_sub's output) goes to a temporary folder in
`bench/out/` (git-ignored), removed at the end unless `--keep` is given.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peak_memory import vm_hwm_bytes

CONTENDERS = ("mosquitto_sub", "drain-local", "drain-s3", "drain-parallel", "paho-bare")
DEFAULT_CONTENDERS = ("mosquitto_sub", "drain-local", "drain-s3", "drain-parallel")
DRAIN_CONTENDERS = ("drain-local", "drain-s3", "drain-parallel")  # judged against the targets
# run as `python bench_drain.py --contender ...` (drain-parallel: once per worker)
CHILD_CONTENDERS = ("drain-local", "drain-s3", "drain-parallel", "paho-bare")
CLIENT_IDS = {
    "mosquitto_sub": "bench-sub",
    "drain-local": "bench-drain",
    "drain-s3": "bench-drain-s3",
    "drain-parallel": "bench-drain-par",  # + "-1".."-N", one persistent session per worker
    "paho-bare": "bench-paho",
}
TOPIC_FILTER = "a/+/u/data"  # what the simulator publishes to: a/<node>/u/data
SHARED_TOPIC = f"$share/data-acq/{TOPIC_FILTER}"  # drain-parallel's workers: one share group
OUT_DIR = Path(__file__).resolve().parent / "out"
RATIO_TARGET = 0.3  # a drain contender's msgs/s / mosquitto_sub msgs/s
RATIO_STRETCH = 0.5
MOSQUITTO_SUB_NEVER_EXPIRES = 0xFFFFFFFF  # `-c` without `-x` on MQTT v5
S3_BUCKET = "bench-raw"
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sub_version(protocol: str) -> str:
    return "mqttv5" if protocol == "5" else "mqttv311"


def broker_settings(port: int, client_id: str, protocol: str, topic: str = TOPIC_FILTER) -> Any:
    from data_acq.settings import BrokerSettings

    return BrokerSettings(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        topics=(topic,),
        protocol=protocol,  # type: ignore[arg-type]
    )


def worker_client_ids(workers: int) -> list[str]:
    return [f"{CLIENT_IDS['drain-parallel']}-{n}" for n in range(1, workers + 1)]


def drain_receive_maximum() -> int:
    """The Receive Maximum `Drain.run()` sends on MQTT v5."""
    from data_acq.acquire.drain import DrainLimits

    return min(65_535, 2 * DrainLimits().batch_messages)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


# ---------------------------------------------------------------------------------------------
# The child contenders (each runs in its own process and prints one JSON line)
# ---------------------------------------------------------------------------------------------


def _profile_threads() -> list[tuple[str, Any]]:
    """Profile every thread started from now on (cProfile sees only the thread enabling it)."""
    import cProfile

    profiles: list[tuple[str, Any]] = []
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append((self.name, profile))
        profile.enable()
        try:
            original_run(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    return profiles


def _profile_report(profiles: list[tuple[str, Any]], top: int = 25) -> str:
    import pstats

    out = io.StringIO()
    for name, profile in profiles:
        out.write(f"\n===== thread {name}: top {top} by tottime =====\n")
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    combined = pstats.Stats(profiles[0][1], stream=out)
    for _, profile in profiles[1:]:
        combined.add(profile)
    out.write(f"\n===== all threads combined: top {top} by tottime =====\n")
    combined.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _start_profile(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """With --profile-out: profile this (the calling) thread and every thread started later."""
    if not args.profile_out:
        return []
    import cProfile

    profiles = _profile_threads()
    main_profile = cProfile.Profile()
    profiles.insert(0, ("MainThread (Drain.run: flush, write, ack)", main_profile))
    main_profile.enable()
    return profiles


def _finish_profile(args: argparse.Namespace, profiles: list[tuple[str, Any]]) -> None:
    if profiles:
        profiles[0][1].disable()
        Path(args.profile_out).write_text(_profile_report(profiles))


def child_drain_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One drain-parallel worker: drains its own shared-subscription session until idle.

    Prints `ready` once set up and starts when the parent sends a line on stdin, so that all
    workers start together. Times are CLOCK_MONOTONIC (system-wide on Linux), so the parent can
    compare them across workers.
    """
    from data_acq.acquire.drain import Drain, DrainLimits, DrainStats
    from data_acq.storage import LocalStore

    broker = broker_settings(args.port, args.client_id, args.protocol, args.topic)
    flushes: list[float] = []

    def on_flush(stats: DrainStats) -> None:
        flushes.append(time.monotonic())

    drain = Drain(
        broker, None, LocalStore(Path(args.store)), DrainLimits(idle_exit_s=1.0), on_flush=on_flush
    )
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("the parent did not say go")
    profiles = _start_profile(args)
    started = time.monotonic()
    stats = drain.run()
    ended = time.monotonic()
    _finish_profile(args, profiles)
    return {
        "started": started,
        "last_flush": flushes[-1] if flushes else None,
        "run_seconds": ended - started,
        "messages": stats.messages,
        "stored": stats.stored,
        "acknowledged": stats.acknowledged,
        "unacknowledged": stats.unacknowledged,
        "redelivered": stats.redelivered,
        "objects": stats.objects,
    }


def child_drain(args: argparse.Namespace) -> dict[str, Any]:
    from data_acq.acquire.drain import Drain, DrainLimits, DrainStats
    from data_acq.storage import LocalStore, ObjectStore, S3Store

    store: ObjectStore
    if args.store:
        store = LocalStore(Path(args.store))
    else:
        store = S3Store(s3_client(args.endpoint), args.bucket)
    broker = broker_settings(args.port, args.client_id, args.protocol)
    expected = args.messages
    stop = threading.Event()
    reached: list[float] = []

    def on_flush(stats: DrainStats) -> None:
        if not reached and stats.stored >= expected:
            reached.append(time.perf_counter())
            stop.set()

    drain = Drain(broker, None, store, DrainLimits(idle_exit_s=1.0), stop=stop, on_flush=on_flush)
    profiles = _start_profile(args)
    started = time.perf_counter()
    stats = drain.run()
    ended = time.perf_counter()
    _finish_profile(args, profiles)
    return {
        "seconds": (reached[0] - started) if reached else None,
        "run_seconds": ended - started,
        "messages": stats.messages,
        "stored": stats.stored,
        "acknowledged": stats.acknowledged,
        "unacknowledged": stats.unacknowledged,
        "redelivered": stats.redelivered,
        "objects": stats.objects,
    }


def child_paho(args: argparse.Namespace) -> dict[str, Any]:
    """paho alone, connected as the drain connects; acknowledges each message on arrival."""
    from data_acq.acquire.broker import connect, make_client
    from data_acq.acquire.drain import DrainLimits

    broker = broker_settings(args.port, args.client_id, args.protocol)
    client = make_client(broker, None, persistent=True, manual_ack=True)
    expected = args.messages
    seen: set[int] = set()
    received = [0]
    reached: list[float] = []
    done = threading.Event()

    def on_message(c: Any, _u: object, message: Any) -> None:
        c.ack(message.mid, message.qos)
        seen.add(hash(message.payload))
        received[0] += 1
        if received[0] == expected:
            reached.append(time.perf_counter())
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in broker.topics])
    started = time.perf_counter()
    connect(
        client,
        broker,
        persistent=True,
        session_expiry_s=DrainLimits().session_expiry_s,
        receive_maximum=drain_receive_maximum(),
    )
    client.loop_start()
    done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    return {
        "seconds": (reached[0] - started) if reached else None,
        "run_seconds": time.perf_counter() - started,
        "messages": received[0],
        "distinct": len(seen),
    }


def child(args: argparse.Namespace) -> None:
    if args.contender == "paho-bare":
        report = child_paho(args)
    elif args.contender == "drain-parallel":
        report = child_drain_worker(args)
    else:
        report = child_drain(args)
    report["vm_hwm"] = vm_hwm_bytes()
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    contender: str
    seconds: float  # start .. N-th message stored (drain) / received (the others)
    process_seconds: float  # the whole process, interpreter start and imports included
    cpu_seconds: float  # the contender's own user + system CPU
    broker_cpu_seconds: float  # Mosquitto's CPU while this contender ran
    peak_rss_bytes: int  # VmHWM
    wait4_maxrss_bytes: int  # ru_maxrss, includes the parent's RSS at spawn
    delivered: int  # messages in the output / in raw storage / received
    ok: bool  # exactly the N published payloads, each once
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # a child's own figures


@dataclass(slots=True)
class Setup:
    port: int
    broker_pid: int
    protocol: str
    sub_receive_maximum: int | None
    messages: list[tuple[str, bytes]]
    workdir: Path
    timeout: int
    profile: bool
    workers: int


def simulated_messages(count: int, sites: int, seed: int) -> list[tuple[str, bytes]]:
    from data_acq.devtools.simulate import SimulationSpec, simulate

    spec = SimulationSpec(
        sites=sites,
        minutes=math.ceil(count / sites),
        seed=seed,
        duplicate_rate=0.0,
        outage_sites=0,
    )
    messages = list(itertools.islice(simulate(spec), count))
    if len(messages) != count or len({p for _, p in messages}) != count:
        sys.exit(f"the simulator did not give {count} unique payloads")
    return messages


def create_drain_session(
    port: int, client_id: str, protocol: str, workdir: Path, topic: str = TOPIC_FILTER
) -> None:
    """Run the drain once (persistent session and subscription), let it go idle and leave."""
    from data_acq.acquire.drain import Drain, DrainLimits
    from data_acq.storage import LocalStore

    drain = Drain(
        broker_settings(port, client_id, protocol, topic),
        None,
        LocalStore(workdir / f"session-init-{client_id}"),
        DrainLimits(idle_exit_s=0.5),
    )
    stats = drain.run()
    if not drain.subscribed.is_set() or stats.messages:
        sys.exit(f"creating the session {client_id}: subscribed={drain.subscribed.is_set()}")


def create_sub_session(port: int, client_id: str, protocol: str) -> None:
    """mosquitto_sub connects with -c, subscribes and exits once the broker acknowledged (-E)."""
    command = [
        "mosquitto_sub",
        *("-h", "127.0.0.1", "-p", str(port), "-V", sub_version(protocol)),
        *("-q", "1", "-c", "-i", client_id, "-t", TOPIC_FILTER, "-E"),
    ]
    subprocess.run(command, check=True, timeout=30)


def session_present(port: int, client_id: str, protocol: str, expiry_s: int) -> bool:
    """Reconnect without a clean start and ask whether the broker kept the session.

    On MQTT v5 a reconnection sets the session expiry anew, so it sends the owner's. Nothing is
    queued yet, so this delivers nothing.
    """
    from data_acq.acquire.broker import connect, make_client

    broker = broker_settings(port, client_id, protocol)
    client = make_client(broker, None, persistent=True, manual_ack=True)
    answer: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, flags, _r, _p: answer.update(flags=flags)
    connect(client, broker, persistent=True, session_expiry_s=expiry_s)
    client.disconnect()
    return bool(answer["flags"].session_present)


def dropped_in_log(log_file: Path) -> list[str]:
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return [line for line in text.splitlines() if "dropp" in line.lower()]


def sys_value(port: int, topic: str) -> str:
    """One retained $SYS value (Mosquitto refreshes them every sys_interval, 10 s by default)."""
    done = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1", "-W", "3"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def same_payloads(delivered: list[bytes], messages: list[tuple[str, bytes]]) -> bool:
    return len(delivered) == len(messages) and set(delivered) == {p for _, p in messages}


def run_mosquitto_sub(setup: Setup) -> Result:
    count = len(setup.messages)
    command = [
        "mosquitto_sub",
        *("-h", "127.0.0.1", "-p", str(setup.port), "-V", sub_version(setup.protocol)),
        *("-q", "1", "-c", "-i", CLIENT_IDS["mosquitto_sub"], "-t", TOPIC_FILTER),
        *("-C", str(count), "-W", str(setup.timeout)),
    ]
    if setup.sub_receive_maximum and setup.protocol == "5":
        command += ["-D", "connect", "receive-maximum", str(setup.sub_receive_maximum)]
    output, errors = setup.workdir / "mosquitto_sub.out", setup.workdir / "mosquitto_sub.err"
    peak = [0]
    finished = threading.Event()
    broker_cpu = cpu_seconds(setup.broker_pid)
    with output.open("wb") as out, errors.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err)

        def watch() -> None:  # VmHWM only grows; the last reading before the exit is the peak
            while not finished.is_set():
                value = vm_hwm_bytes(proc.pid)
                if value is not None:
                    peak[0] = max(peak[0], value)
                finished.wait(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        finished.set()
        watcher.join()
    broker_cpu = cpu_seconds(setup.broker_pid) - broker_cpu
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    lines = output.read_bytes().splitlines()
    notes = [f"exit code {proc.returncode}"]
    if message := errors.read_text(errors="replace").strip():
        notes.append(f"stderr: {message}")
    return Result(
        "mosquitto_sub",
        seconds,
        seconds,
        usage.ru_utime + usage.ru_stime,
        broker_cpu,
        peak[0],
        usage.ru_maxrss * 1024,
        len(lines),
        proc.returncode == 0 and same_payloads(lines, setup.messages),
        notes,
    )


def run_child(setup: Setup, contender: str, target: list[str]) -> Result:
    """Run one child contender; the caller checks what it stored."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--contender", contender, "--port", str(setup.port), "--protocol", setup.protocol),
        *("--client-id", CLIENT_IDS[contender], "--messages", str(len(setup.messages))),
        *("--timeout", str(setup.timeout), *target),
    ]
    profile_out = setup.workdir / f"profile-{contender}.txt"
    if setup.profile and contender != "paho-bare":
        command += ["--profile-out", str(profile_out)]
    broker_cpu = cpu_seconds(setup.broker_pid)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    process_seconds = time.perf_counter() - start
    broker_cpu = cpu_seconds(setup.broker_pid) - broker_cpu
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"contender {contender} failed with exit code {proc.returncode}")
    if profile_out.exists():
        print(profile_out.read_text())
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    reached = report["seconds"] is not None
    notes = [f"run {report['run_seconds']:.2f} s"]
    if not reached:
        notes.append(f"NEVER REACHED {len(setup.messages):,}: the time shown is the whole run")
    return Result(
        contender,
        report["seconds"] if reached else report["run_seconds"],
        process_seconds,
        usage.ru_utime + usage.ru_stime,
        broker_cpu,
        int(report["vm_hwm"] or 0),
        usage.ru_maxrss * 1024,
        int(report["messages"]),
        reached,
        notes + [f"{key} {value:,}" for key, value in report.items() if key not in _SHOWN],
        report,
    )


_SHOWN = {"seconds", "run_seconds", "vm_hwm", "messages"}


def run_drain(setup: Setup, contender: str) -> Result:
    from data_acq.acquire.raw import raw_keys, read_raw
    from data_acq.devtools.local_broker import free_port
    from data_acq.storage import LocalStore, ObjectStore, S3Store

    moto = None
    store: ObjectStore
    if contender == "drain-local":
        root = setup.workdir / "raw-local"
        store, target = LocalStore(root), ["--store", str(root)]
    else:
        from moto.server import ThreadedMotoServer

        moto_port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        moto.start()
        endpoint = f"http://127.0.0.1:{moto_port}"
        client = s3_client(endpoint)
        client.create_bucket(Bucket=S3_BUCKET)
        store = S3Store(client, S3_BUCKET)
        target = ["--endpoint", endpoint, "--bucket", S3_BUCKET]
    try:
        result = run_child(setup, contender, target)
        keys = raw_keys(store)
        records = [(m.topic, m.payload) for m in read_raw(store, keys)]
    finally:
        if moto is not None:
            moto.stop()
    result.delivered = len(records)
    result.ok = (
        result.ok
        and len(records) == len(setup.messages)
        and set(records) == set(setup.messages)  # topic and payload
        and result.report["stored"] == len(setup.messages)
        and result.report["acknowledged"] == len(setup.messages)
        and result.report["objects"] == len(keys)
    )
    result.notes.append(f"{len(keys)} raw objects in storage")
    return result


def run_parallel(setup: Setup) -> Result:
    """drain-parallel: one child per worker, started together, each on its own shared session."""
    from data_acq.acquire.raw import raw_keys, read_raw
    from data_acq.storage import LocalStore

    count = len(setup.messages)
    root = setup.workdir / "raw-parallel"
    client_ids = worker_client_ids(setup.workers)
    procs: list[subprocess.Popen[bytes]] = []
    profile_outs: list[Path] = []
    spawned = time.perf_counter()
    for client_id in client_ids:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--contender", "drain-parallel", "--port", str(setup.port)),
            *("--protocol", setup.protocol, "--client-id", client_id, "--topic", SHARED_TOPIC),
            *("--messages", str(count), "--timeout", str(setup.timeout), "--store", str(root)),
        ]
        if setup.profile:
            profile_outs.append(setup.workdir / f"profile-{client_id}.txt")
            command += ["--profile-out", str(profile_outs[-1])]
        procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    for client_id, proc in zip(client_ids, procs, strict=True):
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            sys.exit(f"drain-parallel worker {client_id} did not get ready")
    broker_cpu = cpu_seconds(setup.broker_pid)
    for proc in procs:  # all are set up: start them together
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    reports: list[dict[str, Any]] = []
    cpu = 0.0
    wait4_maxrss = 0
    for client_id, proc in zip(client_ids, procs, strict=True):
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.exit(f"drain-parallel worker {client_id} failed with exit code {proc.returncode}")
        cpu += usage.ru_utime + usage.ru_stime
        wait4_maxrss = max(wait4_maxrss, usage.ru_maxrss * 1024)
        reports.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    process_seconds = time.perf_counter() - spawned
    broker_cpu = cpu_seconds(setup.broker_pid) - broker_cpu
    for profile_out in profile_outs:
        if profile_out.exists():
            print(f"----- {profile_out.name} -----\n{profile_out.read_text()}")

    started = min(r["started"] for r in reports)
    flushes = [r["last_flush"] for r in reports if r["last_flush"] is not None]
    store = LocalStore(root)
    keys = raw_keys(store)
    records = [(m.topic, m.payload) for m in read_raw(store, keys)]
    total = {key: sum(r[key] for r in reports) for key in ("stored", "acknowledged", "objects")}
    ok = (
        bool(flushes)
        and len(records) == count
        and set(records) == set(setup.messages)  # topic and payload, the union of all workers
        and total["stored"] == count
        and total["acknowledged"] == count
        and total["objects"] == len(keys)
    )
    notes = [f"{setup.workers} workers"]
    for client_id, r in zip(client_ids, reports, strict=True):
        last = f"{r['last_flush'] - started:.2f} s" if r["last_flush"] is not None else "never"
        notes.append(
            f"{client_id}: stored {r['stored']:,} (acknowledged {r['acknowledged']:,}, "
            f"{r['objects']} objects, redelivered {r['redelivered']:,}), started at "
            f"+{r['started'] - started:.3f} s, last flush at {last}, peak RSS "
            f"{(r['vm_hwm'] or 0) / MIB:,.1f} MB"
        )
    notes.append(f"{len(keys)} raw objects in storage")
    return Result(
        "drain-parallel",
        (max(flushes) - started) if flushes else process_seconds,
        process_seconds,
        cpu,
        broker_cpu,
        sum(int(r["vm_hwm"] or 0) for r in reports),
        wait4_maxrss,
        len(records),
        ok,
        notes,
        {"workers": reports},
    )


def run_paho(setup: Setup) -> Result:
    result = run_child(setup, "paho-bare", [])
    count = len(setup.messages)
    result.ok = result.ok and result.delivered == count and result.report["distinct"] == count
    return result


def versions() -> str:
    import boto3
    import moto
    import msgspec
    import paho.mqtt

    lines = subprocess.run(
        ["mosquitto_sub", "--help"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    sub = next((line.strip() for line in lines if "version" in line), "mosquitto_sub ?")
    return (
        f"python {platform.python_version()}, paho-mqtt {paho.mqtt.__version__}, "
        f"msgspec {msgspec.__version__}, boto3 {boto3.__version__}, moto {moto.__version__}; "
        f"{sub}"
    )


def print_table(results: list[Result], count: int) -> None:
    reference = next((r for r in results if r.contender == "mosquitto_sub"), None)
    header = (
        f"{'contender':<14} {'seconds':>8} {'msgs/s':>9} {'peak RSS MB':>11} {'CPU s':>6} "
        f"{'broker CPU s':>12} {'process s':>9} {'vs mosquitto_sub':>16}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{reference.seconds / r.seconds:.2f}" if reference else "-"
        if not r.ok or (reference and not reference.ok):
            ratio = "INVALID"
        print(
            f"{r.contender:<14} {r.seconds:>8.2f} {count / r.seconds:>9,.0f} "
            f"{r.peak_rss_bytes / MIB:>11,.1f} {r.cpu_seconds:>6.2f} "
            f"{r.broker_cpu_seconds:>12.2f} {r.process_seconds:>9.2f} {ratio:>16}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages queued (50,000)")
    parser.add_argument("--sites", type=int, default=50, help="simulated sites (50)")
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (42)")
    parser.add_argument(
        "--inflight",
        type=int,
        default=1000,
        help="broker max_inflight_messages (1000; Mosquitto's default is 20)",
    )
    parser.add_argument(
        "--queue", type=int, default=200_000, help="broker max_queued_messages (200,000)"
    )
    parser.add_argument(
        "--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version of every client (5)"
    )
    parser.add_argument(
        "--sub-receive-maximum",
        type=int,
        default=None,
        help="MQTT v5 Receive Maximum mosquitto_sub sends (default: the --inflight value; "
        "0: libmosquitto's own default, 20)",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated contenders, of {','.join(CONTENDERS)} "
        f"(default {','.join(DEFAULT_CONTENDERS)})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="drain-parallel: drains in parallel, one process and one shared-subscription "
        "session each (2)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="run the drain contenders under cProfile"
    )
    parser.add_argument("--timeout", type=int, default=600, help="per contender, seconds (600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    # internal: run one child contender in this process
    parser.add_argument("--contender", choices=CHILD_CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=TOPIC_FILTER, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.contender:
        child(args)
        return 0

    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown or not chosen:
        parser.error(f"--only takes a subset of {','.join(CONTENDERS)}")
    chosen = [c for c in CONTENDERS if c in chosen]
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if shutil.which("mosquitto_sub") is None:
        sys.exit("mosquitto_sub is not installed (Debian: apt-get install mosquitto-clients)")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request

    from data_acq.acquire.broker import publish_all
    from data_acq.acquire.drain import DrainLimits
    from data_acq.devtools.local_broker import LocalMosquitto

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="drain-", dir=OUT_DIR))
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}")
    print(f"versions: {versions()}")
    print(f"work folder: {workdir}")

    start = time.perf_counter()
    messages = simulated_messages(args.messages, args.sites, args.seed)
    payload_bytes = sum(len(p) for _, p in messages)
    print(
        f"input: {len(messages):,} unique payloads from {args.sites} sites, mean payload "
        f"{payload_bytes / len(messages):,.0f} B, {payload_bytes / MIB:,.1f} MB "
        f"(simulated in {time.perf_counter() - start:.1f} s)"
    )

    config = (f"max_queued_messages {args.queue}", f"max_inflight_messages {args.inflight}")
    sub_receive_maximum = (
        args.inflight if args.sub_receive_maximum is None else args.sub_receive_maximum
    )
    failed = False
    results: list[Result] = []
    broker = LocalMosquitto(workdir / "broker", extra=config)
    with broker:
        assert broker.process is not None
        setup = Setup(
            broker.port,
            broker.process.pid,
            args.protocol,
            sub_receive_maximum,
            messages,
            workdir,
            args.timeout,
            args.profile,
            args.workers,
        )
        print(f"broker: mosquitto on port {broker.port}, {'; '.join(config)}")
        line = f"clients: MQTT {args.protocol}, QoS 1, topic filter {TOPIC_FILTER}"
        if args.protocol == "5":
            line += (
                f"; Receive Maximum (replaces max_inflight_messages per client on MQTT v5): "
                f"drain and paho-bare {drain_receive_maximum()}, mosquitto_sub "
                f"{sub_receive_maximum or '20 (libmosquitto default)'}"
            )
        print(line)
        if "drain-parallel" in chosen:
            print(
                f"drain-parallel: {args.workers} workers, each its own persistent session "
                f"subscribed to {SHARED_TOPIC}"
            )

        # 1. the persistent sessions, before anything is published
        sessions: list[tuple[str, str]] = []  # (client id, topic filter)
        for contender in chosen:
            if contender == "drain-parallel":
                sessions += [(cid, SHARED_TOPIC) for cid in worker_client_ids(args.workers)]
            else:
                sessions.append((CLIENT_IDS[contender], TOPIC_FILTER))
        for client_id, topic in sessions:
            if client_id == CLIENT_IDS["mosquitto_sub"]:
                create_sub_session(broker.port, client_id, args.protocol)
                expiry = MOSQUITTO_SUB_NEVER_EXPIRES
            else:
                create_drain_session(broker.port, client_id, args.protocol, workdir, topic)
                expiry = DrainLimits().session_expiry_s
            present = session_present(broker.port, client_id, args.protocol, expiry)
            print(f"session {client_id} ({topic}): created; present on reconnection: {present}")
            if not present:
                sys.exit(f"the broker did not keep the session {client_id}")

        # 2. one publish fills every session
        publisher = broker_settings(broker.port, "bench-publisher", args.protocol)
        start = time.perf_counter()
        published = publish_all(publisher, None, iter(messages))
        seconds = time.perf_counter() - start
        print(
            f"published {published:,} messages in {seconds:.1f} s ({published / seconds:,.0f}/s), "
            f"queued in {len(sessions)} session(s)"
            + (
                f" (drain-parallel's {args.workers} split between them)"
                if "drain-parallel" in chosen
                else ""
            )
        )
        dropped = dropped_in_log(broker.log_file)
        print(f"broker log: {'DROPPED' if dropped else 'no dropped messages'}")

        # 3. the contenders, one after another
        for contender in chosen:
            print(f"running {contender} ...", flush=True)
            if contender == "mosquitto_sub":
                result = run_mosquitto_sub(setup)
            elif contender == "paho-bare":
                result = run_paho(setup)
            elif contender == "drain-parallel":
                result = run_parallel(setup)
            else:
                result = run_drain(setup, contender)
            print(
                f"  {contender}: {result.seconds:.2f} s, "
                f"{args.messages / result.seconds:,.0f} msgs/s, "
                f"peak RSS {result.peak_rss_bytes / MIB:,.1f} MB "
                f"(wait4 ru_maxrss {result.wait4_maxrss_bytes / MIB:,.1f} MB), "
                f"CPU {result.cpu_seconds:.2f} s, broker CPU {result.broker_cpu_seconds:.2f} s; "
                f"delivered {result.delivered:,}, exactly the published payloads: {result.ok}; "
                + ", ".join(result.notes),
                flush=True,
            )
            if not result.ok:
                print(f"!!! {contender} DID NOT DELIVER EXACTLY THE PUBLISHED PAYLOADS !!!")
                failed = True
            results.append(result)

        dropped = dropped_in_log(broker.log_file)
        if dropped:
            print("!!! THE BROKER DROPPED MESSAGES !!!\n  " + "\n  ".join(dropped))
            failed = True
        else:
            print("broker log: no dropped messages")
        counter = sys_value(broker.port, "$SYS/broker/publish/messages/dropped")
        print(f"broker $SYS/broker/publish/messages/dropped: {counter}")

    print()
    if args.profile:
        print("(profiled: the drain contenders ran under cProfile, their times are inflated)")
    print_table(results, args.messages)
    by_name = {r.contender: r for r in results}
    reference = by_name.get("mosquitto_sub")
    if reference:
        print()
        for name in (*DRAIN_CONTENDERS, "paho-bare"):
            if name not in by_name:
                continue
            ratio = reference.seconds / by_name[name].seconds
            line = f"{name} / mosquitto_sub throughput: {ratio:.2f}"
            if not (reference.ok and by_name[name].ok):
                line += " (INVALID: not every message was delivered)"
            print(line)
        valid = [
            by_name[name]
            for name in DRAIN_CONTENDERS
            if name in by_name and by_name[name].ok and reference.ok
        ]
        if valid:
            best = min(valid, key=lambda r: r.seconds)
            ratio = reference.seconds / best.seconds
            verdict = "met" if ratio >= RATIO_TARGET else "NOT MET"
            stretch = "met" if ratio >= RATIO_STRETCH else "not met"
            print(
                f"targets, judged for the fastest verified drain contender, {best.contender} "
                f"({ratio:.3f}): >= {RATIO_TARGET}: {verdict}; stretch >= {RATIO_STRETCH}: "
                f"{stretch}"
            )
        else:
            print("targets: no drain contender was run and passed verification")

    if args.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
