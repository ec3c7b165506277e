"""MQTT in, raw out: the broker connection, the CA certificate, the drain, raw objects."""
