"""The drain in Dagster: the sensor's decisions on a real temporary instance, and a real run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    EventLogEntry,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.utils import make_new_run_id

from data_acq.acquire.raw import raw_keys
from data_acq.backoff import failure_backoff_s
from data_acq.defs.jobs import purge_old_runs
from data_acq.defs.resources import CACertificate, LocalStorage, MQTTBroker, SubscriptionSpec
from data_acq.defs.sensors import build_drain_sensor
from data_acq.defs.windows import SUBSCRIPTION_TAG
from data_acq.devtools.local_broker import LocalMosquitto, free_port
from data_acq.settings import Settings, Subscription
from data_acq.storage import LocalStore
from data_acq_tests.dagster_parts import drain_job, raw_messages
from data_acq_tests.drain_helpers import missing, publish_in_background, unique_messages

MAIN = Subscription("main", ("a/+/u/data",), "drain-main")
META = Subscription("meta", ("a/+/u/meta/#", "a/+/bridge_state"), "drain-meta")


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def _evaluate(instance: DagsterInstance, cursor: str | None = None, subs=(MAIN,)) -> SensorResult:  # type: ignore[no-untyped-def]
    sensor = build_drain_sensor(subs)
    result = sensor(build_sensor_context(instance=instance, cursor=cursor))
    assert isinstance(result, SensorResult)
    return result


def _add_run(instance: DagsterInstance, status: DagsterRunStatus, name: str = "main") -> DagsterRun:
    run = DagsterRun(
        job_name="drain", run_id=make_new_run_id(), tags={SUBSCRIPTION_TAG: name}, status=status
    )
    instance.add_run(run)
    if status == DagsterRunStatus.FAILURE:
        instance.report_run_failed(run)  # records when it ended
    return run


def test_requests_a_run_when_none_is_active(instance: DagsterInstance) -> None:
    result = _evaluate(instance)
    assert [r.run_key for r in result.run_requests] == ["drain-main-1"]
    request = result.run_requests[0]
    assert request.tags == {SUBSCRIPTION_TAG: "main"}
    config = request.run_config["ops"]["raw_messages"]["config"]
    assert config == {"subscription": "main", "max_seconds": 600.0}  # topics from the settings
    # every drain run, whoever launches it, has the job's maximum runtime: window, handover and
    # a margin
    assert drain_job.tags["dagster/max_runtime"] == str(600 + 90 + 900)


def test_a_drain_launched_by_hand_counts_as_its_subscriptions_run(
    instance: DagsterInstance,
) -> None:
    """No tag (the launchpad adds none): the run configuration names the subscription."""
    config = {"ops": {"raw_messages": {"config": {"subscription": "meta"}}}}
    for run_config, blocked in (({}, "main"), (config, "meta")):
        run = DagsterRun(
            job_name="drain",
            run_id=make_new_run_id(),
            run_config=run_config,
            status=DagsterRunStatus.STARTED,
        )
        instance.add_run(run)
        result = _evaluate(instance, subs=(MAIN, META))
        assert blocked not in {r.tags[SUBSCRIPTION_TAG] for r in result.run_requests}
        instance.delete_run(run.run_id)


def test_no_second_run_while_one_is_queued_or_running(instance: DagsterInstance) -> None:
    for status in (
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ):
        run = _add_run(instance, status)
        result = _evaluate(instance, cursor='{"main": 1}')
        assert result.run_requests == []
        assert result.skip_reason is not None and run.run_id[:8] in str(result.skip_reason)
        instance.delete_run(run.run_id)


def test_relaunches_after_a_window_ends_with_a_new_run_key(instance: DagsterInstance) -> None:
    _add_run(instance, DagsterRunStatus.SUCCESS)
    first = _evaluate(instance, cursor='{"main": 1}')
    assert [r.run_key for r in first.run_requests] == ["drain-main-2"]
    again = _evaluate(instance, cursor='{"main": 1}')  # a retried tick: same key, deduplicated
    assert [r.run_key for r in again.run_requests] == ["drain-main-2"]
    assert first.cursor == '{"main": 2}'


def test_backs_off_after_repeated_failures(instance: DagsterInstance) -> None:
    assert [failure_backoff_s(n) for n in (0, 1, 2, 3, 10)] == [0, 30, 60, 120, 900]
    _add_run(instance, DagsterRunStatus.FAILURE)
    # one failure (a task that died) is followed at once: a gap in draining costs freshness
    [again] = _evaluate(instance, cursor='{"main": 1}').run_requests
    assert again.run_key == "drain-main-2"
    for _ in range(2):
        _add_run(instance, DagsterRunStatus.FAILURE)
    result = _evaluate(instance, cursor='{"main": 3}')
    assert result.run_requests == []
    assert "3 failed runs in a row; next try in" in str(result.skip_reason)
    _add_run(instance, DagsterRunStatus.SUCCESS)  # a success resets the count
    assert len(_evaluate(instance, cursor='{"main": 4}').run_requests) == 1


def test_each_subscription_has_its_own_run(instance: DagsterInstance) -> None:
    _add_run(instance, DagsterRunStatus.STARTED, name="main")
    result = _evaluate(instance, subs=(MAIN, META))
    assert [(r.run_key, r.tags[SUBSCRIPTION_TAG]) for r in result.run_requests] == [
        ("drain-meta-1", "meta")
    ]


def test_subscriptions_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MQTT_CLIENT_ID": "acq",
            "DATA_ACQ_SUBSCRIPTIONS": "data=a/+/u/data; meta=a/+/u/meta/#,a/+/bridge_state",
        }
    )
    assert settings.subscriptions == (
        Subscription("data", ("a/+/u/data",), "acq-data"),
        Subscription("meta", ("a/+/u/meta/#", "a/+/bridge_state"), "acq-meta"),
    )
    assert Settings.from_env({"MQTT_CLIENT_ID": "acq"}).subscriptions == (
        Subscription("main", ("a/+/u/data",), "acq"),
    )


def test_drain_job_run_materializes_raw_with_metadata(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    sent = unique_messages(300)
    with LocalMosquitto(tmp_path / "mq", extra=("max_queued_messages 100000",)) as broker:
        resources = {
            "mqtt": MQTTBroker(
                host="127.0.0.1",
                port=broker.port,
                topics=["a/+/u/data"],
                client_id="drain-dagster",
                ca_certificate=CACertificate(cache_dir=str(tmp_path / "ca")),
            ),
            "storage": LocalStorage(root=str(tmp_path / "store")),
        }
        job = Definitions(
            assets=[raw_messages], jobs=[drain_job], resources=resources
        ).resolve_job_def("drain")
        config = {"ops": {"raw_messages": {"config": {"idle_exit_s": 0.5}}}}
        assert job.execute_in_process(
            run_config=config, instance=instance
        ).success  # makes the session
        publish_in_background(broker.port, sent).join(30)  # queued in the session meanwhile
        time.sleep(0.2)
        config["ops"]["raw_messages"]["config"]["idle_exit_s"] = 2
        result = job.execute_in_process(run_config=config, instance=instance)
    assert result.success
    store = LocalStore(tmp_path / "store")
    assert missing(sent, store) == 0
    materialization = result.asset_materializations_for_node("raw_messages")[0]
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata["messages"] == metadata["stored"] == metadata["acknowledged"] == 300
    assert metadata["objects"] == len(raw_keys(store)) >= 1  # the first run stored nothing
    assert metadata["sites"] == 10 and metadata["subscription"] == "main"
    assert metadata["max_lag_s"] > 0 and str(tmp_path / "store" / "raw") in str(
        metadata["raw_root"]
    )


def _drain_defs(tmp_path: Path, port: int) -> Definitions:
    resources = {
        "mqtt": MQTTBroker(
            host="127.0.0.1",
            port=port,
            topics=["a/+/u/data"],
            client_id="drain-guard",
            subscriptions={
                "main": SubscriptionSpec(topics=["a/+/u/data"], client_id="drain-guard"),
                "meta": SubscriptionSpec(topics=["a/+/u/meta/#"], client_id="drain-guard-meta"),
            },
            ca_certificate=CACertificate(cache_dir=str(tmp_path / "ca")),
        ),
        "storage": LocalStorage(root=str(tmp_path / "store")),
    }
    return Definitions(assets=[raw_messages], jobs=[drain_job], resources=resources)


def test_one_drain_per_subscription_whoever_launches_it(
    tmp_path: Path, instance: DagsterInstance, mosquitto: LocalMosquitto
) -> None:
    job = _drain_defs(tmp_path, mosquitto.port).resolve_job_def("drain")
    older = _add_run(instance, DagsterRunStatus.STARTED, name="main")  # e.g. the sensor's run

    def run(subscription: str) -> object:
        config = {"subscription": subscription, "idle_exit_s": 0.2, "max_seconds": 5}
        return job.execute_in_process(
            run_config={"ops": {"raw_messages": {"config": config}}},
            instance=instance,
            raise_on_error=False,
        )

    refused = run("main")
    assert not refused.success  # type: ignore[attr-defined]
    failure = refused.get_step_failure_events()[0].step_failure_data.error  # type: ignore[attr-defined]
    assert f"'main' is already being drained by run {older.run_id[:8]}" in failure.message
    assert run("meta").success  # type: ignore[attr-defined]  # another subscription is free
    unknown = run("nope")
    assert not unknown.success  # type: ignore[attr-defined]
    message = unknown.get_step_failure_events()[0].step_failure_data.error.message  # type: ignore[attr-defined]
    assert "no subscription named 'nope'; configured: main, meta" in message


def test_run_retention_deletes_only_old_finished_runs(instance: DagsterInstance) -> None:
    finished = _add_run(instance, DagsterRunStatus.SUCCESS)
    running = _add_run(instance, DagsterRunStatus.STARTED)
    keep = purge_old_runs.execute_in_process(
        instance=instance, run_config={"ops": {"delete_old_runs": {"config": {"days": 90}}}}
    )
    assert keep.output_for_node("delete_old_runs") == 0
    time.sleep(0.01)
    purge = purge_old_runs.execute_in_process(
        instance=instance, run_config={"ops": {"delete_old_runs": {"config": {"days": 0}}}}
    )
    assert purge.output_for_node("delete_old_runs") == 2  # the finished run and the first purge
    assert instance.get_run_by_id(finished.run_id) is None
    assert instance.get_run_by_id(running.run_id) is not None


def _run_drain_in_thread(
    job: object, instance: DagsterInstance, config: dict
) -> tuple[threading.Thread, list]:
    result: list = []

    def run() -> None:
        result.append(
            job.execute_in_process(  # type: ignore[attr-defined]
                run_config={"ops": {"raw_messages": {"config": config}}},
                instance=instance,
                raise_on_error=False,
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _wait_for_log(instance: DagsterInstance, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = (
            instance.get_records_for_run(instance.get_runs(limit=1)[0].run_id).records
            if instance.get_runs(limit=1)
            else []
        )
        if any(text in (r.event_log_entry.user_message or "") for r in records):
            return
        time.sleep(0.1)
    raise AssertionError(f"no event log entry with {text!r}")


@pytest.mark.parametrize("outcome", ["fail", "warn"])
def test_a_broker_lost_mid_window_shows_in_the_run(
    tmp_path: Path, instance: DagsterInstance, outcome: str
) -> None:
    """The broker goes away for most of the window: the loss is in the run's event log and
    metadata, and the window fails (or, configured so, warns) instead of a quiet success."""
    broker = LocalMosquitto(tmp_path / "mq").start()
    job = _drain_defs(tmp_path, broker.port).resolve_job_def("drain")
    config = {"max_seconds": 6.0, "when_mostly_disconnected": outcome}
    try:
        thread, result = _run_drain_in_thread(job, instance, config)
        _wait_for_log(instance, "subscribed to a/+/u/data")  # connected and draining
        time.sleep(0.5)
    finally:
        broker.stop()  # by its own pid
    thread.join(60)
    [run] = result
    messages = [entry.user_message for entry in instance.all_logs(run.run_id)]
    assert any("connection to 127.0.0.1" in m and "lost" in m for m in messages)
    if outcome == "fail":
        assert not run.success
        failure = run.get_step_failure_events()[0].step_failure_data.error
        # the cause first: Dagster's Failure with our line, not a wrapper around a traceback
        assert failure.cls_name == "Failure" and failure.cause is None
        assert failure.message.split(": ", 1)[1].startswith("the broker at 127.0.0.1:")
    else:
        assert run.success
        assert any("was unreachable for" in m for m in messages)
        [observation] = run.asset_observations_for_node("raw_messages")  # nothing stored
        assert observation.metadata["connection_losses"].value == 1
        assert observation.metadata["disconnected_s"].value >= 3


def test_a_drain_that_cannot_connect_fails_with_the_cause_first(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    job = _drain_defs(tmp_path, free_port()).resolve_job_def("drain")
    run = job.execute_in_process(
        run_config={"ops": {"raw_messages": {"config": {"max_seconds": 2.0}}}},
        instance=instance,
        raise_on_error=False,
    )
    assert not run.success
    error = run.get_step_failure_events()[0].step_failure_data.error
    assert error.cls_name == "Failure" and error.cause is None
    assert error.message.split(": ", 1)[1].startswith("connection refused by 127.0.0.1:")


def test_only_windows_that_stored_data_materialize_raw_messages(
    tmp_path: Path, instance: DagsterInstance, mosquitto: LocalMosquitto
) -> None:
    """So that the freshness policy (red after DATA_ACQ_RAW_FRESHNESS_MINUTES without data)
    measures data arriving, not drains running."""
    policy = raw_messages.freshness_policy
    assert policy is not None and policy.fail_window.to_timedelta() == timedelta(minutes=30)
    job = _drain_defs(tmp_path, mosquitto.port).resolve_job_def("drain")
    config = {"ops": {"raw_messages": {"config": {"idle_exit_s": 0.3, "max_seconds": 5.0}}}}
    empty = job.execute_in_process(run_config=config, instance=instance)
    assert empty.success and not empty.asset_materializations_for_node("raw_messages")
    assert empty.asset_observations_for_node("raw_messages")


def _started(instance: DagsterInstance, max_seconds: float, name: str = "main") -> DagsterRun:
    """A drain run that started now, with a window of `max_seconds`."""
    run = DagsterRun(
        job_name="drain",
        run_id=make_new_run_id(),
        tags={SUBSCRIPTION_TAG: name},
        run_config={"ops": {"raw_messages": {"config": {"max_seconds": max_seconds}}}},
        status=DagsterRunStatus.STARTING,
    )
    instance.add_run(run)
    instance.report_dagster_event(
        DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name="drain"),
        run.run_id,
    )
    return run


def test_the_successor_is_requested_a_handover_before_the_window_ends(
    instance: DagsterInstance,
) -> None:
    """So that its start-up is never a gap in draining: with a 90 s handover, a run whose window
    ends in 510 s has no successor yet, one whose window ends within 90 s gets one, and a run
    and its successor get no third."""
    running = _started(instance, max_seconds=600)
    early = _evaluate(instance, cursor='{"main": 1}')
    assert early.run_requests == [] and "its successor is launched in" in str(early.skip_reason)
    instance.delete_run(running.run_id)
    _started(instance, max_seconds=60)  # ends in 60 s, within the handover
    [successor] = _evaluate(instance, cursor='{"main": 1}').run_requests
    assert successor.run_key == "drain-main-2" and successor.tags == {SUBSCRIPTION_TAG: "main"}
    _started(instance, max_seconds=600)  # the successor, now started
    both = _evaluate(instance, cursor='{"main": 2}')
    assert both.run_requests == [] and "a run and its successor are active" in str(both.skip_reason)


@pytest.mark.parametrize("first", ["by hand", "sensor"])
def test_a_drain_launched_by_hand_while_the_sensors_drain_runs(
    tmp_path: Path, instance: DagsterInstance, first: str
) -> None:
    """A drain launched by hand (the drain job from the Launchpad: no subscription tag, the
    subscription from its configuration). Whichever of it and the sensor's drain came first
    goes on: the sensor
    requests no second drain while the first works its window, a later drain is refused before
    it connects, the first never loses its connection to a second client, and every message
    published meanwhile is stored once the next drain has run."""
    sent = unique_messages(400)
    store = LocalStore(tmp_path / "store")
    with LocalMosquitto(tmp_path / "mq", extra=("max_queued_messages 100000",)) as broker:
        defs = _drain_defs(tmp_path, broker.port)
        drain = defs.resolve_job_def("drain")
        # a whole window ahead of it, ended early once the loggers are quiet
        window = {"ops": {"raw_messages": {"config": {"max_seconds": 600.0, "idle_exit_s": 3.0}}}}
        quick = {"ops": {"raw_messages": {"config": {"max_seconds": 600.0}}}}
        launch = {
            "by hand": lambda config: drain.execute_in_process(
                run_config=config, instance=instance, raise_on_error=False
            ),
            "sensor": lambda config: drain.execute_in_process(
                run_config=config,
                tags={SUBSCRIPTION_TAG: "main"},  # as the sensor tags it
                instance=instance,
                raise_on_error=False,
            ),
        }
        second = "sensor" if first == "by hand" else "by hand"
        done: list = []
        thread = threading.Thread(target=lambda: done.append(launch[first](window)))
        thread.start()
        # the subscription is confirmed: on a new broker, what is published before is kept for
        # no one (CI once lost the first message to that race)
        _wait_for_log(instance, "subscribed to a/+/u/data")
        publisher = publish_in_background(broker.port, sent, rate=100)
        if first == "by hand":  # the sensor counts the hand-launched drain as the slot's run
            tick = _evaluate(instance, cursor='{"main": 1}')
            assert tick.run_requests == []
            assert "works it; its successor is launched in" in str(tick.skip_reason)
        refused = launch[second](quick)
        assert not refused.success
        message = refused.get_step_failure_events()[0].step_failure_data.error.message
        assert "'main' is already being drained by run" in message
        assert "a second drain would take over its MQTT session" in message
        assert not any(
            "draining" in (entry.user_message or "") for entry in instance.all_logs(refused.run_id)
        )  # refused before it connected
        publisher.join(60)
        thread.join(60)
        [worked] = done
        assert worked.success
        hand_run = worked if first == "by hand" else refused
        assert SUBSCRIPTION_TAG not in hand_run.dagster_run.tags  # as the Launchpad runs it
        lost = [
            entry.user_message
            for entry in instance.all_logs(worked.run_id)
            if "lost" in (entry.user_message or "")
        ]
        assert lost == []  # no second client took its session over
        next_window = {"subscription": "main", "idle_exit_s": 1.0, "max_seconds": 30.0}
        assert drain.execute_in_process(
            run_config={"ops": {"raw_messages": {"config": next_window}}}, instance=instance
        ).success
    assert missing(sent, store) == 0


def _event_at(
    instance: DagsterInstance, run: DagsterRun, kind: DagsterEventType, ago: float
) -> None:
    """A run event as it was stored `ago` seconds ago."""
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level=logging.DEBUG,
            user_message="",
            run_id=run.run_id,
            timestamp=time.time() - ago,
            dagster_event=DagsterEvent(event_type_value=kind.value, job_name="drain"),
        )
    )


def test_a_slots_windows_follow_each_other_a_window_apart(instance: DagsterInstance) -> None:
    """A successor that waited for its predecessor works its window from the take-over, and its
    own successor is launched a handover before that window ends -- not before its start plus
    a window, which would launch each generation earlier than the last."""
    config = {"ops": {"raw_messages": {"config": {"max_seconds": 600}}}}
    older, newer = (
        DagsterRun(
            job_name="drain",
            run_id=make_new_run_id(),
            tags={SUBSCRIPTION_TAG: "main"},
            run_config=config,
            status=DagsterRunStatus.STARTING,
        )
        for _ in range(2)
    )
    instance.add_run(older)
    time.sleep(1.1)  # created after it (SQLite keeps creation times to the second)
    instance.add_run(newer)
    _event_at(instance, older, DagsterEventType.RUN_START, ago=1000)
    _event_at(instance, newer, DagsterEventType.RUN_START, ago=500)  # started, then waited ...
    _event_at(instance, older, DagsterEventType.RUN_SUCCESS, ago=10)  # ... until this ended
    skipped = str(_evaluate(instance, cursor='{"main": 2}').skip_reason)
    launched_in = float(skipped.split("launched in ")[1].split(" s")[0])
    assert 495 <= launched_in <= 500  # 600 s from the take-over, less the 90 s handover
