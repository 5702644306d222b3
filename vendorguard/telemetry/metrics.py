"""Prometheus metrics, created once per registry, with label children bound at guard creation.

Label values come from code only (vendor and operation names, fixed outcome/state/reason
sets), never from call arguments or exception messages, so cardinality stays bounded and no
personal data reaches a scrape.

In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, for gunicorn or uwsgi
workers) every process writes its values to the shared directory and a scrape merges them:
counters and histograms are summed, and each gauge is merged as :data:`GAUGE_MODES` says.
Gauges computed at scrape time (``set_function``) are not exported there, so every vendorguard
gauge is written when its value changes (see :func:`multiprocess`). docs/running-at-scale.md
tells what each merged gauge means.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "BUCKETS",
    "CIRCUIT_STATES",
    "GAUGE_MODES",
    "OUTCOMES",
    "RETRY_REASONS",
    "Families",
    "OperationMetrics",
    "after_fork",
    "families",
    "multiprocess",
]

OUTCOMES = ("success", "caller_error", "error", "timeout", "rejected")
FALLBACK_REASONS = ("error", "timeout", "rejected")
RETRY_REASONS = ("transient", "ambiguous", "timeout", "rate_limited")
CIRCUIT_STATES = ("closed", "open", "half_open", "forced_open", "disabled")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Mode = Literal["liveall", "livemax", "livesum", "livemostrecent"]
# prometheus-client 0.17 has no "mostrecent" modes (0.18 added them): the closest is livemax.
_MOST_RECENT: Mode = ("livemostrecent" if "livemostrecent" in Gauge._MULTIPROC_MODES
                      else "livemax")

GAUGE_MODES: dict[str, Mode] = {
    # Each worker has its own breakers: 1 when at least one live process has the circuit in
    # that state, so alerts on open == 1 fire when any worker rejects calls (several states
    # can be 1 at once; the dashboard shows the worst). livesum would count workers per state
    # but break every "== 1" rule; liveall would multiply the series by the workers.
    "vendorguard_circuit_state": "livemax",
    # Calls in progress and abandoned threads in every live process add up.
    "vendorguard_calls_in_flight": "livesum",
    "vendorguard_abandoned_calls": "livesum",
    # Every worker runs its own flag client: the stalest flags any live worker serves from.
    "vendorguard_flag_data_age_seconds": "livemax",
    # Workers sharing an outbox file each count the same messages, at different moments:
    # summing would multiply them, and the highest count may be one a worker read before
    # another delivered the messages; the count read last is the true one.
    "vendorguard_outbox_pending": _MOST_RECENT,
    # A count of configurations applied *in that process*: a worker started after a reload
    # applied fewer than an older one running the same configuration, so the counts of two
    # workers cannot be merged into one number; per process (a pid label), min() of it
    # still says whether some worker runs policies from code only (0).
    "vendorguard_config_generation": "liveall",
}
"""How prometheus-client's multiprocess mode merges each vendorguard gauge across processes."""


def multiprocess() -> bool:
    """Whether prometheus-client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR`` set):
    then a gauge computed at scrape time is not exported, so its value must be written."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


@dataclass(frozen=True, slots=True)
class Families:
    """The metric families of one registry."""

    calls: Counter
    duration: Histogram
    retries: Counter
    retries_blocked: Counter
    fallbacks: Counter
    circuit_state: Gauge
    circuit_transitions: Counter
    in_flight: Gauge
    abandoned: Gauge
    flag_data_age: Gauge
    outbox_pending: Gauge
    outbox_delivered: Counter
    outbox_dead: Counter
    outbound: Counter
    config_generation: Gauge
    shared_errors: Counter


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Families] = (
    weakref.WeakKeyDictionary())


default_registry: CollectorRegistry = REGISTRY
"""Where vendors built without a ``registry`` put their metrics (a test may swap it)."""
_generation = 0


def set_config_generation(generation: int) -> None:
    """Show ``generation`` in every registry's ``vendorguard_config_generation`` (and in
    registries created later)."""
    global _generation
    with _lock:
        _generation = generation
        for fam in _all_families():
            fam.config_generation.set(generation)


def _all_families() -> list[Families]:
    """The families of every live registry, and of every vendor: in multiprocess mode a
    registry is not what is scraped, and one a vendor was given may already be gone."""
    from ..registry import _registry  # the registry imports this module

    found = {id(fam): fam for fam in list(_by_registry.values())}
    found.update((id(v.families), v.families) for v in list(_registry.values())
                 if hasattr(v, "families"))
    return list(found.values())


def families(registry: CollectorRegistry | None = None) -> Families:
    """The vendorguard metric families registered in ``registry`` (default:
    :data:`default_registry`, prometheus-client's global one)."""
    reg = default_registry if registry is None else registry
    with _lock:
        found = _by_registry.get(reg)
        if found is None:
            found = _create(reg)
            found.config_generation.set(_generation)
            _by_registry[reg] = found
        return found


def after_fork() -> None:
    """Write this process's breaker states and configuration generation again: call it in a
    worker forked from a process that already made vendors (gunicorn's ``post_fork`` hook with
    ``preload_app``). In multiprocess mode a forked process starts its own files at zero, and
    these gauges are only written when they change. No-op outside multiprocess mode.

    Not run automatically at every fork: a child forked only to exec another program would
    leave files with copies of these values behind, which nothing ever marks dead.
    """
    if not multiprocess():
        return
    from ..registry import _registry  # the registry imports this module

    # The child has one thread: no lock is taken, as one held at the fork would never be freed.
    for fam in _all_families():
        fam.config_generation.set(_generation)
    for v in list(_registry.values()):
        if not hasattr(v, "_circuits"):
            continue  # still being built
        for key, circuit in list(v._circuits.items()):
            for s in CIRCUIT_STATES:
                v.families.circuit_state.labels(v.name, key, s).set(
                    1 if s == circuit.state else 0)


def _create(reg: CollectorRegistry) -> Families:
    vo = ("vendor", "operation")
    return Families(
        calls=Counter("vendorguard_calls", "Logical vendor calls by outcome.",
                      (*vo, "outcome"), registry=reg),
        duration=Histogram("vendorguard_call_duration_seconds",
                           "Duration of logical vendor calls, retries and waits included.",
                           (*vo, "outcome"), buckets=BUCKETS, registry=reg),
        retries=Counter("vendorguard_retries", "Retry attempts by reason.",
                        (*vo, "reason"), registry=reg),
        retries_blocked=Counter("vendorguard_retries_blocked",
                                "Retries refused by the vendor's retry budget.",
                                ("vendor",), registry=reg),
        fallbacks=Counter("vendorguard_fallbacks",
                          "Fallbacks served, by the outcome that triggered them.",
                          (*vo, "reason"), registry=reg),
        circuit_state=_gauge("vendorguard_circuit_state",
                             "Circuit breaker state, one-hot (1 for the current state).",
                             ("vendor", "circuit", "state"), reg),
        circuit_transitions=Counter("vendorguard_circuit_transitions",
                                    "Circuit breaker state transitions.",
                                    ("vendor", "circuit", "from_state", "to_state"),
                                    registry=reg),
        in_flight=_gauge("vendorguard_calls_in_flight", "Logical vendor calls in progress.",
                         ("vendor",), reg),
        abandoned=_gauge("vendorguard_abandoned_calls",
                         "Timed-out sync attempts whose worker thread is still running.",
                         ("vendor",), reg),
        flag_data_age=_gauge("vendorguard_flag_data_age_seconds",
                             "Seconds since a flag vendor's data in memory was last known "
                             "current (0 while its data source is valid).", ("vendor",), reg),
        outbox_pending=_gauge("vendorguard_outbox_pending",
                              "Messages waiting in the outbox for delivery.", ("vendor",), reg),
        outbox_delivered=Counter("vendorguard_outbox_delivered",
                                 "Messages the outbox delivered.", ("vendor",), registry=reg),
        outbox_dead=Counter("vendorguard_outbox_dead",
                            "Messages the outbox gave up on (dead letters).", ("vendor",),
                            registry=reg),
        outbound=Counter("vendorguard_outbound_requests",
                         "Outbound HTTP requests seen by discovery, by host and whether a "
                         "guard covered them.", ("host", "guarded"), registry=reg),
        shared_errors=Counter("vendorguard_shared_state_errors",
                              "Failed calls to the store of shared breaker state (Redis); the "
                              "vendor's circuits used their local state instead.", ("vendor",),
                              registry=reg),
        config_generation=_gauge("vendorguard_config_generation",
                                 "Configurations that took effect in this process (0: policies "
                                 "from code only).", (), reg),
    )


def _gauge(name: str, documentation: str, labels: tuple[str, ...],
           reg: CollectorRegistry) -> Gauge:
    return Gauge(name, documentation, labels, registry=reg,
                 multiprocess_mode=GAUGE_MODES[name])


def fast_inc(child: Any) -> Callable[[float], None]:
    """The cheapest correct way to increment a bound counter child.

    A bound child's ``inc`` only checks that its labels are bound and the amount is not
    negative before incrementing its value object; calling the value object directly saves a
    third of the cost on the hot path. Falls back to ``inc`` if the internals differ.
    """
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc  # type: ignore[no-any-return]


def fast_observe(child: Any) -> Callable[[float], None]:
    """The cheapest correct way to observe into a bound histogram child (see fast_inc)."""
    try:
        add_sum = child._sum.inc
        bucket_incs = [bucket.inc for bucket in child._buckets]
        bounds = list(child._upper_bounds)
    except AttributeError:  # pragma: no cover - other prometheus-client internals
        return child.observe  # type: ignore[no-any-return]
    if len(bucket_incs) != len(bounds) or bounds[-1] != float("inf"):  # pragma: no cover
        return child.observe  # type: ignore[no-any-return]
    find = bisect.bisect_left

    def observe(amount: float) -> None:
        add_sum(amount)
        bucket_incs[find(bounds, amount)](1)

    return observe


class OperationMetrics:
    """Children for one (vendor, operation), bound once so calls never look labels up."""

    __slots__ = ("calls", "duration", "fallbacks", "inc_call", "inc_fallback", "inc_retry",
                 "observe", "retries", "retries_blocked")

    def __init__(self, fam: Families, vendor: str, operation: str) -> None:
        self.calls: dict[str, Any] = {
            o: fam.calls.labels(vendor, operation, o) for o in OUTCOMES}
        self.duration: dict[str, Any] = {
            o: fam.duration.labels(vendor, operation, o) for o in OUTCOMES if o != "rejected"}
        self.inc_call = {o: fast_inc(c) for o, c in self.calls.items()}
        self.observe = {o: fast_observe(h) for o, h in self.duration.items()}
        self.retries: dict[str, Any] = {
            r: fam.retries.labels(vendor, operation, r) for r in RETRY_REASONS}
        self.fallbacks: dict[str, Any] = {
            r: fam.fallbacks.labels(vendor, operation, r) for r in FALLBACK_REASONS}
        self.retries_blocked: Any = fam.retries_blocked.labels(vendor)
        self.inc_retry = {r: fast_inc(c) for r, c in self.retries.items()}
        self.inc_fallback = {r: fast_inc(c) for r, c in self.fallbacks.items()}


def circuit_children(fam: Families, vendor: str, circuit: str) -> dict[str, Any]:
    """One-hot state children for a circuit, all present from the start."""
    return {s: fam.circuit_state.labels(vendor, circuit, s) for s in CIRCUIT_STATES}
