"""Retry pacing: tenacity's strategies driven from a lean loop, Retry-After, retry budgets.

The first attempt never touches this module. After a retryable failure the guard asks a
:class:`RetryPlan` for the next delay; tenacity's wait strategies compute it from a call state
built once per failing call, never per successful one.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable
from datetime import timezone
from typing import Any

import tenacity

from .policy import Retry, RetryBudget

__all__ = ["RetryPlan", "TokenBucket", "parse_retry_after", "testing_mode"]

_testing = False


class testing_mode:
    """Context manager: backoff sleeps are zero while it is active (process-wide).

    Retry-After waits are skipped too. Attempts, budgets and the breaker behave as always.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._previous = False

    def __enter__(self) -> testing_mode:
        global _testing
        self._previous, _testing = _testing, self._enabled
        return self

    def __exit__(self, *exc: object) -> None:
        global _testing
        _testing = self._previous


def is_testing() -> bool:
    return _testing


def parse_retry_after(value: str | float | int | None, *,
                      now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date.

    Returns ``None`` for a missing or unparsable value, and never a negative number.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return max(0.0, float(value)) if math.isfinite(value) else None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - now())
    return max(0.0, seconds) if math.isfinite(seconds) else None


class TokenBucket:
    """A vendor's retry budget: ``ratio`` tokens per call, ``floor`` tokens per second.

    Calls are counted with a bare integer increment on the hot path; tokens are settled only
    when a retry asks for one.
    """

    __slots__ = (
        "_floor",
        "_last",
        "_lock",
        "_ratio",
        "_seen",
        "_tokens",
        "calls",
        "capacity",
        "clock",
    )

    def __init__(self, budget: RetryBudget, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._ratio = budget.ratio
        self._floor = budget.floor
        self.capacity = max(1.0, budget.floor)
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens = min(self.capacity, budget.floor)  # a new bucket starts with its floor
        self._last = clock()
        self.calls = 0
        self._seen = 0

    def try_spend(self) -> bool:
        """Take one token for a retry; False when the budget is empty."""
        with self._lock:
            now = self.clock()
            calls = self.calls
            earned = (calls - self._seen) * self._ratio + (now - self._last) * self._floor
            self._seen, self._last = calls, now
            self._tokens = min(self.capacity, self._tokens + earned)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class RetryPlan:
    """The compiled retry policy of one guard."""

    __slots__ = ("attempts", "custom", "max_retry_after", "on", "stop", "wait")

    def __init__(self, policy: Retry) -> None:
        self.attempts = policy.attempts
        self.max_retry_after = policy.max_retry_after
        self.on = policy.on
        backoff = policy.backoff
        if policy.wait is not None:
            self.wait: Any = policy.wait
        elif backoff.jitter:
            self.wait = tenacity.wait_random_exponential(
                multiplier=backoff.initial, max=backoff.maximum, exp_base=backoff.multiplier)
        else:
            self.wait = tenacity.wait_exponential(
                multiplier=backoff.initial, min=backoff.initial, max=backoff.maximum,
                exp_base=backoff.multiplier)
        self.stop: Any = policy.stop
        # The built-in backoff reads only the attempt number; a user's strategies may read the
        # outcome too, which costs a Future per failed attempt, so only they get one.
        self.custom = policy.wait is not None or policy.stop is not None

    def new_state(self, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tenacity.RetryCallState:
        """The per-call state tenacity's strategies read; built only once a call has failed."""
        return tenacity.RetryCallState(None, fn, args, kwargs)  # type: ignore[arg-type]

    def delay(self, state: tenacity.RetryCallState, attempt: int, exc: BaseException,
              retry_after: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to stop retrying."""
        if attempt >= self.attempts:
            return None
        state.attempt_number = attempt
        if self.custom:
            state.outcome_timestamp = time.monotonic()
            fut: Any = tenacity.Future(attempt)
            fut.set_exception(exc)
            state.outcome = fut
            if self.stop is not None and self.stop(state):
                return None
        wait = float(self.wait(state))
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            wait = max(wait, retry_after)
        state.idle_for += wait
        return wait
