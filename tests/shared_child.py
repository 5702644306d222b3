"""A worker process for the shared-state acceptance test (started with multiprocessing's spawn).

Each worker builds its own ``acme`` vendor whose breaker shares its state through Redis, waits
for the parent's go, then calls the (failing) vendor over HTTP every ``pace`` seconds until it
has seen ``rejections`` calls rejected by the open circuit or ``duration`` seconds passed, and
reports its counts on the result queue. Times are ``time.monotonic()``, which on Linux is one
clock for every process on the host, so the parent can compare them with its own.
"""

from __future__ import annotations

import time
import traceback
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

VENDOR = "acme"
OPERATION = "status.get"


@dataclass(frozen=True)
class Plan:
    """What every worker does."""

    redis_url: str
    namespace: str
    vendor_url: str
    failures: int
    reset_after: float
    refresh: float
    redis_timeout: float
    pace: float
    rejections: int
    duration: float
    go_timeout: float = 60.0


@dataclass
class Report:
    """What one worker saw."""

    worker: int
    vendor_errors: int = 0
    """Calls that reached the vendor and failed with its own error (HTTP 503)."""
    rejections: int = 0
    """Calls rejected by the open circuit (vg.CircuitOpenError)."""
    first_rejection: float | None = None
    storage_errors: int = 0
    transitions: list[str] = field(default_factory=list)
    """The circuit's transitions in order, e.g. ``closed->open`` (its last ten)."""
    other: str | None = None
    """Anything else that reached the caller (a bug): its traceback."""


def work(worker: int, plan: Plan, ready: Any, go: Any, results: Any) -> None:
    """The worker's entry point (``multiprocessing`` target)."""
    report = Report(worker)
    storage = None
    announced = False
    try:
        from prometheus_client import CollectorRegistry

        import vendorguard as vg

        storage = vg.RedisStorage(plan.redis_url, namespace=plan.namespace,
                                  refresh=plan.refresh, timeout=plan.redis_timeout)
        acme = vg.Vendor(VENDOR, retry=None, registry=CollectorRegistry(),
                         breaker=vg.Breaker(failures=plan.failures, reset_after=plan.reset_after,
                                            storage=storage))

        @acme.guard(OPERATION)
        def fetch() -> bytes:
            with urllib.request.urlopen(plan.vendor_url + "/v1/status", timeout=5) as answer:
                body: bytes = answer.read()
                return body

        ready.put(worker)
        announced = True
        if not go.wait(plan.go_timeout):
            raise RuntimeError("no go from the parent")
        end = time.monotonic() + plan.duration
        next_call = time.monotonic()
        while report.rejections < plan.rejections and time.monotonic() < end:
            try:
                fetch()
            except vg.CircuitOpenError:
                report.rejections += 1
                if report.first_rejection is None:
                    report.first_rejection = time.monotonic()
            except urllib.error.HTTPError as exc:
                exc.close()
                report.vendor_errors += 1
            # Pacing, not synchronisation: one call every `pace` seconds, never a burst.
            next_call = max(next_call + plan.pace, time.monotonic())
            time.sleep(max(0.0, next_call - time.monotonic()))
        report.storage_errors = storage.errors
        report.transitions = [f"{old}->{new}" for old, new, _ in
                               acme.circuits()[VENDOR].history]
    except BaseException:
        report.other = traceback.format_exc()
    finally:
        if not announced:
            ready.put(worker)  # the parent must not wait for a worker that already failed
        if storage is not None:
            storage.close()
        results.put(asdict(report))
