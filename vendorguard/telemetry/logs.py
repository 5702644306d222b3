"""Logging conventions: the ``vendorguard`` stdlib logger, and rate limiting for fallbacks.

Breaker transitions and control actions are logged at WARNING, fallbacks at INFO at most once
per interval per operation (with how many were not logged). Records carry vendor and operation
names, outcomes and exception *type* names only: never call arguments, exception messages or
anything else that could hold a secret or personal data.
"""

from __future__ import annotations

import logging
import time

__all__ = ["FallbackLog", "logger"]

logger = logging.getLogger("vendorguard")


class FallbackLog:
    """Logs "fallback served" for one operation at most once per ``interval`` seconds."""

    __slots__ = ("_next", "_suppressed", "interval", "operation", "vendor")

    def __init__(self, vendor: str, operation: str, interval: float = 10.0) -> None:
        self.vendor, self.operation, self.interval = vendor, operation, interval
        self._next = 0.0
        self._suppressed = 0

    def hit(self, reason: str) -> None:
        """A fallback was served because of ``reason`` (the call's outcome)."""
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1  # a lost increment under a race only undercounts a log line
            return
        self._next = now + self.interval
        suppressed, self._suppressed = self._suppressed, 0
        if logger.isEnabledFor(logging.INFO):
            logger.info("vendorguard: %s %s: fallback served (%s)%s", self.vendor,
                        self.operation, reason,
                        f"; {suppressed} more since the last message" if suppressed else "")
