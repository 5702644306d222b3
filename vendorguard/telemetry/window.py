"""Recent activity of a vendor, computed from its own metric counters.

The hot path records nothing for health: a vendor's recent calls, error rate, fallbacks and
latency are the difference between the counters now and a snapshot of them taken earlier.
Snapshots are taken only when health is read (at most one per ``resolution`` seconds), and
only those still needed for the window are kept, so memory stays bounded.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .metrics import BUCKETS, OUTCOMES

if TYPE_CHECKING:
    from .metrics import OperationMetrics

__all__ = ["Counts", "HealthWindow", "quantile"]

_BOUNDS = (*BUCKETS, float("inf"))


@dataclass(frozen=True, slots=True)
class Counts:
    """Totals of a vendor's counters at one moment (or a difference of two)."""

    outcomes: tuple[float, ...]
    fallbacks: float
    buckets: tuple[float, ...]

    def __sub__(self, other: Counts) -> Counts:
        return Counts(tuple(a - b for a, b in zip(self.outcomes, other.outcomes, strict=True)),
                      self.fallbacks - other.fallbacks,
                      tuple(a - b for a, b in zip(self.buckets, other.buckets, strict=True)))

    @staticmethod
    def zero() -> Counts:
        return Counts((0.0,) * len(OUTCOMES), 0.0, (0.0,) * len(_BOUNDS))


def _value(child: Any) -> float:
    value = getattr(child, "_value", None)
    get = getattr(value, "get", None)
    if callable(get):
        return float(get())
    return float(sum(s.value for m in child.collect()  # pragma: no cover
                     for s in m.samples if s.name.endswith("_total")))


def _buckets(child: Any) -> list[float]:
    """Per-bucket (not cumulative) counts of a histogram child."""
    buckets = getattr(child, "_buckets", None)
    if buckets is not None and len(buckets) == len(_BOUNDS):
        return [float(b.get()) for b in buckets]
    cumulative = [s.value for m in child.collect() for s in m.samples  # pragma: no cover
                  if s.name.endswith("_bucket")]
    return [b - a for a, b in zip([0.0, *cumulative], cumulative, strict=False)]  # pragma: no cover


def read(operations: Iterable[OperationMetrics]) -> Counts:
    """The current totals over a vendor's operations."""
    outcomes = [0.0] * len(OUTCOMES)
    buckets = [0.0] * len(_BOUNDS)
    fallbacks = 0.0
    for m in operations:
        for i, outcome in enumerate(OUTCOMES):
            outcomes[i] += _value(m.calls[outcome])
        for child in m.fallbacks.values():
            fallbacks += _value(child)
        for hist in m.duration.values():
            for i, n in enumerate(_buckets(hist)):
                buckets[i] += n
    return Counts(tuple(outcomes), fallbacks, tuple(buckets))


def quantile(q: float, buckets: tuple[float, ...]) -> float | None:
    """Estimate a quantile from per-bucket counts, as PromQL's histogram_quantile does."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for upper, n in zip(_BOUNDS, buckets, strict=True):
        if n > 0 and seen + n >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        lower = upper if upper != float("inf") else lower
    return lower  # pragma: no cover - rounding


class HealthWindow:
    """Snapshots of one vendor's counters, for numbers over roughly the last ``seconds``."""

    def __init__(self, seconds: float = 60.0, resolution: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.resolution = resolution
        self.clock = clock
        self._lock = threading.Lock()
        # Seeded with zeros at creation, so the first read covers everything since then.
        self._snapshots: collections.deque[tuple[float, Counts]] = collections.deque(
            [(clock(), Counts.zero())])

    def recent(self, now_counts: Counts) -> tuple[Counts, Counts, float]:
        """(totals now, the difference over the window, the window's length in seconds)."""
        now = self.clock()
        with self._lock:
            snaps = self._snapshots
            if now - snaps[-1][0] >= self.resolution:
                snaps.append((now, now_counts))
            # The baseline: the newest snapshot at least a window old, else the oldest.
            while len(snaps) > 1 and now - snaps[1][0] >= self.seconds:
                snaps.popleft()
            since, base = snaps[0]
        return now_counts, now_counts - base, max(now - since, 0.0)
