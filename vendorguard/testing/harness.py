"""The ``vendorguard`` pytest fixture's harness: fake clock, isolation, assertion helpers."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from .. import breaker, registry
from ..retry import testing_mode
from ..telemetry import metrics
from . import errors, flapping, hang, inject, latency, outage, status

__all__ = ["FakeClock", "Harness", "isolated"]


class FakeClock:
    """The circuits' clock: starts at the real time, moves only with :meth:`advance`."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"advance needs seconds >= 0, got {seconds!r}")
        self.now += seconds


class Harness:
    """What the ``vendorguard`` fixture gives a test."""

    outage = staticmethod(outage)
    latency = staticmethod(latency)
    hang = staticmethod(hang)
    errors = staticmethod(errors)
    status = staticmethod(status)
    flapping = staticmethod(flapping)
    inject = staticmethod(inject)

    def __init__(self, clock: FakeClock, metrics_registry: CollectorRegistry) -> None:
        self._baseline = _samples(metrics_registry)
        """Counts from before the test (vendors made at import time count from zero)."""
        self.clock = clock
        """The circuits' fake clock: ``vendorguard.clock.advance(30)`` lets a breaker
        half-open without waiting."""
        self.registry = metrics_registry
        """The Prometheus registry of vendors built during the test."""

    def advance(self, seconds: float) -> None:
        """Move the circuits' clock forward."""
        self.clock.advance(seconds)

    def sample(self, name: str, **labels: str) -> float:
        """The value of one metric sample (0 when absent)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def calls(self, vendor: str, outcome: str | None = None,
              operation: str | None = None) -> int:
        """Logical calls of ``vendor`` (with that outcome / operation when given)."""
        return int(self._sum("vendorguard_calls_total", vendor=vendor, outcome=outcome,
                             operation=operation))

    def fallbacks(self, vendor: str, operation: str | None = None) -> int:
        """Fallbacks served for ``vendor``."""
        return int(self._sum("vendorguard_fallbacks_total", vendor=vendor,
                             operation=operation))

    def retries(self, vendor: str, operation: str | None = None) -> int:
        """Retries scheduled for ``vendor``."""
        return int(self._sum("vendorguard_retries_total", vendor=vendor,
                             operation=operation))

    def state(self, vendor: str, circuit: str | None = None) -> str:
        """The breaker state of ``vendor`` (its vendor-wide circuit unless named)."""
        return registry.vendor(vendor).circuits()[circuit or vendor].state

    def _sum(self, name: str, **labels: str | None) -> float:
        wanted = {k: v for k, v in labels.items() if v is not None}
        total = 0.0
        for key, value in _samples(self.registry).items():
            if key[0] == name and all(dict(key[1]).get(k) == v for k, v in wanted.items()):
                total += value - self._baseline.get(key, 0.0)
        return total


def _samples(fresh: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every vendorguard sample: of the test's registry, and of the vendors made before the
    test (at import time, in another registry), by name and labels."""
    sources: list[Any] = [fresh]
    seen = {id(metrics.families(fresh))}
    for v in registry.vendors():
        fam = getattr(v, "families", None)
        if fam is not None and id(fam) not in seen:
            seen.add(id(fam))
            sources += [fam.calls, fam.fallbacks, fam.retries]
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for source in sources:
        for family in source.collect():
            for s in family.samples:
                found[s.name, frozenset(s.labels.items())] = s.value
    return found


class isolated:
    """Vendors, metrics and the circuits' clock of one test, all restored afterwards.

    Vendors made before the test (at import time, by the application) stay registered: their
    circuits start and end the test closed, and the harness counts their calls from zero.
    Vendors made during the test are removed at its end, and their metrics go to a fresh
    registry."""

    def __enter__(self) -> Harness:
        self._stack = ExitStack()
        self._previous = (breaker.clock, metrics.default_registry)
        self._before = set(registry.vendors())
        clock = FakeClock(breaker.clock())
        fresh = CollectorRegistry()
        _close_circuits(self._before)
        breaker.clock, metrics.default_registry = clock, fresh
        self._stack.enter_context(testing_mode())
        return Harness(clock, fresh)

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stack.close()
        finally:
            breaker.clock, metrics.default_registry = self._previous
            for v in registry.vendors():
                if v not in self._before:
                    v.unregister()
            _close_circuits(self._before)


def _close_circuits(vendors: set[registry.Vendor]) -> None:
    """Back to closed, with no failures counted and no kill switch (not audited: a test's
    set-up, not an operator's action)."""
    for v in vendors:
        for circuit in v.circuits().values():
            circuit.close()
