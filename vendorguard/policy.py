"""Policies: frozen, validated configuration for timeouts, retries, breakers and bulkheads.

Every policy validates itself at construction, so a bad value fails when the module that
declares it is imported, naming the field and the value, never later at call time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

__all__ = ["Backoff", "Breaker", "Bulkhead", "Policy", "Retry", "RetryBudget", "Timeout"]

def _seconds(owner: str, name: str, value: Any, *, allow_none: bool = True,
             allow_zero: bool = False) -> float | None:
    """Normalise a duration (seconds or timedelta) and check it is finite and positive."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{owner}.{name} must be a duration in seconds, got None")
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be seconds (float) or a timedelta, got {value!r}")
    seconds = float(value)
    if (math.isnan(seconds) or math.isinf(seconds) or seconds < 0
            or (seconds == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name} must be finite and {bound} seconds, got {value!r}")
    return seconds


def _int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")
    return value


def _rate(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{name} must be a number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{owner}.{name} must be in (0, 1], got {value!r}")
    return float(value)


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    """Time bounds: ``attempt`` for each try, ``total`` for the whole call including retries.

    ``None`` means no bound. ``Timeout()`` bounds nothing and costs nothing.
    """

    attempt: float | None = None
    total: float | None = None

    def __post_init__(self) -> None:
        _set(self, "attempt", _seconds("Timeout", "attempt", self.attempt))
        _set(self, "total", _seconds("Timeout", "total", self.total))

    @property
    def bounded(self) -> bool:
        return self.attempt is not None or self.total is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff between attempts: ``initial * multiplier**n``, capped at ``maximum``.

    With ``jitter`` (the default) each wait is drawn uniformly from zero to that value ("full
    jitter"), which spreads retries from many clients apart.
    """

    initial: float = 0.1
    maximum: float = 2.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        _set(self, "initial", _seconds("Backoff", "initial", self.initial, allow_none=False,
                                       allow_zero=True))
        _set(self, "maximum", _seconds("Backoff", "maximum", self.maximum, allow_none=False,
                                       allow_zero=True))
        if self.maximum < self.initial:
            raise ValueError(
                f"Backoff.maximum must be >= Backoff.initial ({self.initial!r}), "
                f"got {self.maximum!r}")
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, (int, float)):
            raise TypeError(f"Backoff.multiplier must be a number, got {self.multiplier!r}")
        if not (1 <= self.multiplier < math.inf):
            raise ValueError(f"Backoff.multiplier must be >= 1, got {self.multiplier!r}")
        if not isinstance(self.jitter, bool):
            raise TypeError(f"Backoff.jitter must be a bool, got {self.jitter!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """Caps retries per vendor so an outage cannot turn into a retry storm.

    Retries may be at most ``ratio`` of the vendor's calls, plus ``floor`` retries per second
    that are always allowed (so a quiet vendor can still retry). A new budget starts with its
    floor available.
    """

    ratio: float = 0.2
    floor: float = 10.0

    def __post_init__(self) -> None:
        _rate("RetryBudget", "ratio", self.ratio)
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)):
            raise TypeError(f"RetryBudget.floor must be retries per second, got {self.floor!r}")
        if not (0 <= self.floor < math.inf):
            raise ValueError(f"RetryBudget.floor must be finite and >= 0, got {self.floor!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """Retry policy: how many attempts in all, how to wait between them, and a budget.

    Args:
        attempts: attempts in all, the first included (1 = never retry).
        backoff: the wait between attempts.
        budget: the vendor's retry budget; ``None`` for none.
        max_retry_after: the longest Retry-After from the vendor that is honoured; a vendor
            asking for longer ends the call instead.
        on: if given, only these exception types are retried, and only when the classifier
            also allows it; ``None`` retries whatever the classifier allows.
        wait: a tenacity wait strategy used instead of ``backoff``.
        stop: a tenacity stop strategy checked in addition to ``attempts``.
    """

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    max_retry_after: float = 60.0
    on: tuple[type[BaseException], ...] | None = None
    wait: Any = None
    stop: Any = None

    def __post_init__(self) -> None:
        _int("Retry", "attempts", self.attempts, 1)
        if not isinstance(self.backoff, Backoff):
            raise TypeError(f"Retry.backoff must be a Backoff, got {self.backoff!r}")
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise TypeError(f"Retry.budget must be a RetryBudget or None, got {self.budget!r}")
        _set(self, "max_retry_after", _seconds("Retry", "max_retry_after", self.max_retry_after,
                                               allow_none=False, allow_zero=True))
        if self.on is not None:
            on = (self.on,) if isinstance(self.on, type) else tuple(self.on)
            for exc_type in on:
                if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                    raise TypeError(f"Retry.on must hold Exception subclasses, got {exc_type!r}")
            _set(self, "on", on)
        for name in ("wait", "stop"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"Retry.{name} must be a tenacity strategy, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Breaker:
    """Circuit breaker policy.

    The circuit opens after ``failures`` consecutive failures, or when the failure rate over
    the last ``window`` calls reaches ``failure_rate`` (once ``min_calls`` calls were seen).
    Calls slower than ``slow_call`` seconds count as failures. After ``reset_after`` seconds
    open, up to ``half_open_calls`` trial calls go through; that many successes close it, one
    failure opens it again. ``scope`` is ``"vendor"`` (one circuit per vendor) or
    ``"operation"`` (one per operation). ``storage`` is a :class:`vendorguard.RedisStorage`
    (state shared by every process guarding the vendor) or a pybreaker storage object; the
    default keeps state in memory.
    """

    failures: int | None = 5
    failure_rate: float | None = None
    window: int = 20
    min_calls: int = 10
    slow_call: float | None = None
    reset_after: float = 30.0
    half_open_calls: int = 1
    scope: Literal["vendor", "operation"] = "vendor"
    storage: Any = None

    def __post_init__(self) -> None:
        if self.failures is not None:
            _int("Breaker", "failures", self.failures, 1)
        if self.failure_rate is not None:
            _set(self, "failure_rate", _rate("Breaker", "failure_rate", self.failure_rate))
        if self.failures is None and self.failure_rate is None:
            raise ValueError("Breaker needs failures or failure_rate, got neither")
        _int("Breaker", "window", self.window, 1)
        _int("Breaker", "min_calls", self.min_calls, 1)
        if self.min_calls > self.window:
            raise ValueError(
                f"Breaker.min_calls must be <= Breaker.window ({self.window}), "
                f"got {self.min_calls!r}")
        _set(self, "slow_call", _seconds("Breaker", "slow_call", self.slow_call))
        _set(self, "reset_after", _seconds("Breaker", "reset_after", self.reset_after,
                                           allow_none=False))
        _int("Breaker", "half_open_calls", self.half_open_calls, 1)
        if self.scope not in ("vendor", "operation"):
            raise ValueError(f"Breaker.scope must be 'vendor' or 'operation', got {self.scope!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bulkhead:
    """At most ``max_concurrent`` calls to the vendor at once; a call waits up to ``max_wait``
    seconds for a slot, then fails with :class:`BulkheadFullError` (outcome ``rejected``)."""

    max_concurrent: int = 10
    max_wait: float = 0.0

    def __post_init__(self) -> None:
        _int("Bulkhead", "max_concurrent", self.max_concurrent, 1)
        _set(self, "max_wait", _seconds("Bulkhead", "max_wait", self.max_wait,
                                        allow_none=False, allow_zero=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A vendor's policies together. ``None`` switches a layer off."""

    timeout: Timeout = field(default_factory=Timeout)
    retry: Retry | None = field(default_factory=Retry)
    breaker: Breaker | None = field(default_factory=Breaker)
    bulkhead: Bulkhead | None = None

    def __post_init__(self) -> None:
        checks = (("timeout", Timeout, False), ("retry", Retry, True),
                  ("breaker", Breaker, True), ("bulkhead", Bulkhead, True))
        for name, kind, nullable in checks:
            value = getattr(self, name)
            if not (isinstance(value, kind) or (nullable and value is None)):
                raise TypeError(f"Policy.{name} must be a {kind.__name__}"
                                f"{' or None' if nullable else ''}, got {value!r}")
