"""gunicorn settings with the app loaded once in the master, then forked into every worker."""

from __future__ import annotations

from typing import Any

from tests.multiproc.gunicorn_conf import (
    child_exit,
    control_socket_disable,
    graceful_timeout,
    timeout,
    worker_class,
)
from vendorguard.telemetry import metrics

__all__ = ["child_exit", "control_socket_disable", "graceful_timeout", "post_fork",
           "preload_app", "timeout", "worker_class"]

preload_app = True


def post_fork(server: Any, worker: Any) -> None:
    """The worker's files start empty: write again the gauges only written on change."""
    metrics.after_fork()
