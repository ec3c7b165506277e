"""Dagster objects: the thin shell around the plain-Python core."""
