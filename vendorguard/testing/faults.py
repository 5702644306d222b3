"""Faults injected inside a guard's attempt, so that everything around it reacts as in production.

An active injection replaces the vendor call of each matching attempt: timeouts, retries,
breaker, fallback, metrics and spans all see what they would see if the vendor misbehaved.
Integrations register a :class:`Translator` for their classifier, so that an injected failure
is the vendor SDK's own exception (an injected 503 for SendGrid is SendGrid's 503 class).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..classify import Kind, Verdict
from ..timeouts import attempt_timeout, remaining

__all__ = ["Fault", "Translator", "errors", "flapping", "hang", "latency", "outage",
           "register_translator", "status"]

HANG_LIMIT = 300.0
"""Longest an injected hang blocks a thread that nothing bounds (seconds)."""


class InjectedStatus(Exception):
    """An HTTP-style failure injected into a plain callable (no vendor translator), classified
    as an HTTP answer would be: 429/503/408 transient (after ``retry_after``), other 4xx caller
    errors, other 5xx ambiguous."""

    def __init__(self, code: int, retry_after: float | None = None) -> None:
        super().__init__(f"injected HTTP {code}")
        self.status_code = code
        self.retry_after = retry_after
        if code in (429, 503, 408):
            kind = Kind.TRANSIENT
        else:
            kind = Kind.CALLER_ERROR if code < 500 else Kind.AMBIGUOUS
        self.vendorguard_verdict = Verdict(kind, retry_after)


class Translator:
    """Builds the exceptions a vendor's SDK would raise. Override what your vendor knows."""

    def refused(self) -> BaseException:
        """A connection that was refused: nothing was sent."""
        return ConnectionRefusedError(111, "Connection refused (injected by vendorguard)")

    def timed_out(self) -> BaseException:
        """A read that timed out after the request was sent."""
        return TimeoutError("timed out (injected by vendorguard)")

    def status(self, code: int, retry_after: float | None) -> BaseException:
        """The vendor answered ``code`` (with ``Retry-After`` when given)."""
        return InjectedStatus(code, retry_after)


_translators: dict[Any, Translator] = {}
_DEFAULT = Translator()


def register_translator(classifier: Any, translator: Translator) -> None:
    """Make faults injected into guards using ``classifier`` look like ``translator``'s."""
    _translators[classifier] = translator


def translator_for(guard: Any) -> Translator:
    return _translators.get(guard.classifier, _DEFAULT)


class _Stop:
    """Ends the hangs of one injection when it is lifted."""

    def __init__(self) -> None:
        self.event = threading.Event()


def _bound() -> float | None:
    """What bounds the current attempt: its own bound or the enclosing deadline."""
    bound = attempt_timeout()
    left = remaining()
    if left is not None:
        bound = left if bound is None else min(bound, left)
    return bound


@dataclass
class Fault:
    """What happens to one attempt. Build faults with the functions of this module."""

    kind: str
    seconds: float = 0.0
    rate: float = 1.0
    exc: Any = None
    code: int = 0
    retry_after: float | None = None
    pattern: tuple[bool, ...] = ()
    seed: int | None = None
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _cycle: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._cycle = itertools.cycle(self.pattern) if self.pattern else None

    def _fails(self) -> bool:
        with self._lock:
            if self._cycle is not None:
                return not next(self._cycle)
            return self.rate >= 1.0 or self._rng.random() < self.rate

    def _error(self, translator: Translator) -> BaseException:
        if self.kind == "status":
            return translator.status(self.code, self.retry_after)
        if self.exc is None:
            return translator.refused()
        exc = self.exc() if callable(self.exc) else self.exc
        return exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))

    def wrap_sync(self, fn: Callable[..., Any], translator: Translator,
                  stop: _Stop) -> Callable[..., Any]:
        def attempt(*args: Any, **kwargs: Any) -> Any:
            if self.kind in ("latency", "hang"):
                seconds = HANG_LIMIT if self.kind == "hang" else self.seconds
                bound = _bound()
                if bound is not None and bound < seconds:
                    stop.event.wait(max(bound, 0.0))
                    raise translator.timed_out()
                stop.event.wait(seconds)
                if self.kind == "hang":
                    raise translator.timed_out()
                return fn(*args, **kwargs)
            if self._fails():
                raise self._error(translator)
            return fn(*args, **kwargs)

        return attempt

    def wrap_async(self, fn: Callable[..., Awaitable[Any]], translator: Translator,
                   stop: _Stop) -> Callable[..., Awaitable[Any]]:
        async def attempt(*args: Any, **kwargs: Any) -> Any:
            if self.kind in ("latency", "hang"):
                seconds = HANG_LIMIT if self.kind == "hang" else self.seconds
                end = time.monotonic() + seconds
                while not stop.event.is_set() and time.monotonic() < end:
                    await asyncio.sleep(min(0.05, max(end - time.monotonic(), 0.0)))
                if self.kind == "hang":
                    raise translator.timed_out()
                return await fn(*args, **kwargs)
            if self._fails():
                raise self._error(translator)
            return await fn(*args, **kwargs)

        return attempt


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value <= HANG_LIMIT):
        raise ValueError(f"{name} must be a number of seconds between 0 and {HANG_LIMIT:g}, "
                         f"got {value!r}")
    return float(value)


def outage() -> Fault:
    """The vendor refuses connections: every attempt fails as 'connection refused'."""
    return Fault("outage")


def latency(seconds: float) -> Fault:
    """The vendor is slow but answers: each attempt takes ``seconds`` more (bounded by the
    guard's timeout, which then fails it as the SDK's read timeout would)."""
    return Fault("latency", seconds=_seconds("latency seconds", seconds))


def hang() -> Fault:
    """The vendor never answers: each attempt blocks until the guard's bound ends it (or the
    injection is lifted)."""
    return Fault("hang")


def errors(rate: float, exc: Any = None, seed: int | None = None) -> Fault:
    """A fraction ``rate`` of attempts fail (reproducibly with ``seed``), with ``exc`` (an
    exception, class or factory) or the vendor's 'connection refused'."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"errors rate must be between 0 and 1, got {rate!r}")
    return Fault("errors", rate=float(rate), exc=exc, seed=seed)


def status(code: int, retry_after: float | None = None) -> Fault:
    """The vendor answers HTTP ``code`` (integrations raise their SDK's class for it)."""
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        raise ValueError(f"status code must be an int in 400..599, got {code!r}")
    if retry_after is not None:
        retry_after = _seconds("retry_after", retry_after)
    return Fault("status", code=code, retry_after=retry_after)


def flapping(pattern: str | Iterable[bool]) -> Fault:
    """Attempts follow ``pattern`` in a cycle: ``"ok,ok,fail,fail,ok"`` (or booleans, True =
    ok); failures are 'connection refused'."""
    if isinstance(pattern, str):
        steps = [p.strip().lower() for p in pattern.split(",") if p.strip()]
        bad = [s for s in steps if s not in ("ok", "fail")]
        if bad or not steps:
            raise ValueError(f"flapping pattern must be 'ok'/'fail' items separated by "
                             f"commas, got {pattern!r}")
        cycle = tuple(s == "ok" for s in steps)
    else:
        cycle = tuple(bool(s) for s in pattern)
        if not cycle:
            raise ValueError("flapping pattern must not be empty")
    return Fault("flapping", pattern=cycle)
