"""Deadlines and timeout strategies.

- :class:`deadline` sets an outer time budget in a context variable; every guard inside it
  bounds its attempts by what is left.
- Async attempts run under ``asyncio.timeout`` and are really cancelled.
- Sync generic callables run on the vendor's bounded :class:`WorkerPool`; at the bound the
  caller stops waiting. Python cannot kill a thread, so the call is *abandoned*: counted until
  it really ends, and it keeps its worker (and bulkhead slot) until then. Workers are daemon
  threads, so a hung vendor call never blocks process exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["WorkerPool", "attempt_timeout", "deadline", "remaining"]

T = TypeVar("T")

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "vendorguard_deadline", default=None)
_attempt_bound: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "vendorguard_attempt_timeout", default=None)
monotonic = time.monotonic


class deadline:
    """An outer time budget: ``with vg.deadline(2.5): ...`` (also ``async with``).

    Guards inside it never run past it, nested deadlines only ever shorten it, and calls
    started after it has passed fail with :class:`~vendorguard.VendorTimeoutError` at once.
    """

    __slots__ = ("_token", "seconds")

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"deadline seconds must be a number, got {seconds!r}")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"deadline seconds must be finite and > 0, got {seconds!r}")
        self.seconds = float(seconds)
        self._token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> deadline:
        end = monotonic() + self.seconds
        outer = _deadline.get()
        self._token = _deadline.set(end if outer is None else min(outer, end))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _deadline.reset(self._token)
            self._token = None

    async def __aenter__(self) -> deadline:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    @property
    def remaining(self) -> float | None:
        """Seconds left in the innermost active deadline."""
        return remaining()


def remaining() -> float | None:
    """Seconds left in the innermost active deadline, or ``None`` outside any."""
    end = _deadline.get()
    return None if end is None else end - monotonic()


def attempt_timeout() -> float | None:
    """The bound for the current attempt, for callables that enforce it themselves (sync
    guards with ``timeout_mode="caller"``, e.g. by setting their HTTP client's socket timeout).
    Async attempts see it too, although they are also cancelled at it."""
    return _attempt_bound.get()


class AttemptTimedOut(Exception):
    """Internal: the attempt's bound was reached (the guard raises VendorTimeoutError)."""

    def __init__(self, abandoned: bool) -> None:
        super().__init__()
        self.abandoned = abandoned


if sys.version_info >= (3, 11):
    async def run_async(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                        kwargs: dict[str, Any], bound: float) -> T:
        """Await ``fn(*args, **kwargs)``, cancelling it after ``bound`` seconds."""
        try:
            async with asyncio.timeout(bound) as cm:
                return await fn(*args, **kwargs)
        except TimeoutError:
            if cm.expired():
                raise AttemptTimedOut(False) from None
            raise
else:  # pragma: no cover - Python 3.10
    async def run_async(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                        kwargs: dict[str, Any], bound: float) -> T:
        start = monotonic()
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), bound)
        except asyncio.TimeoutError:
            if monotonic() - start >= bound:
                raise AttemptTimedOut(False) from None
            raise


_PENDING, _RUNNING, _DONE, _ABANDONED = 0, 1, 2, 3


class _Task:
    __slots__ = ("args", "ctx", "done", "error", "fn", "kwargs", "on_end", "result", "state")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 on_end: Callable[[], None]) -> None:
        self.fn, self.args, self.kwargs, self.on_end = fn, args, kwargs, on_end
        self.ctx = contextvars.copy_context()
        self.done = threading.Lock()
        self.done.acquire()
        self.state = _PENDING
        self.result: Any = None
        self.error: BaseException | None = None


class WorkerPool:
    """A bounded pool of daemon threads for sync attempts with a timeout.

    Threads start on demand up to ``max_workers`` and exit after ``idle_timeout`` seconds
    without work. ``on_abandon`` / ``on_abandoned_end`` count abandoned calls.
    """

    def __init__(self, name: str, max_workers: int, *, idle_timeout: float = 30.0,
                 on_abandon: Callable[[], None] | None = None,
                 on_abandoned_end: Callable[[], None] | None = None) -> None:
        self.name = name
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self._on_abandon = on_abandon
        self._on_abandoned_end = on_abandoned_end
        self._queue: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers = self._idle = self._pending = 0
        self.abandoned = 0

    @property
    def workers(self) -> int:
        return self._workers

    def run(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
            bound: float, on_end: Callable[[], None]) -> T:
        """Run ``fn`` on a worker and wait at most ``bound`` seconds.

        Raises :class:`AttemptTimedOut` at the bound; ``on_end`` then runs when the abandoned
        call really ends (it releases what the call still holds, such as its bulkhead slot).
        """
        task = _Task(fn, args, kwargs, on_end)
        with self._lock:
            self._pending += 1
            spawn = self._idle < self._pending and self._workers < self.max_workers
            if spawn:
                self._workers += 1
        if spawn:
            threading.Thread(target=self._work, name=f"vendorguard-{self.name}",
                             daemon=True).start()
        self._queue.put(task)
        if not task.done.acquire(timeout=max(bound, 0.0)):
            with self._lock:
                if task.state != _DONE:
                    task.state = _ABANDONED
                    self.abandoned += 1
            if task.state == _ABANDONED:
                # Not started yet: the worker skips it and calls on_end when it dequeues it.
                if self._on_abandon is not None:
                    self._on_abandon()
                raise AttemptTimedOut(True)
            task.done.acquire()
        if task.error is not None:
            error, task.error = task.error, None
            raise error
        return task.result  # type: ignore[no-any-return]

    def _work(self) -> None:
        get, lock = self._queue.get, self._lock
        while True:
            with lock:
                self._idle += 1
            try:
                task = get(timeout=self.idle_timeout)
            except queue.Empty:
                with lock:
                    self._idle -= 1
                    if self._pending == 0:
                        self._workers -= 1
                        return
                continue
            with lock:
                self._idle -= 1
                self._pending -= 1
                skip = task.state == _ABANDONED
                if not skip:
                    task.state = _RUNNING
            if not skip:
                try:
                    task.result = task.ctx.run(task.fn, *task.args, **task.kwargs)
                except BaseException as exc:  # delivered to the waiting caller
                    task.error = exc
                with lock:
                    skip = task.state == _ABANDONED
                    if not skip:
                        task.state = _DONE
                if not skip:
                    task.done.release()
                    continue
            with lock:
                self.abandoned -= 1
            task.error = task.result = None
            task.on_end()
            if self._on_abandoned_end is not None:
                self._on_abandoned_end()


def run_in_caller_mode(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
                       bound: float) -> T:
    """Run ``fn`` on this thread with :func:`attempt_timeout` telling it its bound."""
    token = _attempt_bound.set(bound)
    try:
        return fn(*args, **kwargs)
    finally:
        _attempt_bound.reset(token)
