"""What the LaunchDarkly drop-in relies on from the SDK beyond its public API, in one place.

Supported: launchdarkly-server-sdk 9.x. Each piece falls back to public behaviour when the
internals it reads are missing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ldclient
from ldclient.evaluation import EvaluationDetail

__all__ = ["ERRORS", "REASONS", "SDK_LOGGERS", "Evaluation", "HookResult",
           "NotReadyLogFilter", "not_ready_filter"]

_log = logging.getLogger("vendorguard")

# errorKind of the SDK's evaluation reason -> (outcome, fallback reason)
ERRORS = {
    "CLIENT_NOT_READY": ("error", "not_ready"),
    "FLAG_NOT_FOUND": ("caller_error", "flag_not_found"),
    "USER_NOT_SPECIFIED": ("caller_error", "bad_context"),
    "WRONG_TYPE": ("caller_error", "wrong_type"),
    "MALFORMED_FLAG": ("error", "malformed_flag"),
    "EXCEPTION": ("error", "exception"),
}
REASONS = ("not_ready", "flag_not_found", "bad_context", "wrong_type", "malformed_flag",
           "exception", "error")


class NotReadyLogFilter(logging.Filter):
    """Lets the SDK's "evaluation before initialisation" warning through once per minute: it
    is logged on every evaluation otherwise, thousands of lines a second during an outage."""

    def __init__(self) -> None:
        super().__init__("vendorguard.launchdarkly")
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Feature Flag evaluation attempted before client"):
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + 60.0
        return True


not_ready_filter = NotReadyLogFilter()
SDK_LOGGERS = ("ldclient", "ldclient.util")


class Evaluation:
    """The SDK's evaluation entry points for one client, looked up once.

    ``variation`` drops the reason we need and ``variation_detail`` would add reasons to the
    analytics events the application sends, so, where the 9.x internals are present, this runs
    an evaluation exactly as ``variation`` does (hooks, default event factory) and keeps the
    detail. Otherwise it falls back to ``variation`` (outcomes then come from exceptions only).
    """

    __slots__ = ("detail", "factory", "internal", "variation", "with_hooks")

    def __init__(self, client: Any) -> None:
        base = ldclient.LDClient
        self.with_hooks = getattr(client, "_LDClient__evaluate_with_hooks", None)
        self.internal = getattr(client, "_evaluate_internal", None)
        self.factory = getattr(client, "_event_factory_default", None)
        self.variation = base.variation.__get__(client)
        self.detail = base.variation_detail.__get__(client)
        if self.with_hooks is None or self.internal is None or self.factory is None:
            _log.warning("vendorguard: this launchdarkly-server-sdk has no evaluation detail "
                         "for variation(); fallback reasons will be incomplete")
            self.with_hooks = None

    def __call__(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        with_hooks = self.with_hooks
        if with_hooks is None:  # pragma: no cover - other SDK versions
            return EvaluationDetail(self.variation(key, context, default), 0, {"kind": "UNKNOWN"})
        internal, factory = self.internal, self.factory

        def evaluate() -> Any:
            return HookResult(evaluation_detail=internal(key, context, default, factory)[0])

        return with_hooks(key=key, context=context, default_value=default,  # type: ignore[no-any-return]
                          method="variation", block=evaluate).evaluation_detail


try:  # the SDK's own result type for hooks, where it exists
    from ldclient.client import _EvaluationWithHookResult as HookResult
except ImportError:  # pragma: no cover
    class HookResult:  # type: ignore[no-redef]
        def __init__(self, evaluation_detail: Any) -> None:
            self.evaluation_detail = evaluation_detail
            self.results = None
