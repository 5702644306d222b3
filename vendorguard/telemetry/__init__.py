"""Telemetry: Prometheus metrics (and, later, spans, logs, health and HTTP endpoints)."""
