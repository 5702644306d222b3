"""Immutable event records and the observer hook that telemetry plugs into.

An observer is any callable taking one event. Observers run on the thread that produced the
event; an observer that raises is logged and never breaks the vendor call. Per-call events are
only built while at least one observer is registered, so the guard's hot path pays for them
only when someone listens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "CallAbandoned",
    "CallEnded",
    "CallStarted",
    "CircuitStateChanged",
    "ConfigApplied",
    "ConfigRefused",
    "ControlApplied",
    "Event",
    "FallbackServed",
    "Observer",
    "RetryBlocked",
    "RetryScheduled",
    "add_observer",
    "remove_observer",
]

_log = logging.getLogger("vendorguard")


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A logical call entered the guard."""

    vendor: str
    operation: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A logical call left the guard. ``error_type`` is the failure's class name (never its
    message); ``fallback`` is the outcome that triggered a fallback, or ``None``."""

    vendor: str
    operation: str
    outcome: str
    attempts: int
    duration: float
    error_type: str | None
    fallback: str | None


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """An attempt failed and another one will follow after ``delay`` seconds."""

    vendor: str
    operation: str
    attempt: int
    reason: str
    delay: float
    error_type: str


@dataclass(frozen=True, slots=True)
class RetryBlocked:
    """A retry was refused by the vendor's retry budget."""

    vendor: str
    operation: str


@dataclass(frozen=True, slots=True)
class FallbackServed:
    """A fallback answered a failure whose outcome was ``reason``."""

    vendor: str
    operation: str
    reason: str


@dataclass(frozen=True, slots=True)
class CircuitStateChanged:
    """A circuit moved between states (``closed``, ``open``, ``half_open``, ``forced_open``,
    ``disabled``)."""

    vendor: str
    circuit: str
    from_state: str
    to_state: str
    time: float


@dataclass(frozen=True, slots=True)
class ControlApplied:
    """An operator acted on a vendor: ``force_open``, ``force_close``, ``disable`` or ``reset``.
    ``time`` is wall-clock seconds since the epoch; ``actor`` who acted, where known."""

    vendor: str
    action: str
    reason: str | None
    time: float
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    """A configuration took effect: ``generation`` counts them; ``vendors`` names the vendors
    whose policies changed."""

    generation: int
    vendors: tuple[str, ...]
    time: float


@dataclass(frozen=True, slots=True)
class ConfigRefused:
    """A configuration failed to load and changed nothing: ``key`` is the offending key path
    (or the source, when it could not be read), ``generation`` the one still in effect."""

    key: str
    error: str
    generation: int
    time: float


@dataclass(frozen=True, slots=True)
class CallAbandoned:
    """A sync attempt outlived its timeout; its worker thread is still running it."""

    vendor: str
    operation: str


Event = Union[CallStarted, CallEnded, RetryScheduled, RetryBlocked, FallbackServed,  # noqa: UP007
              CircuitStateChanged, ControlApplied, CallAbandoned, ConfigApplied, ConfigRefused]
Observer = Callable[[Event], None]

# Read on the hot path as plain module globals: ``watching`` is false while nobody listens
# and no tracer is set, and then the guards' fast paths build no events and no spans.
observers: tuple[Observer, ...] = ()
tracer: Any = None
"""The span tracer (:class:`vendorguard.telemetry.tracing.SpanTracer`), or None."""
watching = False
attempt_hook: Any = None
"""While fault injection (:mod:`vendorguard.testing`) or discovery is on: ``(guard, fn,
is_async)`` returning the callable an attempt calls instead of ``fn``; otherwise None."""
_hooks: tuple[Callable[[Any, Any, bool], Any], ...] = ()
_lock = threading.Lock()


def add_attempt_hook(hook: Callable[[Any, Any, bool], Any]) -> None:
    """Route every attempt's callable through ``hook`` (guards take their general path)."""
    global _hooks
    with _lock:
        if hook not in _hooks:
            _hooks = (*_hooks, hook)
        _chain()


def remove_attempt_hook(hook: Callable[[Any, Any, bool], Any]) -> None:
    global _hooks
    with _lock:
        _hooks = tuple(h for h in _hooks if h != hook)
        _chain()


def _chain() -> None:
    global attempt_hook
    hooks = _hooks
    if len(hooks) <= 1:
        attempt_hook = hooks[0] if hooks else None
        return

    def chained(guard: Any, fn: Any, is_async: bool) -> Any:
        for hook in hooks:
            fn = hook(guard, fn, is_async)
        return fn

    attempt_hook = chained


def set_tracer(new: Any) -> None:
    """Install the span tracer guards use (``None`` for no spans)."""
    global tracer, watching
    with _lock:
        tracer = new
        watching = bool(observers) or tracer is not None


def add_observer(observer: Observer) -> None:
    """Register a callable that receives every :data:`Event`."""
    global observers, watching
    if not callable(observer):
        raise TypeError(f"observer must be callable, got {observer!r}")
    with _lock:
        if observer not in observers:
            observers = (*observers, observer)
        watching = True


def remove_observer(observer: Observer) -> None:
    """Unregister an observer (compared by equality, so ``obj.method`` works); unknown
    observers are ignored."""
    global observers, watching
    with _lock:
        observers = tuple(o for o in observers if o != observer)
        watching = bool(observers) or tracer is not None


def emit(event: Event) -> None:
    """Deliver ``event`` to every observer, isolating their failures."""
    for observer in observers:
        try:
            observer(event)
        except Exception:  # an observer's bug must never break a vendor call
            _log.exception("vendorguard observer %r failed on %s", observer,
                           type(event).__name__)
