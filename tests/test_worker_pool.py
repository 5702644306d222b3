"""The worker pool behind sync timeouts: bounded threads, abandoned calls accounted for."""

from __future__ import annotations

import threading

import pytest

from vendorguard.timeouts import AttemptTimedOut, WorkerPool


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self) -> None:
        with self.lock:
            self.n += 1
        self.done.set()


def test_call_abandoned_before_it_started_never_runs() -> None:
    """A call still queued when its caller gives up is skipped, and its slot released."""
    ends, starts = Counter(), Counter()
    pool = WorkerPool("v", 1, on_abandon=starts, on_abandoned_end=ends)
    release, ran_second = threading.Event(), threading.Event()

    with pytest.raises(AttemptTimedOut) as first:
        pool.run(release.wait, (10,), {}, 0.05, lambda: None)
    assert first.value.abandoned
    with pytest.raises(AttemptTimedOut):
        pool.run(ran_second.set, (), {}, 0.05, lambda: None)
    assert pool.workers == 1
    assert pool.abandoned == 2

    release.set()
    for _ in range(100):
        if ends.n == 2:
            break
        ends.done.wait(0.1)
        ends.done.clear()
    assert ends.n == 2
    assert pool.abandoned == 0
    assert starts.n == 2
    assert not ran_second.is_set()


def test_on_end_runs_when_an_abandoned_call_finishes() -> None:
    """The caller's on_end (e.g. a bulkhead release) runs once the abandoned call ends."""
    released = Counter()
    pool = WorkerPool("v", 2)
    go = threading.Event()
    with pytest.raises(AttemptTimedOut):
        pool.run(go.wait, (10,), {}, 0.05, released)
    assert released.n == 0
    go.set()
    assert released.done.wait(5)
    assert released.n == 1


def test_result_and_exception_cross_threads() -> None:
    """A finished call hands back its result, or raises its exception on the caller."""
    pool = WorkerPool("v", 1)
    assert pool.run(lambda x: x * 2, (21,), {}, 5.0, lambda: None) == 42
    with pytest.raises(KeyError, match="boom"):
        pool.run({}.__getitem__, ("boom",), {}, 5.0, lambda: None)


def test_threads_start_on_demand_up_to_the_bound() -> None:
    """Idle workers are reused; no more than max_workers threads ever start."""
    pool = WorkerPool("v", 3)
    for _ in range(20):
        assert pool.run(lambda: 1, (), {}, 5.0, lambda: None) == 1
    assert pool.workers == 1
    gate = threading.Event()
    for _ in range(5):
        with pytest.raises(AttemptTimedOut):
            pool.run(gate.wait, (10,), {}, 0.02, lambda: None)
    assert pool.workers == 3
    gate.set()
