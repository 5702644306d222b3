"""Shared fixtures: a clean vendor registry and a private metrics registry per test."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard
from vendorguard import audit, config
from vendorguard import registry as _registry

pytest_plugins = ["pytester", "vendorguard.testing.plugin"]

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    _registry.clear()
    audit.clear()
    config.clear()
    yield
    _registry.clear()
    audit.clear()
    config.clear()


@pytest.fixture
def metrics() -> CollectorRegistry:
    """A fresh Prometheus registry, so counts start at zero in every test."""
    return CollectorRegistry()


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of one sample (0.0 when the series does not exist)."""
    value = reg.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Gate:
    """A fake vendor call that stays inside its guard until the test releases it."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: object, **kwargs: object) -> str:
        self.inside.set()
        self.release.wait(timeout=10)
        return "ok"


@contextmanager
def held(guarded: Callable[[], object], gate: Gate) -> Iterator[None]:
    """Run ``guarded`` on a thread and keep it inside ``gate`` for the ``with`` block."""
    thread = threading.Thread(target=guarded)
    thread.start()
    try:
        assert gate.inside.wait(timeout=10)
        yield
    finally:
        gate.release.set()
        thread.join(timeout=10)


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Retries without backoff sleeps (vendorguard's testing mode)."""
    with vendorguard.testing_mode():
        yield


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005
               ) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` seconds pass, and
    return its last value: for state that changes on another thread or in a vendor SDK's
    background work, where there is no event to wait on."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)
