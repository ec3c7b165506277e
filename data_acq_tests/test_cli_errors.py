"""Bad command-line and configuration input: one clear line and the right exit code, never a
traceback. Each runs the real command in a subprocess; storage faults are real file systems
(a file, a read-only mount, a full tmpfs) in a private mount namespace."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from data_acq.devtools.local_broker import free_port
from data_acq.devtools.simulate import SimulationSpec, simulate
from data_acq.storage import LocalStore
from data_acq_tests.test_process_dagster import _put_lines

CLI = [sys.executable, "-m", "data_acq.cli"]
BASE = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DATA_ACQ_", "AWS_"))}


def _run(
    args: list[str], env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**BASE, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,  # type: ignore[arg-type]
    )


def _one_clear_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"data-acq {command}: "), result.stderr
    return last


def test_transform_with_stdin_closed() -> None:
    result = _run(["transform"], stdin=None, preexec_fn=lambda: os.close(0))
    assert result.returncode == 2
    assert "standard input is closed" in _one_clear_line(result, "transform")


@pytest.mark.parametrize("after", [0.2, 2.0])  # while the command line imports; while it reads
def test_ctrl_c_ends_a_command_with_code_130_and_no_traceback(after: float) -> None:
    command = [sys.executable, "-m", "data_acq", "transform"]  # as the `data-acq` script runs
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "data-acq: interrupted"
    assert b"Traceback" not in err


def test_a_date_that_does_not_exist_is_a_usage_error() -> None:
    result = _run(["process", "--date", "2024-13-45"])
    assert result.returncode == 2
    assert "not a date (YYYY-MM-DD): '2024-13-45'" in _one_clear_line(result, "process")


@pytest.mark.parametrize(
    ("env", "command", "message"),
    [
        ({"DATA_ACQ_STORAGE": "s3://"}, ["process"], "DATA_ACQ_STORAGE 's3://' names no valid"),
        ({"MQTT_TOPIC": "a/#/u"}, ["drain"], "MQTT_TOPIC 'a/#/u' is not a valid topic filter"),
        ({"MQTT_TOPIC": "a/x+/u/data"}, ["listen"], "uses '+' other than as a whole level"),
        (
            # no credentials anywhere: one line, not botocore's traceback
            {
                "DATA_ACQ_STORAGE": "s3://some-bucket",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                "AWS_CONFIG_FILE": "/nonexistent",
            },
            ["process"],
            "S3 bucket 'some-bucket': Unable to locate credentials",
        ),
    ],
)
def test_bad_configuration(env: dict[str, str], command: list[str], message: str) -> None:
    result = _run(command, env)
    assert result.returncode == 1
    assert message in _one_clear_line(result, command[0])


def test_storage_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for command in (["process"], ["drain", "--idle-exit", "0.5"]):
        # the drain checks its storage before connecting: no broker is needed to fail here
        result = _run(command, {"DATA_ACQ_STORAGE": str(afile), "MQTT_PORT": str(free_port())})
        assert result.returncode == 1
        assert f"storage {afile} is a file, not a folder" in _one_clear_line(result, command[0])


PROCESS = shlex.join([*CLI, "process"])


def _in_private_mount(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """A shell script in a mount namespace of its own: its mounts vanish with it."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (root, or user namespaces)")
    (tmp_path / "store").mkdir(exist_ok=True)
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        env={**BASE, "DATA_ACQ_STORAGE": str(tmp_path / "store")},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_read_only_storage(tmp_path: Path) -> None:
    result = _in_private_mount(
        tmp_path, f"mount --bind store store && mount -o remount,bind,ro store && {PROCESS}"
    )
    assert result.returncode == 1
    assert "Read-only file system" in _one_clear_line(result, "process")


def test_process_on_a_full_disk_fails_clearly_then_finishes_with_space(tmp_path: Path) -> None:
    source = LocalStore(tmp_path / "source")
    spec = SimulationSpec(sites=3, minutes=300, seed=2)
    _put_lines(source, list(simulate(spec)), datetime(2024, 10, 13, tzinfo=UTC))
    result = _in_private_mount(
        tmp_path,
        "mount -t tmpfs -o size=300k tmpfs store && cp -r source/. store/ && "
        f"{{ {PROCESS} 2>full.log; echo $? >full.rc; }} && "
        f"mount -o remount,size=20m store && {PROCESS} && find store -type f >listing.txt",
    )
    full = subprocess.CompletedProcess([], int((tmp_path / "full.rc").read_text()), "", "")
    full.stderr = (tmp_path / "full.log").read_text()
    assert full.returncode == 1
    assert "No space left on device" in _one_clear_line(full, "process")
    assert result.returncode == 0, result.stderr  # with space again, the rerun finishes
    listing = (tmp_path / "listing.txt").read_text()
    assert "store/warehouse.duckdb" in listing and "state/pending" not in listing
