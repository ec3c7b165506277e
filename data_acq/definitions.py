"""The one Dagster `Definitions` of data-acq: it only assembles what `defs/` holds."""

from dagster import Definitions

from data_acq.defs.jobs import broker_check
from data_acq.defs.resources import build_resources
from data_acq.settings import Settings

defs = Definitions(
    jobs=[broker_check],
    resources=build_resources(Settings.from_env()),
)
