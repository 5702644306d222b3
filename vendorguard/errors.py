"""The exception tree: one root, :class:`VendorError`.

::

    VendorError                  a guard refused or could not complete a vendor call
    ├── CircuitOpenError         the breaker rejected the call before any attempt
    ├── VendorTimeoutError       an attempt or deadline bound was hit (also a TimeoutError)
    ├── BulkheadFullError        too many calls to this vendor are in flight
    └── FallbackError            the planned fallback itself raised (``__cause__``: the failure)

When retries run out, the vendor's *own* last exception is raised unchanged, so callers keep
catching what they already catch. Every error carries ``.vendor`` and ``.operation``.
"""

from __future__ import annotations

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "FallbackError",
    "VendorError",
    "VendorTimeoutError",
]


class VendorError(Exception):
    """Root of every error a guard raises on its own behalf."""

    def __init__(self, message: str, *, vendor: str, operation: str) -> None:
        super().__init__(message)
        self.vendor = vendor
        self.operation = operation


class CircuitOpenError(VendorError):
    """The vendor's circuit is open: the call was rejected before any attempt.

    ``retry_after`` is the number of seconds until a trial call may go through (0 when the
    circuit is forced open and no time is known).
    """

    def __init__(self, message: str, *, vendor: str, operation: str, retry_after: float) -> None:
        super().__init__(message, vendor=vendor, operation=operation)
        self.retry_after = retry_after


class VendorTimeoutError(VendorError, TimeoutError):
    """An attempt timeout or the total deadline was reached before the vendor answered."""


class BulkheadFullError(VendorError):
    """The vendor's concurrency limit was reached and no slot freed up in time."""


class FallbackError(VendorError):
    """The fallback raised while serving a failure; ``__cause__`` is the original failure."""
