"""data-acq: acquire renewable-energy telemetry from MQTT into data people can use."""
