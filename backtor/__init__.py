"""Backtor: backup scheduling and retention, run inside Conductor."""

__version__ = "0.1.0"
