"""Concurrency: guards do not serialise calls, bulkheads bound them, metrics add up."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample, wait_until

OUTCOMES = ("success", "caller_error", "error", "timeout", "rejected")


class VendorDown(Exception):
    """A vendor failure the default classifier calls transient."""


class Gauge:
    """Measures how many calls run the vendor function at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.active -= 1




def run_threads(n: int, target: Callable[[int], Any]) -> float:
    """Run ``target(i)`` on ``n`` threads released together; seconds until all ended."""
    barrier = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        barrier.wait()
        target(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join(10)
    return time.monotonic() - started


def calls(metrics: CollectorRegistry, outcome: str) -> float:
    return sample(metrics, "vendorguard_calls_total", vendor="v", operation="op",
                  outcome=outcome)


def armed(metrics: CollectorRegistry, **kwargs: Any) -> vg.Vendor:
    """A vendor with breaker and retry armed."""
    return vg.Vendor("v", breaker=vg.Breaker(failures=5), retry=vg.Retry(attempts=3),
                     registry=metrics, **kwargs)


# -- no serialisation -------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, vg.Timeout(attempt=2.0)],
                         ids=["inline", "worker-thread"])
def test_threads_do_not_serialise(metrics: CollectorRegistry,
                                  timeout: vg.Timeout | None) -> None:
    """8 threads making 100 ms calls through one armed guard run side by side."""

    @armed(metrics, timeout=timeout).guard("op", fallback="fallback")
    def call() -> str:
        time.sleep(0.1)
        return "ok"

    results: list[str] = []
    elapsed = run_threads(8, lambda i: results.append(call()))
    assert results == ["ok"] * 8
    assert elapsed < 0.5


def test_tasks_do_not_serialise(metrics: CollectorRegistry) -> None:
    """50 asyncio tasks making 100 ms calls through one armed guard run side by side."""

    @armed(metrics, timeout=vg.Timeout(attempt=2.0)).guard("op", fallback="fallback")
    async def call() -> str:
        await asyncio.sleep(0.1)
        return "ok"

    async def main() -> list[str]:
        return await asyncio.gather(*(call() for _ in range(50)))

    started = time.monotonic()
    assert asyncio.run(main()) == ["ok"] * 50
    assert time.monotonic() - started < 0.5


# -- bulkhead ---------------------------------------------------------------------------------


def test_bulkhead_caps_concurrency_and_rejects(metrics: CollectorRegistry) -> None:
    """With 3 slots held, the other 17 of 20 threads are rejected with BulkheadFullError."""
    gauge, release = Gauge(), threading.Event()
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=3, max_wait=0.05),
                       retry=None, registry=metrics)

    @vendor.guard("op")
    def call() -> str:
        with gauge:
            release.wait(5)
        return "ok"

    outcomes: list[str] = []

    def target(i: int) -> None:
        try:
            outcomes.append(call())
        except vg.BulkheadFullError:
            outcomes.append("full")

    def release_when_rejected() -> None:
        wait_until(lambda: outcomes.count("full") >= 17)
        release.set()

    releaser = threading.Thread(target=release_when_rejected)
    releaser.start()
    try:
        run_threads(20, target)
    finally:
        release.set()
        releaser.join(5)
    assert gauge.peak == 3
    assert (outcomes.count("ok"), outcomes.count("full")) == (3, 17)
    assert (calls(metrics, "success"), calls(metrics, "rejected")) == (3, 17)


def test_bulkhead_waiters_get_slots(metrics: CollectorRegistry) -> None:
    """Calls that wait up to max_wait all get a slot, never more than 3 running at once."""
    gauge = Gauge()
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=3, max_wait=5.0),
                       retry=None, registry=metrics)

    @vendor.guard("op")
    def call() -> str:
        with gauge:
            time.sleep(0.01)
        return "ok"

    results: list[str] = []
    run_threads(20, lambda i: results.append(call()))
    assert results == ["ok"] * 20
    assert 1 <= gauge.peak <= 3


def test_bulkhead_waiters_served_fifo(metrics: CollectorRegistry) -> None:
    """Calls waiting for a slot get it in the order they started waiting."""
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=1, max_wait=5.0),
                       retry=None, registry=metrics)
    release, order = threading.Event(), []

    @vendor.guard("op")
    def call(i: int) -> None:
        if i == 0:
            release.wait(5)
        order.append(i)

    assert vendor.slots is not None
    threads = []
    for i in range(5):
        t = threading.Thread(target=call, args=(i,))
        t.start()
        threads.append(t)
        if i == 0:
            assert wait_until(lambda: vendor.in_flight == 1)
        else:  # the i-th waiter is queued before the next one starts
            assert wait_until(lambda i=i: len(vendor.slots._waiters) == i)  # type: ignore[union-attr]
    release.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_bulkhead_wait_times_out(metrics: CollectorRegistry) -> None:
    """A call that gets no slot within max_wait is rejected after about max_wait."""
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=1, max_wait=0.1),
                       retry=None, registry=metrics)
    release = threading.Event()
    guarded = vendor.guard("op")(lambda: release.wait(5))
    holder = threading.Thread(target=guarded)
    holder.start()
    try:
        assert wait_until(lambda: vendor.in_flight == 1)
        started = time.monotonic()
        with pytest.raises(vg.BulkheadFullError):
            guarded()
        assert 0.1 <= time.monotonic() - started < 1.1
    finally:
        release.set()
        holder.join(5)


def test_async_bulkhead_wait_does_not_block_loop(metrics: CollectorRegistry) -> None:
    """An async call waiting for a slot lets the event loop run, then gets the slot."""
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=1, max_wait=3.0),
                       retry=None, registry=metrics)

    async def main() -> tuple[bool, str]:
        release = asyncio.Event()

        @vendor.guard("op")
        async def call(hold: bool) -> str:
            if hold:
                await release.wait()
            return "ok"

        holder = asyncio.create_task(call(True))
        while vendor.in_flight < 1:
            await asyncio.sleep(0)
        waiter = asyncio.create_task(call(False))
        for _ in range(10):  # the loop keeps running while the waiter waits
            await asyncio.sleep(0)
        waiting = not waiter.done()
        release.set()
        await holder
        return waiting, await waiter

    started = time.monotonic()
    assert asyncio.run(main()) == (True, "ok")
    assert time.monotonic() - started < 1.0


def test_async_bulkhead_caps_concurrency(metrics: CollectorRegistry) -> None:
    """Async calls never run more than max_concurrent at once."""
    gauge = Gauge()
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=3, max_wait=5.0),
                       retry=None, registry=metrics)

    @vendor.guard("op")
    async def call() -> str:
        with gauge:
            await asyncio.sleep(0.01)
        return "ok"

    async def main() -> list[str]:
        return await asyncio.gather(*(call() for _ in range(20)))

    assert asyncio.run(main()) == ["ok"] * 20
    assert gauge.peak == 3


# -- metrics add up ---------------------------------------------------------------------------


def _answer(i: int) -> str:
    """Call ``i``'s fate: a vendor failure, a caller error or a success."""
    if i % 3 == 0:
        raise VendorDown("down")
    if i % 3 == 1:
        raise TypeError("bad argument")
    return "ok"


def _mixed(i: int) -> str:
    time.sleep(0.02)
    return _answer(i)


def test_mixed_run_outcomes_add_up(metrics: CollectorRegistry) -> None:
    """After a mixed concurrent run every call is counted under exactly one outcome."""
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=4), retry=None,
                       breaker=vg.Breaker(failures=1000), registry=metrics)
    guarded = vendor.guard("op")(_mixed)

    def target(i: int) -> None:
        with contextlib.suppress(Exception):  # the outcome is what is checked
            guarded(i)

    run_threads(30, target)
    assert sum(calls(metrics, o) for o in OUTCOMES) == 30
    assert calls(metrics, "rejected") > 0


def test_mixed_run_leaves_nothing_in_flight(metrics: CollectorRegistry) -> None:
    """After a mixed concurrent run vendorguard_calls_in_flight is back to 0."""
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=4),
                       timeout=vg.Timeout(attempt=2.0), retry=vg.Retry(attempts=2),
                       breaker=vg.Breaker(failures=1000), registry=metrics)
    guarded = vendor.guard("op", fallback=lambda failure: "fallback")(_mixed)

    def target(i: int) -> None:
        with contextlib.suppress(Exception):  # only the counts are checked
            guarded(i)

    run_threads(30, target)
    assert sum(calls(metrics, o) for o in OUTCOMES) == 30
    assert sample(metrics, "vendorguard_calls_in_flight", vendor="v") == 0


def test_async_mixed_run_outcomes_add_up(metrics: CollectorRegistry) -> None:
    """Async: after a mixed concurrent run outcomes add up and nothing is in flight."""
    vendor = vg.Vendor("v", bulkhead=vg.Bulkhead(max_concurrent=5), retry=None,
                       breaker=vg.Breaker(failures=1000), registry=metrics)

    @vendor.guard("op")
    async def call(i: int) -> str:
        await asyncio.sleep(0.02)
        return _answer(i)

    async def main() -> None:
        await asyncio.gather(*(call(i) for i in range(40)), return_exceptions=True)

    asyncio.run(main())
    assert sum(calls(metrics, o) for o in OUTCOMES) == 40
    assert calls(metrics, "rejected") > 0
    assert sample(metrics, "vendorguard_calls_in_flight", vendor="v") == 0
