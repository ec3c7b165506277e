"""The one Dagster `Definitions` of data-acq: it only assembles what `defs/` holds."""

from dagster import Definitions

from data_acq.defs.assets import raw_messages
from data_acq.defs.jobs import broker_check, drain_job
from data_acq.defs.resources import build_resources
from data_acq.defs.sensors import build_drain_sensor
from data_acq.settings import Settings

settings = Settings.from_env()

defs = Definitions(
    assets=[raw_messages],
    jobs=[broker_check, drain_job],
    sensors=[build_drain_sensor(settings.subscriptions, settings.drain_window_s)],
    resources=build_resources(settings),
)
