"""Fallbacks: what a guard serves instead of a vendor failure.

A fallback is a plain value, a callable taking one :class:`Failure`, a :class:`LastGood`, or
any :class:`FallbackStrategy` (the outbox is one). It is never used for a caller error.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .policy import _seconds

__all__ = ["MISSING", "Failure", "FallbackStrategy", "LastGood", "NoFallback", "compile_fallback"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Sentinel: no fallback given (the failure is raised). ``None`` is a fallback value."""


class NoFallback(Exception):
    """Raised by a strategy that has nothing to serve: the original failure is raised."""


@dataclass(frozen=True, slots=True)
class Failure:
    """What a fallback callable receives about the failed call. ``kind`` is how the last
    attempt's failure was classified (``transient``, ``ambiguous``, ``fatal``), or ``None``
    when no attempt was made (an open circuit, a full bulkhead, a deadline already passed)."""

    exception: BaseException
    outcome: str
    vendor: str
    operation: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    kind: str | None = None


class FallbackStrategy:
    """Base for fallbacks that keep state. ``remembers`` makes the guard pass every successful
    result to :meth:`remember` (only then: the success path stays free otherwise)."""

    remembers = False

    def remember(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        """Called with each successful result when ``remembers`` is true."""

    def serve(self, failure: Failure) -> Any:
        """Return the value to give the caller, or raise :class:`NoFallback`."""
        raise NoFallback

    def bind(self, guard: Any, fn: Any) -> None:
        """Called when a guard using this fallback wraps ``fn`` (the outbox learns from it
        how to redeliver)."""


class _Value(FallbackStrategy):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def serve(self, failure: Failure) -> Any:
        return self.value


class _Callable(FallbackStrategy):
    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Failure], Any]) -> None:
        self.fn = fn

    def serve(self, failure: Failure) -> Any:
        return self.fn(failure)


def _check_one_arg(fn: Callable[..., Any], field: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust the caller
    try:
        sig.bind(None)
    except TypeError:
        raise TypeError(
            f"{field} must be a value or a callable taking one argument (a vendorguard."
            f"Failure); {fn!r} has signature {sig}") from None


def compile_fallback(fallback: Any) -> FallbackStrategy | None:
    """Turn a user's ``fallback=`` into a strategy; ``None`` when absent. Validates eagerly."""
    if fallback is MISSING:
        return None
    if isinstance(fallback, FallbackStrategy):
        return fallback
    if callable(fallback):
        _check_one_arg(fallback, "fallback")
        return _Callable(fallback)
    return _Value(fallback)


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for plain data: dicts (e.g. request params) and lists included."""
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(v) for v in value)
    return value  # type: ignore[no-any-return]


def _default_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    return _freeze((args, kwargs)) if kwargs else _freeze(args)


class LastGood(FallbackStrategy):
    """Serve the last successful result for the same arguments, else ``otherwise``.

    Args:
        ttl: seconds a remembered result may be served.
        max_entries: how many argument sets are remembered (least recently used go first).
        otherwise: served when nothing fresh is remembered: a value or a callable taking a
            :class:`Failure`; absent, the failure is raised.
        key: maps ``(args, kwargs)`` to a hashable key. The default key compares plain
            data by value (dicts and lists included); calls with other unhashable arguments
            are not remembered.
    """

    remembers = True

    def __init__(self, ttl: float | timedelta = 300.0, max_entries: int = 1024,
                 otherwise: Any = MISSING, *,
                 key: Callable[[tuple[Any, ...], dict[str, Any]], Hashable] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        seconds = _seconds("LastGood", "ttl", ttl, allow_none=False)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int):
            raise TypeError(f"LastGood.max_entries must be an int, got {max_entries!r}")
        if max_entries < 1:
            raise ValueError(f"LastGood.max_entries must be >= 1, got {max_entries!r}")
        assert seconds is not None
        self.ttl = seconds
        self.max_entries = max_entries
        self._otherwise = compile_fallback(otherwise)
        self._key = key or _default_key
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _safe_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
        try:
            key = self._key(args, kwargs)
            hash(key)
        except TypeError:  # unhashable, or dict keys that cannot be sorted
            return None
        return key

    def remember(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        key = self._safe_key(args, kwargs)
        if key is None:
            return
        expires = self._clock() + self.ttl
        with self._lock:
            entries = self._entries
            entries[key] = (expires, result)
            entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)

    def serve(self, failure: Failure) -> Any:
        key = self._safe_key(failure.args, failure.kwargs)
        if key is not None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    if entry[0] > self._clock():
                        return entry[1]
                    del self._entries[key]
        if self._otherwise is None:
            raise NoFallback
        return self._otherwise.serve(failure)
