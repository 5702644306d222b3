"""vendorguard: make third-party vendors safe and visible parts of your system.

Every vendor call goes through a guard that bounds its time, absorbs its failures with a
planned fallback, stops calling a vendor that is down, and reports what happened as
Prometheus metrics::

    import vendorguard as vg

    sendgrid = vg.Vendor("sendgrid", timeout=vg.Timeout(attempt=2.0, total=6.0))

    @sendgrid.guard("mail.send", fallback=None)
    def send_welcome(user): ...
"""

from __future__ import annotations

from .classify import Kind, Verdict, default_classifier
from .config import ConfigError, configure, reload
from .discovery import discover, undiscover
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    FallbackError,
    VendorError,
    VendorTimeoutError,
)
from .events import Event, Observer, add_observer, remove_observer
from .fallback import Failure, FallbackStrategy, LastGood
from .outbox import Outbox, OutboxError, Receipt
from .pipeline import Guard
from .policy import Backoff, Breaker, Bulkhead, Policy, Retry, RetryBudget, Timeout
from .proxy import VendorProxy
from .registry import Vendor, guard, vendor, vendors
from .retry import parse_retry_after, testing_mode
from .shared import RedisStorage
from .telemetry.health import health
from .timeouts import deadline

__version__ = "0.1.0.dev0"

__all__ = [
    "Backoff",
    "Breaker",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigError",
    "Event",
    "Failure",
    "FallbackError",
    "FallbackStrategy",
    "Guard",
    "Kind",
    "LastGood",
    "Observer",
    "Outbox",
    "OutboxError",
    "Policy",
    "Receipt",
    "RedisStorage",
    "Retry",
    "RetryBudget",
    "Timeout",
    "Vendor",
    "VendorError",
    "VendorProxy",
    "VendorTimeoutError",
    "Verdict",
    "add_observer",
    "configure",
    "deadline",
    "default_classifier",
    "discover",
    "guard",
    "health",
    "parse_retry_after",
    "reload",
    "remove_observer",
    "testing_mode",
    "undiscover",
    "vendor",
    "vendors",
]
