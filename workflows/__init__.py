"""Conductor task and workflow definitions, shipped as JSON (see registration.py)."""
