"""gunicorn settings for tests/test_multiprocess.py, as docs/running-at-scale.md advises."""

from __future__ import annotations

from typing import Any

from prometheus_client import multiprocess

worker_class = "sync"
graceful_timeout = 5
timeout = 60
control_socket_disable = True  # gunicorn >= 25.1 opens one in $HOME by default


def child_exit(server: Any, worker: Any) -> None:
    """A worker that is gone no longer counts in the live* gauges."""
    multiprocess.mark_process_dead(worker.pid)
