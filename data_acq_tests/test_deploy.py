"""The production deployment, as far as this machine can run it: the production instance on a
real PostgreSQL, and the image's entry commands in a virtual environment built like the image.

No Docker engine runs here, so the image itself is not built; see README ("Deployment").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from dagster import DagsterInstance, Definitions

from data_acq.defs.assets import staged_raw
from data_acq.defs.jobs import stage_job
from data_acq.defs.resources import LocalStorage
from data_acq.local_broker import free_port
from data_acq_tests.conftest import MotoS3

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL (127.0.0.1:5432), dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"data_acq_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'create database "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'drop database if exists "{name}" with (force)')
        admin.close()


def test_production_instance_runs_on_postgres(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    moto_s3.client().create_bucket(Bucket="acq-logs")  # type: ignore[attr-defined]
    # the run task definition deploy/cfn.yaml declares; EcsRunLauncher reads it when it loads
    boto3.client(
        "ecs", endpoint_url=moto_s3.endpoint, region_name="us-east-1"
    ).register_task_definition(
        family="data-acq-run",
        containerDefinitions=[{"name": "run", "image": "data-acq:test", "memory": 512}],
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
    )
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": postgres_db,
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "trust-auth-ignores-it",
        "DATA_ACQ_COMPUTE_LOGS_BUCKET": "acq-logs",
        "DATA_ACQ_RUN_TASK_DEFINITION": "data-acq-run",
    }.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        assert type(instance.run_launcher).__name__ == "EcsRunLauncher"
        job = Definitions(
            assets=[staged_raw],
            jobs=[stage_job],
            resources={"storage": LocalStorage(root=str(tmp_path / "store"))},
        ).resolve_job_def("stage_raw")
        result = job.execute_in_process(instance=instance)
        assert result.success
    finally:
        instance.dispose()
    with (
        psycopg2.connect(host="127.0.0.1", user="postgres", dbname=postgres_db) as con,
        con.cursor() as cur,
    ):
        cur.execute("select status from runs where run_id = %s", (result.run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("select count(*) from event_logs where run_id = %s", (result.run_id,))
        assert cur.fetchone()[0] > 0  # type: ignore[index]


def test_dockerfile_runs_unprivileged_from_the_lock_without_secrets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.12-slim" in dockerfile
    assert "pip install -c requirements.lock ." in dockerfile
    assert "\nUSER data-acq\n" in dockerfile and "useradd --system --uid 10001" in dockerfile
    for text in (dockerfile, (DEPLOY / "dagster.yaml").read_text()):
        lowered = text.lower()
        assert "password:" not in lowered or "password: {env: dagster_pg_password}" in lowered
        assert "aws_secret_access_key" not in lowered and "mqtt_password" not in lowered


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment built the way the Dockerfile builds the image."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            "requirements.lock",
            ".",
        ],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    return venv


def _role(venv: Path, role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    path = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return subprocess.Popen(
        [str(DEPLOY / "entrypoint.sh"), role],
        env={**os.environ, **env, "PATH": path},
        cwd=str(venv.parent),  # not the checkout: the installed package must be enough
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _until(check: object, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(1)
    return False


def test_entry_commands_in_a_venv_built_like_the_image(image_venv: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # sqlite, no AWS here
    code_port, web_port = free_port(), free_port()
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_CODE_HOST": "127.0.0.1",
        "DAGSTER_CODE_PORT": str(code_port),
        "DATA_ACQ_STORAGE": str(tmp_path / "store"),
    }
    bin_dir = image_venv / "bin"
    usage = subprocess.run([str(DEPLOY / "entrypoint.sh")], capture_output=True, check=False)
    assert usage.returncode == 2 and b"webserver | daemon | code-server" in usage.stderr
    processes = [_role(image_venv, "code-server", {**env, "PORT": str(code_port)})]
    try:
        health = [str(bin_dir / "dagster"), "api", "grpc-health-check", "-p", str(code_port)]
        assert _until(
            lambda: subprocess.run(health, capture_output=True, check=False).returncode == 0
        )
        processes.append(_role(image_venv, "webserver", {**env, "PORT": str(web_port)}))
        processes.append(_role(image_venv, "daemon", env))

        def webserver_up() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{web_port}/server_info", timeout=2
                ) as r:
                    return r.status == 200
            except OSError:
                return False

        assert _until(webserver_up)
        liveness = [str(bin_dir / "dagster-daemon"), "liveness-check"]
        assert _until(
            lambda: (
                subprocess.run(
                    liveness, env={**os.environ, **env}, capture_output=True, check=False
                ).returncode
                == 0
            )
        )
        # a run's command passes through unchanged (EcsRunLauncher: `dagster api execute_run ...`)
        passthrough = subprocess.run(
            [str(DEPLOY / "entrypoint.sh"), str(bin_dir / "dagster"), "--version"],
            capture_output=True,
            check=True,
        )
        assert b"1.13.27" in passthrough.stdout
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
