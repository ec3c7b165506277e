"""The production run launcher: dagster-aws's EcsRunLauncher, refusing runs that would change
their own task.

EcsRunLauncher lets a run's tags override its ECS task: `ecs/container_overrides` (command,
environment), `ecs/task_overrides` (task role, execution role) and `ecs/run_task_kwargs` (task
definition). Anyone who can launch a run in the UI can set tags, so without this they could run
any code under any role the launcher may pass, the drain's MQTT credentials included. Here the
only such tag allowed is the drain job's own choice of the drain task definition
(DATA_ACQ_DRAIN_TASK_DEFINITION); any other refuses the launch, and the run fails saying why.
The drain's tag is compared without its revision: the code server names its own deployment's
revision, and during a deploy the daemon may be a revision behind or ahead of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dagster_aws.ecs import EcsRunLauncher

from data_acq.defs.windows import DRAIN_JOB, RUN_TASK_KWARGS, drain_task

if TYPE_CHECKING:  # no public name in dagster 1.13
    from dagster._core.launcher import LaunchRunContext

OVERRIDES = ("ecs/container_overrides", "ecs/task_overrides", RUN_TASK_KWARGS)


class RefusedRun(Exception):
    """A run whose tags would change its ECS task."""


def unrevised(task_definition: str) -> str:
    """A task definition's name (ARN or family) without its revision."""
    account, slash, name = task_definition.rpartition("task-definition/")
    return account + slash + name.partition(":")[0]


def _drain_task_of(value: str, drain_task_definition: str) -> bool:
    """Whether a run's ecs/run_task_kwargs tag is what the drain job sets: the drain task
    definition, of whichever revision, and nothing else."""
    try:
        kwargs = json.loads(value)
    except ValueError:
        return False
    ours = json.loads(drain_task(drain_task_definition)[RUN_TASK_KWARGS])
    if not isinstance(kwargs, dict) or set(kwargs) != set(ours):
        return False
    named = kwargs["taskDefinition"]
    return isinstance(named, str) and unrevised(named) == unrevised(ours["taskDefinition"])


def refusal(
    job_name: str, tags: Mapping[str, str], drain_task_definition: str | None
) -> str | None:
    """Why a run may not be launched as it is tagged, or None."""
    for tag in OVERRIDES:
        if tag not in tags:
            continue
        if (
            tag == RUN_TASK_KWARGS
            and job_name == DRAIN_JOB
            and drain_task_definition
            and _drain_task_of(tags[tag], drain_task_definition)
        ):
            continue
        return (
            f"the run's tag {tag} would change its ECS task; data-acq launches each job as its "
            "task definition says (remove the tag and launch again)"
        )
    return None


class GuardedEcsRunLauncher(EcsRunLauncher):
    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        why = refusal(run.job_name, run.tags, os.environ.get("DATA_ACQ_DRAIN_TASK_DEFINITION"))
        if why:
            raise RefusedRun(why)
        super().launch_run(context)
