"""The sensors: each keeps its window runs going, one slot at a time -- a drain per subscription,
a live-processing run per live worker -- and launches a slot's successor shortly before its
window ends (data_acq.defs.windows)."""

from dagster import (
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from data_acq.defs.windows import (
    DRAIN_JOB,
    LIVE_JOB,
    SUBSCRIPTION_TAG,
    WORKER_TAG,
    Slot,
    WindowSpec,
    window_requests,
)
from data_acq.settings import Subscription

EVERY_S = 15  # how often the sensors look: a successor starts within this of its handover time


def _status(running: bool) -> DefaultSensorStatus:
    return DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED


def build_drain_sensor(
    subscriptions: tuple[Subscription, ...],
    window_s: float = 600.0,
    running: bool = False,
    handover_s: float = 90.0,
) -> SensorDefinition:
    specs = [
        WindowSpec(
            Slot("drain", sub.name),
            window_s,
            {
                "ops": {
                    "raw_messages": {"config": {"subscription": sub.name, "max_seconds": window_s}}
                }
            },
            {SUBSCRIPTION_TAG: sub.name},
        )
        for sub in subscriptions
    ]

    @sensor(
        job_name=DRAIN_JOB,
        minimum_interval_seconds=EVERY_S,
        default_status=_status(running),
        description=(
            "Keeps one drain run per subscription: requests a run when none is active, and its "
            f"successor {handover_s:g} s before the window ends (the successor takes over the MQTT "
            "session when its predecessor has ended), never a third. A failed run is followed at "
            "once, repeated failures after a back-off (30 s doubling to 15 min). Turning it off "
            "lets the current windows finish."
        ),
    )
    def drain_sensor(context: SensorEvaluationContext) -> SensorResult:
        return window_requests(context, DRAIN_JOB, specs, handover_s)

    return drain_sensor


def build_live_sensor(
    workers: int = 1,
    window_s: float = 600.0,
    interval_s: float = 60.0,
    running: bool = False,
    handover_s: float = 90.0,
) -> SensorDefinition:
    specs = [
        WindowSpec(
            Slot("live", str(worker)),
            window_s,
            {
                "ops": {
                    "live_window": {
                        "config": {"worker": worker, "window_s": window_s, "interval_s": interval_s}
                    }
                }
            },
            {WORKER_TAG: str(worker)},
        )
        for worker in range(1, workers + 1)
    ]

    @sensor(
        job_name=LIVE_JOB,
        minimum_interval_seconds=EVERY_S,
        default_status=_status(running),
        description=(
            f"Keeps one live-processing run per live worker ({workers}): each stages new raw "
            f"objects (worker 1) and refreshes the units of its buckets every {interval_s:g} s "
            f"for a window of {window_s:g} s; the successor is launched {handover_s:g} s before "
            "the window ends and takes over when it has ended. A failed run is followed at once, "
            "repeated failures after a back-off (30 s doubling to 15 min)."
        ),
    )
    def live_sensor(context: SensorEvaluationContext) -> SensorResult:
        return window_requests(context, LIVE_JOB, specs, handover_s)

    return live_sensor
