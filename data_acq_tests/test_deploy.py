"""The production deployment, as far as this machine can run it: the production instance as the
entry point renders it from the settings, on a real PostgreSQL; its run monitoring failing dead
runs in a real daemon; its run queue (a window run and its successor per drain and live worker,
one run per partition key, processing capped, room for drains) and the task sizes its run
launcher asks for; the alarms' log filters against what runs print; and the image's entry
commands in a virtual environment built like the image.

No Docker engine runs here, so the image itself is not built; see README ("Deployment").
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType

import boto3
import cfnlint.decode as cfnlint_decode
import pytest
import yaml
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
    instance_for_test,
)
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.utils import make_new_run_id
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from data_acq.defs.jobs import PROCESSING_TASK, broker_check
from data_acq.defs.resources import CACertificate, LocalStorage, MQTTBroker
from data_acq.defs.windows import KIND_TAG, SUBSCRIPTION_TAG, WORKER_TAG
from data_acq.devtools.local_broker import LocalMosquitto, free_port
from data_acq.settings import SettingsError
from data_acq_tests.conftest import MotoS3
from data_acq_tests.dagster_parts import drain_job, raw_messages, stage_job, staged_raw, warehouse
from data_acq_tests.drain_helpers import publish_in_background, unique_messages

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _load_renderer() -> ModuleType:
    """deploy/render_instance.py, which the entry point runs (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("render_instance", DEPLOY / "render_instance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


renderer = _load_renderer()


def _rendered(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The production instance as the entry point writes it for these settings."""
    config = yaml.safe_load(renderer.render((DEPLOY / "dagster.yaml").read_text(), env or {}))
    assert isinstance(config, dict)
    return config


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


def _production_home(
    home: Path,
    postgres_db: str,
    moto_s3: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, object] | None = None,
) -> Path:
    """DAGSTER_HOME with the production instance rendered for the default settings (or
    `config`), its environment set as ECS sets it, and the AWS side it loads (compute log
    bucket, run task definition) in moto."""
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_rendered() if config is None else config))
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
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": postgres_db,
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "trust-auth-ignores-it",
        "DATA_ACQ_COMPUTE_LOGS_BUCKET": "acq-logs",
        "DATA_ACQ_RUN_TASK_DEFINITION": "data-acq-run",
        "DATA_ACQ_DRAIN_TASK_DEFINITION": "data-acq-drain",  # runs are ECS tasks
    }.items():
        monkeypatch.setenv(name, value)
    return home


def test_production_instance_runs_on_postgres(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        assert type(instance.run_launcher).__name__ == "GuardedEcsRunLauncher"
        job = Definitions(
            assets=[staged_raw, warehouse],
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


def test_production_instance_monitors_runs(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run monitoring is on, as the pinned Dagster reads deploy/dagster.yaml: a dead or hung run
    ends in FAILURE, which run retries retry, instead of blocking its subscription for ever."""
    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    try:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_poll_interval_seconds == 60
        assert instance.run_monitoring_start_timeout_seconds == 300
        assert instance.run_monitoring_cancel_timeout_seconds == 180
        assert instance.run_monitoring_max_runtime_seconds == 21600
        # a dead worker fails the run (and the retry is a new run) rather than being resumed
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 0
        # a run that failed in its own code (a drain refused because its subscription is being
        # drained) is not retried: it would be refused again
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        # the daemon runs the monitoring thread and the retrying one
        assert {"MONITORING", "EVENT_LOG_CONSUMER"} <= set(instance.get_required_daemon_types())
        # a dead drain is noticed well within one drain window (DATA_ACQ_DRAIN_WINDOW, 600 s)
        assert instance.run_monitoring_poll_interval_seconds < 600
        assert instance.run_monitoring_start_timeout_seconds < 600
        # the ceiling leaves room for processing a backlog (a day of 1,000 sites: ~6 minutes)
        assert instance.run_monitoring_max_runtime_seconds >= 4 * 3600
    finally:
        instance.dispose()


def _add_run(
    instance: DagsterInstance, job_name: str, status: DagsterRunStatus, **tags: str
) -> str:
    """A run of a data_acq job with the tags Dagster gives it: the job's own, and for a
    partition those of the job's partitions definition (`dagster/partition` ...)."""
    from data_acq.definitions import defs

    job = defs().resolve_job_def(job_name)
    partition = tags.pop("partition", None)
    run_tags = {
        **job.run_tags,
        **(job.get_tags_for_partition_key(partition, None) if partition else {}),
        **tags,
    }
    # where the production workspace (deploy/workspace.yaml) finds the job
    origin = RemoteRepositoryOrigin(
        GrpcServerCodeLocationOrigin("code.data-acq.local", 4000, location_name="data_acq"),
        "__repository__",
    ).get_job_origin(job.name)
    run_id = make_new_run_id()
    instance.add_run(
        DagsterRun(
            job_name=job.name,
            run_id=run_id,
            status=status,
            tags=run_tags,
            remote_job_origin=origin,
        )
    )
    return run_id


def _next_launched(instance: DagsterInstance) -> set[str]:
    """The queued runs the queued-run daemon would launch now: its own selection (private to the
    pinned Dagster, 1.13.27), with the instance's concurrency settings."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    with QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon:
        runs = daemon._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), fixed_iteration_time=None
        )
    return {run.run_id for run in runs}


# settings of a deployment with two drains (one subscription, two drain workers), two live
# workers and three backfill runs: the queue's limits follow them
QUEUE_ENV = {
    "DATA_ACQ_DRAIN_WORKERS": "2",
    "DATA_ACQ_BUCKETS": "4",
    "DATA_ACQ_LIVE_WORKERS": "2",
    "DATA_ACQ_BACKFILL_RUNS": "3",
}


def _per_value(key: str, limit: int) -> dict[str, object]:
    return {"key": key, "value": {"applyLimitPerUniqueValue": True}, "limit": limit}


def test_run_queue_limits_follow_the_settings() -> None:
    """What the entry point renders: two runs per drain and per live worker (a window run and
    its waiting successor), one per partition key, processing runs capped at
    DATA_ACQ_BACKFILL_RUNS, and places for all of them plus a few small jobs; the rest of
    deploy/dagster.yaml as it is."""
    default = _rendered()["concurrency"]["runs"]  # type: ignore[index]
    assert default == {
        "max_concurrent_runs": 2 * (1 + 1) + 4 + 4,
        "tag_concurrency_limits": [
            _per_value(SUBSCRIPTION_TAG, 2),
            _per_value(WORKER_TAG, 2),
            _per_value("dagster/partition", 1),
            {"key": KIND_TAG, "value": "processing", "limit": 4},
        ],
    }
    larger = _rendered({**QUEUE_ENV, "DATA_ACQ_SUBSCRIPTIONS": "data=a/+/u/data;meta=a/+/u/meta/#"})
    runs = larger["concurrency"]["runs"]  # type: ignore[index]
    assert runs["max_concurrent_runs"] == 2 * (2 * 2 + 2) + 3 + 4  # 4 drains, 2 live workers
    assert runs["tag_concurrency_limits"][-1] == {
        "key": KIND_TAG,
        "value": "processing",
        "limit": 3,
    }
    # everything else is deploy/dagster.yaml's, whose own run queue launches nothing
    template = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert template["concurrency"] == {"runs": {"max_concurrent_runs": 0}}
    assert {k: v for k, v in larger.items() if k != "concurrency"} == {
        k: v for k, v in template.items() if k != "concurrency"
    }
    # the settings the code refuses, the renderer refuses; and DATA_ACQ_BACKFILL_RUNS's bounds
    for refused in (
        {"DATA_ACQ_LIVE_WORKERS": "2"},  # more live workers than buckets
        {"DATA_ACQ_DRAIN_WORKERS": "0"},
        {"DATA_ACQ_BACKFILL_RUNS": "0"},
        {"DATA_ACQ_BACKFILL_RUNS": str(renderer.MAX_BACKFILL_RUNS + 1)},
        {"DATA_ACQ_BACKFILL_RUNS": "four"},
    ):
        with pytest.raises(SettingsError):
            _rendered(refused)
    assert renderer.backfill_runs({"DATA_ACQ_BACKFILL_RUNS": "1"}) == 1
    assert renderer.backfill_runs({"DATA_ACQ_BACKFILL_RUNS": " 256 "}) == 256
    # the renderer's tag keys are the ones the jobs and sensors set
    assert (renderer.KIND_TAG, renderer.SUBSCRIPTION_TAG, renderer.WORKER_TAG) == (
        KIND_TAG,
        SUBSCRIPTION_TAG,
        WORKER_TAG,
    )


def test_production_run_queue_overlaps_windows_and_caps_processing(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered run queue, as the pinned Dagster's daemon selects runs from PostgreSQL: a
    drain's and a live worker's successor starts while its predecessor runs (two per slot,
    never three), never two runs of one partition key, at most DATA_ACQ_BACKFILL_RUNS
    processing runs, and drains, live runs and the small jobs still start while processing
    runs fill their cap."""
    config = _rendered(QUEUE_ENV)
    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch, config)
    instance = DagsterInstance.from_config(str(home))
    try:
        concurrency = instance.get_concurrency_config()
        queue = concurrency.run_queue_config
        assert queue is not None
        assert queue.max_concurrent_runs == 2 * (2 + 2) + 3 + 4
        # no pool: the warehouse is views, and no job names a pool
        assert "pools" not in instance.get_settings("concurrency")
        assert concurrency.pool_config.default_pool_limit is None
        assert concurrency.pool_config.pool_granularity is None

        started, queued = DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED

        def drain(status: DagsterRunStatus, subscription: str) -> str:
            return _add_run(instance, "drain", status, **{SUBSCRIPTION_TAG: subscription})

        def live(status: DagsterRunStatus, worker: int) -> str:
            return _add_run(instance, "live_processing", status, **{WORKER_TAG: str(worker)})

        def clear() -> None:
            for run in instance.get_runs():
                instance.delete_run(run.run_id)

        # windows: each running window gets its successor, and only one
        drain(started, "main-1")
        live(started, 1)
        drain_successor, drain_third = drain(queued, "main-1"), drain(queued, "main-1")
        live_successor, live_third = live(queued, 1), live(queued, 1)
        other_drain, other_live = drain(queued, "main-2"), live(queued, 2)
        launched = _next_launched(instance)
        assert launched == {drain_successor, live_successor, other_drain, other_live}
        assert not launched & {drain_third, live_third}

        # partitions: never two runs of one unit or day, whoever launched them
        clear()
        _add_run(instance, "curate_unit", started, partition="07|2024-10-12")
        same_unit = _add_run(instance, "curate_unit", queued, partition="07|2024-10-12")
        other_unit = _add_run(instance, "curate_unit", queued, partition="08|2024-10-12")
        other_unit_again = _add_run(instance, "curate_unit", queued, partition="08|2024-10-12")
        charts = _add_run(instance, "draw_charts", queued, partition="2024-10-12")
        launched = _next_launched(instance)
        assert launched == {other_unit, charts}  # 3 processing runs with the one going
        assert not launched & {same_unit, other_unit_again}

        # a backfill: 3 processing runs fill the cap, more are queued -- drains, live runs and
        # the small jobs still start; the processing runs wait
        clear()
        for bucket in range(3):
            _add_run(instance, "curate_unit", started, partition=f"{bucket:02d}|2024-10-12")
        waiting = {
            _add_run(instance, "curate_unit", queued, partition="03|2024-10-12"),
            _add_run(instance, "stage_raw", queued),
            _add_run(instance, "draw_charts", queued, partition="2024-10-12"),
        }
        windows = {drain(queued, "main-1"), drain(queued, "main-2"), live(queued, 1)}
        windows.add(live(queued, 2))
        purge = _add_run(instance, "purge_old_runs", queued)
        launched = _next_launched(instance)
        assert launched == {*windows, purge}
        assert not launched & waiting

        # everything at its limit: every slot with a run and its successor, the processing cap
        # full: the small jobs have their 4 places, and a 5th waits
        clear()
        for subscription in ("main-1", "main-2"):
            drain(started, subscription)
            drain(started, subscription)
        for worker in (1, 2):
            live(started, worker)
            live(started, worker)
        for bucket in range(3):
            _add_run(instance, "curate_unit", started, partition=f"{bucket:02d}|2024-10-12")
        small = [_add_run(instance, "purge_old_runs", queued) for _ in range(4)]
        small.append(_add_run(instance, "broker_check", queued))
        third_window = drain(queued, "main-1")
        launched = _next_launched(instance)
        assert launched == set(small[:4])
        assert third_window not in launched
    finally:
        instance.dispose()


def test_production_launcher_sizes_each_job_within_fargate(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cpu and memory the production EcsRunLauncher asks ECS for, per job: the job's
    ecs/cpu and ecs/memory tags, else run_resources -- each a size Fargate offers."""
    from dagster_aws.ecs.container_context import EcsContainerContext

    fargate_memory = {512: range(1024, 4097, 1024), 1024: range(2048, 8193, 1024)}
    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    try:
        launcher = instance.run_launcher
        sizes = {}
        for job_name in (
            "drain",
            "live_processing",
            "stage_raw",
            "curate_unit",
            "draw_charts",
            "purge_old_runs",
            "broker_check",
        ):
            run = instance.get_run_by_id(_add_run(instance, job_name, DagsterRunStatus.QUEUED))
            assert run is not None
            context = EcsContainerContext.create_for_run(run, launcher)
            overrides = launcher.get_cpu_and_memory_overrides(context, run)
            sizes[job_name] = (int(overrides["cpu"]), int(overrides["memory"]))
        assert sizes["drain"] == (512, 1024)
        processing = (int(PROCESSING_TASK["ecs/cpu"]), int(PROCESSING_TASK["ecs/memory"]))
        assert processing == (1024, 4096)
        for job_name in (
            "live_processing",
            "stage_raw",
            "curate_unit",
            "draw_charts",
            "purge_old_runs",
        ):
            assert sizes[job_name] == processing, job_name  # tags, or run_resources
        for job_name, (cpu, memory) in sizes.items():
            assert memory in fargate_memory[cpu], (job_name, cpu, memory)
    finally:
        instance.dispose()


def test_production_launcher_refuses_runs_that_change_their_task(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tags that override a run's ECS task (command, roles, task definition) are refused when
    the daemon launches the run, but for the drain job's own task definition tag."""
    from dagster._core.launcher import LaunchRunContext

    from data_acq.run_launcher import RefusedRun, refusal

    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    drain_task = json.dumps({"taskDefinition": "data-acq-drain"})
    try:
        drain = instance.get_run_by_id(_add_run(instance, "drain", DagsterRunStatus.QUEUED))
        assert drain is not None and drain.tags["ecs/run_task_kwargs"] == drain_task
        assert refusal(drain.job_name, drain.tags, "data-acq-drain") is None
        for job_name, tags in [
            ("curate_unit", {"ecs/run_task_kwargs": drain_task}),  # the drain's credentials
            ("curate_unit", {"ecs/container_overrides": '{"command": ["sh"]}'}),
            ("purge_old_runs", {"ecs/task_overrides": '{"taskRoleArn": "arn:other"}'}),
            ("drain", {"ecs/run_task_kwargs": json.dumps({"taskDefinition": "data-acq-run"})}),
        ]:
            run = instance.get_run_by_id(
                _add_run(instance, job_name, DagsterRunStatus.QUEUED, **tags)
            )
            assert run is not None
            tag = next(iter(tags))
            with pytest.raises(RefusedRun, match=f"tag {tag} would change its ECS task"):
                instance.run_launcher.launch_run(LaunchRunContext(run, workspace=None))
    finally:
        instance.dispose()

    # on ECS the drain's task definition is this deployment's revision (an ARN): during a deploy
    # the code server and the daemon may name different revisions of it, and nothing else
    ours = "arn:aws:ecs:eu-west-1:123456789012:task-definition/data-acq-drain-prod:4"

    def drain_tag(**kwargs: str) -> dict[str, str]:
        return {"ecs/run_task_kwargs": json.dumps(kwargs)}

    assert refusal("drain", drain_tag(taskDefinition=ours.replace(":4", ":5")), ours) is None
    for other in (
        ours.replace("data-acq-drain-prod", "data-acq-run-prod"),  # not the drain's
        ours.replace("data-acq-drain-prod", "data-acq-drain-staging"),  # another stack's
        ours.replace("123456789012", "210987654321"),  # another account's
    ):
        assert refusal("drain", drain_tag(taskDefinition=other), ours), other
    assert refusal("drain", drain_tag(taskDefinition=ours, launchType="EC2"), ours)
    assert refusal("drain", {"ecs/run_task_kwargs": "not json"}, ours)


def test_a_run_gets_the_task_definition_its_code_location_names(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code server's container context (DAGSTER_CONTAINER_CONTEXT, deploy/cfn.yaml: its
    own deployment's run task definition) decides the task a run it created is launched as,
    before the launcher's DATA_ACQ_RUN_TASK_DEFINITION: during a deploy, a run queued by the
    old code server still runs the old image."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster_aws.ecs.container_context import EcsContainerContext

    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    old = "arn:aws:ecs:us-east-1:123456789012:task-definition/data-acq-run-prod:6"
    try:
        launcher = instance.run_launcher
        pointer = ModuleCodePointer("data_acq.definitions", "defs", str(ROOT))
        origins = [
            JobPythonOrigin(
                "curate_unit",
                RepositoryPythonOrigin(sys.executable, pointer, container_context=context),
            )
            for context in ({"ecs": {"task_definition_arn": old}}, None)
        ]
        chosen = [
            EcsContainerContext.create_for_run(
                DagsterRun(job_name="curate_unit", job_code_origin=origin), launcher
            ).task_definition_arn
            for origin in origins
        ]
        assert chosen == [old, launcher.task_definition]
        assert launcher.task_definition.endswith("task-definition/data-acq-run:1")
    finally:
        instance.dispose()


def _filter_terms(pattern: str) -> list[str]:
    """The terms of a CloudWatch Logs `?"a" ?"b"` pattern (an event matches if it has any)."""
    terms = re.findall(r'\?"([^"]+)"', pattern)
    assert terms and re.sub(r'\s*\?"[^"]+"\s*', "", pattern) == "", pattern
    return terms


def _matched(pattern: str, lines: list[str]) -> list[str]:
    """The lines a CloudWatch Logs `"a" "b"` pattern matches: each has every quoted term
    (CloudWatch's exact-phrase match, case-sensitive). No other syntax is modelled."""
    terms = re.findall(r'"([^"]+)"', pattern)
    assert terms and re.sub(r'\s*"[^"]+"\s*', "", pattern) == "", pattern
    return [line for line in lines if all(term in line for term in terms)]


def _template_resources() -> dict[str, dict[str, object]]:
    template, _ = cfnlint_decode.decode_str((DEPLOY / "cfn.yaml").read_text())
    assert isinstance(template, dict)
    return dict(template["Resources"])


def _filter_pattern(resources: Mapping[str, dict[str, object]], name: str) -> str:
    properties = resources[name]["Properties"]
    assert isinstance(properties, dict)
    return str(properties["FilterPattern"])


def test_alarm_filters_count_what_runs_print(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The run-log lines that the failed-runs and stale raw data alarms count (deploy/cfn.yaml),
    as real runs print them to the console (what ECS sends to the run log group): a drain
    window that stored nothing and one that stored messages, and a failed run of the drain and
    of another job. A successful run prints no RUN_FAILURE."""
    resources = _template_resources()
    run_failure = _filter_pattern(resources, "RunLogRunFailureFilter")
    assert _filter_pattern(resources, "DaemonLogRunFailureFilter") == run_failure
    windows = _filter_pattern(resources, "RunLogDrainWindowFilter")
    empty = _filter_pattern(resources, "RunLogEmptyDrainWindowFilter")

    def defs(port: int) -> Definitions:
        mqtt = MQTTBroker(
            host="127.0.0.1",
            port=port,
            topics=["a/+/u/data"],
            client_id="alarm-lines",
            ca_certificate=CACertificate(cache_dir=str(tmp_path / "ca")),
        )
        storage = LocalStorage(root=str(tmp_path / "store"))
        return Definitions(
            assets=[raw_messages],
            jobs=[drain_job, broker_check],
            resources={"mqtt": mqtt, "storage": storage},
        )

    config = {"ops": {"raw_messages": {"config": {"idle_exit_s": 0.5, "max_seconds": 5.0}}}}
    with (
        instance_for_test() as instance,
        LocalMosquitto(tmp_path / "mq", extra=("max_queued_messages 1000",)) as broker,
    ):
        drain = defs(broker.port).resolve_job_def("drain")
        assert drain.execute_in_process(run_config=config, instance=instance).success  # the session
        publish_in_background(broker.port, unique_messages(20)).join(30)  # queued in it
        time.sleep(0.2)
        until_idle = {
            "ops": {"raw_messages": {"config": {"idle_exit_s": 2.0, "max_seconds": 20.0}}}
        }
        assert drain.execute_in_process(run_config=until_idle, instance=instance).success
        printed = capfd.readouterr()
        lines = (printed.out + printed.err).splitlines()
        refused = defs(free_port())
        for job_name in ("drain", "broker_check"):
            run = refused.resolve_job_def(job_name).execute_in_process(
                run_config=config if job_name == "drain" else None,
                instance=instance,
                raise_on_error=False,
            )
            assert not run.success, job_name
    printed = capfd.readouterr()
    failed_lines = (printed.out + printed.err).splitlines()

    # the two windows: both end with the line, one stored nothing
    with_data = [line for line in _matched(windows, lines) if line not in _matched(empty, lines)]
    assert len(_matched(windows, lines)) == 2, lines
    assert len(_matched(empty, lines)) == 1
    (stored,) = with_data
    assert "window ended: 20 messages stored in" in stored
    assert not _matched(run_failure, lines)  # they succeeded
    # each failed run, whatever its job, prints one line the failed-runs filter counts
    failures = _matched(run_failure, failed_lines)
    assert len(failures) == 2, failed_lines
    assert [f for f in failures if 'for "drain" failed' in f]
    assert [f for f in failures if 'for "broker_check" failed' in f]
    assert not _matched(windows, failed_lines)  # no window ended: the drain never connected


def _group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the process group of the process this test started


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        _group(process, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _group(process, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.slow
def test_run_monitoring_fails_dead_runs_which_are_retried_and_alarmed(
    postgres_db: str, moto_s3: MotoS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real dagster-daemon on the production instance (PostgreSQL, EcsRunLauncher against
    moto's ECS, QueuedRunCoordinator, run retries) with only the monitoring intervals shortened,
    and three dead drain runs: one whose task never started the run (STARTING), one whose ECS
    task was OOM-killed (STARTED, task STOPPED with exit code 137) and one hung past its
    dagster/max_runtime tag (STARTED, task running). Each ends in FAILURE, gets a retry run,
    and writes a daemon log line that the failed-drain alarm's metric filter (deploy/cfn.yaml)
    counts."""
    config = _rendered()
    config["run_monitoring"].update(poll_interval_seconds=1, start_timeout_seconds=2)  # type: ignore[attr-defined]
    # keep the retries queued: launching them would start ECS tasks, which moto cannot run
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # type: ignore[index]
    home = _production_home(tmp_path / "dagster_home", postgres_db, moto_s3, monkeypatch, config)
    code_port = free_port()
    monkeypatch.setenv("DAGSTER_CODE_HOST", "127.0.0.1")  # read by deploy/workspace.yaml
    monkeypatch.setenv("DAGSTER_CODE_PORT", str(code_port))
    monkeypatch.setenv("DATA_ACQ_STORAGE", str(tmp_path / "store"))
    ecs = boto3.client("ecs", endpoint_url=moto_s3.endpoint, region_name="us-east-1")
    ecs.create_cluster(clusterName="data-acq")
    # moto cannot start awsvpc tasks, so the stand-in run tasks come from a plain definition
    ecs.register_task_definition(
        family="stand-in-run",
        containerDefinitions=[{"name": "run", "image": "data-acq:test", "memory": 512}],
    )

    bin_dir = Path(sys.executable).parent
    daemon_log = tmp_path / "daemon.log"
    processes: list[subprocess.Popen[bytes]] = []
    instance = DagsterInstance.from_config(str(home))
    try:
        # the code location, as the code-server service serves it
        processes.append(
            subprocess.Popen(
                [
                    *(str(bin_dir / "dagster"), "api", "grpc", "-h", "127.0.0.1"),
                    *("-p", str(code_port), "-m", "data_acq.definitions"),
                ],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        health = [str(bin_dir / "dagster"), "api", "grpc-health-check", "-p", str(code_port)]
        assert _until(
            lambda: subprocess.run(health, capture_output=True, check=False).returncode == 0,
            timeout=60,
        ), "the code server did not start"

        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget

        from data_acq.definitions import defs

        target = WorkspaceFileTarget(paths=[str(DEPLOY / "workspace.yaml")])
        with WorkspaceProcessContext(instance, target) as workspace:
            location = workspace.create_request_context().get_code_location("data_acq")
            remote_drain = location.get_repository("__repository__").get_full_job("drain")
        drain = defs().resolve_job_def("drain")

        with daemon_log.open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [str(bin_dir / "dagster-daemon"), "run", "-w", str(DEPLOY / "workspace.yaml")],
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        # the retrying thread ignores failures from before its first pass: wait for it
        cursor = f"EVENT_LOG_CONSUMER_CURSOR-{DagsterEventType.RUN_FAILURE.value}"
        assert _until(
            lambda: bool(instance.daemon_cursor_storage.get_cursor_values({cursor})), timeout=60
        ), daemon_log.read_text()

        def dead_run(subscription: str, event: DagsterEventType, **tags: str) -> str:
            run = instance.create_run_for_job(
                drain,
                tags={**drain.tags, "data_acq/subscription": subscription, **tags},
                remote_job_origin=remote_drain.get_remote_origin(),
                job_code_origin=remote_drain.get_python_origin(),
            )
            # what EcsRunLauncher (STARTING) and then the run worker (STARTED) would record
            instance.report_dagster_event(
                DagsterEvent(event_type_value=event.value, job_name=drain.name), run.run_id
            )
            return run.run_id

        def stand_in_task() -> str:
            started = ecs.run_task(
                cluster="data-acq", taskDefinition="stand-in-run", launchType="FARGATE"
            )
            return started["tasks"][0]["taskArn"]

        never_started = dead_run("never-started", DagsterEventType.RUN_STARTING)
        oom_task = stand_in_task()
        ecs.stop_task(
            cluster="data-acq", task=oom_task, reason="OutOfMemoryError: Container killed"
        )
        # what ECS reports for an OOM kill; moto has no call to set a container's exit code
        from moto.ecs.models import ecs_backends

        account = oom_task.split(":")[4]
        for container in ecs_backends[account]["us-east-1"].tasks["data-acq"][oom_task].containers:
            container.exitCode = 137
        oom_killed = dead_run(
            "oom-killed",
            DagsterEventType.RUN_START,
            **{"ecs/task_arn": oom_task, "ecs/cluster": "data-acq"},
        )
        hung_task = stand_in_task()
        hung = dead_run(
            "hung",
            DagsterEventType.RUN_START,
            **{"ecs/task_arn": hung_task, "ecs/cluster": "data-acq", "dagster/max_runtime": "1"},
        )
        dead = [never_started, oom_killed, hung]

        def retries() -> dict[str, DagsterRun]:
            return {
                run.parent_run_id: run
                for run in instance.get_runs(RunsFilter(job_name="drain"))
                if run.parent_run_id in dead
            }

        # each retry is created (NOT_STARTED), then submitted to the queue (QUEUED)
        assert _until(
            lambda: [r.status for r in retries().values()] == [DagsterRunStatus.QUEUED] * 3,
            timeout=60,
        ), daemon_log.read_text()
        for run_id in dead:
            run = instance.get_run_by_id(run_id)
            assert run is not None and run.status == DagsterRunStatus.FAILURE
            retry = retries()[run_id]
            assert retry.status == DagsterRunStatus.QUEUED
            assert retry.tags["data_acq/subscription"] == run.tags["data_acq/subscription"]
            assert retry.tags["dagster/retry_number"] == "1"

        def failure(run_id: str) -> str:
            (event,) = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
            return event.message

        assert "taking longer than 2 seconds to start" in failure(never_started)
        assert "exit code 137" in failure(oom_killed)
        assert "OutOfMemoryError" in failure(oom_killed)
        assert "Exceeded maximum runtime of 1 seconds" in failure(hung)
        (task,) = ecs.describe_tasks(cluster="data-acq", tasks=[hung_task])["tasks"]
        assert task["lastStatus"] == "STOPPED"  # the hung task was stopped
    finally:
        _stop(processes)
        instance.dispose()

    # the alarm: each failure left a daemon log line that its metric filter matches
    template, _ = cfnlint_decode.decode_str((DEPLOY / "cfn.yaml").read_text())
    assert isinstance(template, dict)
    metric_filter = template["Resources"]["DaemonLogRunMonitoringFailureFilter"]["Properties"]
    assert metric_filter["LogGroupName"] == {"Ref": "DaemonLogGroup"}
    terms = _filter_terms(metric_filter["FilterPattern"])
    lines = daemon_log.read_text(errors="replace").splitlines()
    counted = [line for line in lines if any(term in line for term in terms)]
    assert any(f"Marking run {oom_killed} as failed" in line for line in counted), lines
    assert any("seconds to start" in line for line in counted), lines
    assert any(hung in line and "exceeded maximum runtime" in line for line in counted), lines


def test_daemon_filter_names_the_pinned_daemons_launch_failure() -> None:
    """A run whose launch fails (RunTask refused) is failed by the daemon's run queue without a
    RUN_FAILURE line; the pinned Dagster logs this message for it (read from its source: no
    launch failure is produced here), which the daemon's filter counts."""
    import inspect

    from dagster._daemon.run_coordinator import queued_run_coordinator_daemon

    source = inspect.getsource(queued_run_coordinator_daemon)
    launch = source.index("instance.run_launcher.launch_run(")
    logged = source.index('log_message=f"Caught an error dequeuing run {run.run_id}"', launch)
    assert logged - launch < 400  # in the except clause around the launch
    resources = _template_resources()
    terms = _filter_terms(_filter_pattern(resources, "DaemonLogRunMonitoringFailureFilter"))
    assert "Caught an error dequeuing run" in terms


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order: (INSTRUCTION, its arguments on one line)."""
    steps: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, inside a continued instruction too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        instruction, _, args = (pending + stripped).partition(" ")
        steps.append((instruction.upper(), " ".join(args.split())))
        pending = ""
    return steps


def _dev_uv_version() -> str:
    """The uv release that ./dev installs and runs."""
    match = re.search(r"^UV_VERSION=(\S+)", (ROOT / "dev").read_text(), re.MULTILINE)
    assert match, "./dev names no UV_VERSION"
    return match.group(1)


def _copies(steps: list[tuple[str, str]]) -> list[tuple[int, list[str], str]]:
    """The COPY steps from the build context: (position, sources, destination)."""
    copies = []
    for at, (instruction, args) in enumerate(steps):
        if instruction == "COPY" and not args.startswith("--"):
            *sources, destination = shlex.split(args)
            copies.append((at, sources, destination))
    return copies


def test_dockerfile_installs_the_lock_before_the_code_unprivileged_without_secrets() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    steps = _dockerfile()
    assert dockerfile.startswith("# ")
    # the image runs on the Python the tests run on
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert steps[0] == ("FROM", f"python:{python}-slim"), f"the tests run on Python {python}"
    # uv: the release ./dev uses; nothing installs with pip
    uv_image = [args for instruction, args in steps if args.startswith("--from=")]
    assert uv_image == [f"--from=ghcr.io/astral-sh/uv:{_dev_uv_version()} /uv /usr/local/bin/uv"]
    assert "pip install" not in dockerfile
    # two installs, both exactly from uv.lock and without the dev group: the dependencies alone,
    # then data-acq itself (not editable)
    syncs = [
        (at, shlex.split(args))
        for at, (instruction, args) in enumerate(steps)
        if instruction == "RUN" and args.startswith("uv ")
    ]
    assert [command[:3] for _, command in syncs] == [["uv", "sync", "--frozen"]] * 2, syncs
    (dependencies_at, dependencies), (project_at, project) = syncs
    assert {"--no-dev", "--no-install-project"} <= set(dependencies)
    assert {"--no-dev", "--no-editable"} <= set(project) and "--no-install-project" not in project
    # the dependencies' layer is built from pyproject.toml and uv.lock alone, and the code is
    # copied only after it: a code change reuses that layer
    copies = _copies(steps)
    before = sorted(
        source for at, sources, _ in copies if at < dependencies_at for source in sources
    )
    assert before == ["pyproject.toml", "uv.lock"]
    (code_at,) = [at for at, sources, _ in copies if "data_acq" in sources]
    assert dependencies_at < code_at < project_at
    # the installed commands come first on PATH (entrypoint.sh runs dagster, dagster-webserver...)
    workdir = next(args for instruction, args in steps if instruction == "WORKDIR")
    env = dict(
        pair.split("=", 1)
        for instruction, args in steps
        if instruction == "ENV"
        for pair in shlex.split(args)
    )
    assert env["PATH"].startswith(f"{workdir}/.venv/bin:")
    # unprivileged
    assert any(i == "RUN" and "useradd --system --uid 10001 " in a for i, a in steps)
    assert steps.index(("USER", "data-acq")) > project_at
    for text in (dockerfile, (DEPLOY / "dagster.yaml").read_text()):
        lowered = text.lower()
        assert "password:" not in lowered or "password: {env: dagster_pg_password}" in lowered
        assert "aws_secret_access_key" not in lowered and "mqtt_password" not in lowered


def _requirement(name: str, specifier: str, extras: object, marker: object) -> tuple[str, ...]:
    return (
        canonicalize_name(name),
        ",".join(sorted(str(spec) for spec in SpecifierSet(specifier))),
        ",".join(sorted(extras or ())),  # type: ignore[call-overload]
        str(marker or ""),
    )


def test_uv_lock_is_the_resolution_of_pyproject() -> None:
    """`uv sync --frozen` (./dev and the image) takes uv.lock as it is, without comparing it with
    pyproject.toml: a dependency changed in pyproject.toml and not re-locked (`./dev lock`) would
    be silently left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert lock["requires-python"] == project["project"]["requires-python"]
    (own,) = [p for p in lock["package"] if p["name"] == project["project"]["name"]]

    def wanted(requirements: list[str]) -> list[tuple[str, ...]]:
        parsed = [Requirement(r) for r in requirements]
        return sorted(_requirement(r.name, str(r.specifier), r.extras, r.marker) for r in parsed)

    def locked(entries: list[dict[str, object]]) -> list[tuple[str, ...]]:
        return sorted(
            _requirement(
                str(e["name"]), str(e.get("specifier", "")), e.get("extras"), e.get("marker")
            )
            for e in entries
        )

    metadata = own["metadata"]
    assert locked(metadata["requires-dist"]) == wanted(project["project"]["dependencies"])
    groups = project["dependency-groups"]
    assert set(metadata["requires-dev"]) == set(groups)
    for group, requirements in groups.items():
        assert locked(metadata["requires-dev"][group]) == wanted(requirements)


def _uv() -> str:
    """The uv that ./dev runs: it says which (DATA_ACQ_UV), else where ./dev puts it."""
    if uv := os.environ.get("DATA_ACQ_UV"):
        return uv
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    uv = cache / "data-acq" / f"uv-{_dev_uv_version()}" / "bin" / "uv"
    if not uv.exists():
        pytest.fail(f"uv {_dev_uv_version()} is not in {uv.parent}: run ./dev setup")
    return str(uv)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's virtual environment, built the way the Dockerfile builds it: its COPY steps
    (from this checkout) and its `uv` RUN steps, in order, in a folder standing for its WORKDIR,
    with its ENV. Two differences: the interpreter is this one (the same Python version, as the
    test above checks), and uv's cache is used (./dev setup has just filled it; CI starts with it
    empty too)."""
    root = tmp_path_factory.mktemp("image")
    workdir = root
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
    path = ""
    for instruction, args in _dockerfile():
        if instruction == "WORKDIR":
            workdir = root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                if key.startswith("UV_"):
                    env[key] = value
                elif key == "PATH":
                    path = value
        elif instruction == "COPY" and not args.startswith("--"):
            *sources, destination = shlex.split(args)
            for source in sources:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")  # .dockerignore
                    shutil.copytree(ROOT / source, workdir / destination, ignore=ignore)
                else:
                    shutil.copy2(ROOT / source, workdir / destination)
        elif instruction == "RUN" and args.startswith("uv "):
            env.pop("UV_NO_CACHE", None)
            env["UV_PYTHON"] = sys.executable
            command = [_uv(), *shlex.split(args)[1:]]
            subprocess.run(command, cwd=workdir, env=env, check=True, timeout=900)
    # the image's PATH finds the commands in this environment
    venv_bin = root / path.split(":")[0].lstrip("/")
    assert (venv_bin / "dagster").exists() and (venv_bin / "data-acq").exists()
    return venv_bin.parent


def _role(venv: Path, role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(
            [str(DEPLOY / "entrypoint.sh"), role],
            env={**os.environ, **env, "PATH": _path(venv / "bin")},
            cwd=str(venv.parents[1]),  # not the image's WORKDIR: the installed package must do
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _path(bin_dir: Path) -> str:
    """PATH with `bin_dir` first, as the image's PATH has its virtual environment."""
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _entry_point(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """deploy/entrypoint.sh with this interpreter's environment first on PATH, and only the
    DATA_ACQ_* and MQTT_* variables given in `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATA_ACQ_", "MQTT_"))}
    return subprocess.run(
        [str(DEPLOY / "entrypoint.sh"), *args],
        env={**base, "PATH": _path(Path(sys.executable).parent), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_entry_point_renders_the_instance_for_every_role(tmp_path: Path) -> None:
    """Whatever the command (a role, or a run's command passed through), the entry point first
    writes $DAGSTER_HOME/dagster.yaml with the run queue for the container's settings."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"DAGSTER_HOME": str(home), **QUEUE_ENV}
    done = _entry_point("sh", "-c", 'head -1 "$DAGSTER_HOME/dagster.yaml"', env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Rendered by deploy/render_instance.py")
    written = yaml.safe_load((home / "dagster.yaml").read_text())
    assert written == _rendered(QUEUE_ENV)
    assert written["concurrency"]["runs"]["max_concurrent_runs"] == 2 * (2 + 2) + 3 + 4
    assert not [p.name for p in home.iterdir() if p.name != "dagster.yaml"]  # no partial file


def test_entry_point_refuses_unusable_settings_in_one_line(tmp_path: Path) -> None:
    """Settings that cannot be used stop the container before any Dagster process starts: exit
    code 1, one line naming the variable, and the instance file left as it was."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for bad, variable in (
        ({"DATA_ACQ_LIVE_WORKERS": "3", "DATA_ACQ_BUCKETS": "2"}, "DATA_ACQ_LIVE_WORKERS"),
        ({"DATA_ACQ_BACKFILL_RUNS": "0"}, "DATA_ACQ_BACKFILL_RUNS"),
        ({"DATA_ACQ_HANDOVER": "-5"}, "DATA_ACQ_HANDOVER"),
    ):
        for role in ("daemon", "webserver", "code-server", "dagster"):
            done = _entry_point(role, "--version", env={"DAGSTER_HOME": str(home), **bad})
            assert done.returncode == 1, (role, bad, done.stderr)
            assert done.stdout == ""
            (line,) = done.stderr.splitlines()
            assert line.startswith("data-acq: cannot start") and variable in line, line
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    assert [p.name for p in home.iterdir()] == ["dagster.yaml"]


def test_image_venv_holds_data_acq_itself_and_no_dev_tools(image_venv: Path) -> None:
    python = str(image_venv / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import data_acq; print(data_acq.__file__)"],
        cwd=image_venv.parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(image_venv)  # installed, not editable
    for tool in ("pytest", "hypothesis", "moto", "cfnlint"):
        missing = subprocess.run([python, "-c", f"import {tool}"], capture_output=True, check=False)
        assert missing.returncode == 1, tool


def _until(check: object, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(1)
    return False


@pytest.mark.slow
def test_entry_commands_in_a_venv_built_like_the_image(
    image_venv: Path,
    postgres_db: str,
    moto_s3: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The code server, webserver and daemon start through the entry point on the production
    instance it renders (PostgreSQL, S3 compute logs and the ECS run launcher, moto standing in
    for AWS), with the run queue sized from the container's settings; a run's command passes
    through."""
    # DAGSTER_HOME holds deploy/dagster.yaml unrendered (its queue launches nothing) until then
    template = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    home = _production_home(tmp_path / "home", postgres_db, moto_s3, monkeypatch, template)
    code_port, web_port = free_port(), free_port()
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_CODE_HOST": "127.0.0.1",
        "DAGSTER_CODE_PORT": str(code_port),
        "DATA_ACQ_STORAGE": str(tmp_path / "store"),
        **QUEUE_ENV,
    }
    bin_dir = image_venv / "bin"
    usage = subprocess.run([str(DEPLOY / "entrypoint.sh")], capture_output=True, check=False)
    assert usage.returncode == 2 and b"webserver | daemon | code-server" in usage.stderr
    logs = {role: tmp_path / f"{role}.log" for role in ("code-server", "webserver", "daemon")}
    processes = [
        _role(image_venv, "code-server", {**env, "PORT": str(code_port)}, logs["code-server"])
    ]
    try:
        health = [str(bin_dir / "dagster"), "api", "grpc-health-check", "-p", str(code_port)]
        assert _until(
            lambda: subprocess.run(health, capture_output=True, check=False).returncode == 0
        ), logs["code-server"].read_text()
        processes.append(
            _role(image_venv, "webserver", {**env, "PORT": str(web_port)}, logs["webserver"])
        )
        processes.append(_role(image_venv, "daemon", env, logs["daemon"]))

        def webserver_up() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{web_port}/server_info", timeout=2
                ) as r:
                    return r.status == 200
            except OSError:
                return False

        assert _until(webserver_up), logs["webserver"].read_text()
        liveness = [str(bin_dir / "dagster-daemon"), "liveness-check"]
        assert _until(
            lambda: (
                subprocess.run(
                    liveness, env={**os.environ, **env}, capture_output=True, check=False
                ).returncode
                == 0
            )
        ), logs["daemon"].read_text()
        # the instance they run on: rendered for these settings
        instance = DagsterInstance.from_config(str(home))
        try:
            queue = instance.get_concurrency_config().run_queue_config
            assert queue is not None and queue.max_concurrent_runs == 2 * (2 + 2) + 3 + 4
            assert type(instance.run_launcher).__name__ == "GuardedEcsRunLauncher"
        finally:
            instance.dispose()
        # a run's command passes through unchanged (EcsRunLauncher: `dagster api execute_run ...`)
        passthrough = subprocess.run(
            [str(DEPLOY / "entrypoint.sh"), str(bin_dir / "dagster"), "--version"],
            env={**os.environ, **env, "PATH": _path(bin_dir)},
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
