"""A concurrency limit shared by a vendor's sync and async calls, with FIFO waiting."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

__all__ = ["Slots"]


class Slots:
    """``limit`` slots; waiters are served first come, first served.

    A released slot is handed straight to the oldest waiter, so nobody can barge past it.
    Sync waiters wait on a lock, async waiters on a future of their own event loop.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()
        self._waiters: deque[Any] = deque()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active < self.limit and not self._waiters:
                self.active += 1
                return True
            return False

    def acquire(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot (sync)."""
        with self._lock:
            if self.active < self.limit and not self._waiters:
                self.active += 1
                return True
            if timeout <= 0:
                return False
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        if waiter.acquire(timeout=timeout):
            return True
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return True  # granted while we gave up: the slot is ours
            return False

    async def acquire_async(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot without blocking the event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.active < self.limit and not self._waiters:
                self.active += 1
                return True
            if timeout <= 0:
                return False
            fut: asyncio.Future[bool] = loop.create_future()
            entry = (loop, fut)
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            with self._lock:
                try:
                    self._waiters.remove(entry)
                    granted = False
                except ValueError:
                    granted = True
            if isinstance(exc, asyncio.CancelledError):
                if granted:
                    self.release()
                raise
            return granted

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self.active -= 1
                return
            waiter = self._waiters.popleft()
        if isinstance(waiter, tuple):
            loop, fut = waiter
            loop.call_soon_threadsafe(_grant, fut)
        else:
            waiter.release()


def _grant(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(True)
