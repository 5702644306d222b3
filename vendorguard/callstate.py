"""Per-call state and the internal signals the sync and async paths share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .classify import Verdict
from .errors import FallbackError

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["CALLER_ERROR", "Call", "Rejected", "Stop", "fallback_error"]


class Rejected(Exception):
    """Internal: breaker or bulkhead refused an attempt."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


class Call:
    """Per-call state, created only once a call needs more than its first attempt."""

    __slots__ = ("attempts", "deadline", "exc", "retry_state", "span", "verdict")

    def __init__(self, deadline: float | None) -> None:
        self.attempts = 0
        self.deadline = deadline
        self.exc: Exception | None = None
        self.verdict: Verdict | None = None
        self.retry_state: Any = None
        self.span: Any = None  # the call's CallSpan while tracing is on


class Stop(Exception):
    """Internal: no further attempt is possible; the last attempt's failure ends the call."""


CALLER_ERROR = -1.0


def fallback_error(guard: Pipeline, exc: Exception) -> FallbackError:
    return FallbackError(
        f"{guard.name} {guard.operation}: fallback raised {type(exc).__name__}",
        vendor=guard.name, operation=guard.operation)
