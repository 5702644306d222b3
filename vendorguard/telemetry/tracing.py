"""OpenTelemetry spans for guarded calls (optional: ``pip install 'vendorguard[otel]'``).

One span per logical call, ``"{vendor} {operation}"`` (kind CLIENT), current while the call
runs so that spans of an instrumented HTTP client nest under it and the context reaches the
worker pool used for sync timeouts. A call that retries gets a child span per attempt (the
first one recorded when the first retry is scheduled), so a call that succeeds at once costs a
single span. Each exception is recorded once, on the innermost span that saw it. A served
fallback leaves the status unset; a failure the caller sees sets ERROR.

Spans are made only while an OpenTelemetry SDK tracer provider is configured: with
opentelemetry-api absent, or present with no SDK, guards pay nothing. The provider is looked up
when guards are created, when health is read (and so on every /metrics and /vendors request)
and at most once a second from any call that is not a plain success; :func:`enable` turns
spans on at once (and :func:`disable` off) without waiting for that.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from .. import events

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["FIRST_TRY_SUCCESS", "CallSpan", "SpanTracer", "disable", "enable", "follow",
           "refresh"]

FIRST_TRY_SUCCESS = {"vendorguard.outcome": "success", "vendorguard.attempts": 1,
                      "vendorguard.fallback": False}
_explicit = False
_checked = -1e9
_provider: Any = None


def refresh(*, force: bool = False) -> None:
    """Follow the application's tracer provider (cheap; rate-limited to once a second)."""
    global _checked, _provider
    if _explicit:
        return
    now = time.monotonic()
    if not force and now - _checked < 1.0:
        return
    _checked = now
    trace = sys.modules.get("opentelemetry.trace")
    provider = None if trace is None else trace.get_tracer_provider()
    if provider is not None and isinstance(
            provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):  # type: ignore[union-attr]
        provider = None
    if provider is _provider:
        return
    _provider = provider
    events.set_tracer(None if provider is None else SpanTracer(provider))


def enable(tracer_provider: Any = None) -> None:
    """Make spans from now on, with ``tracer_provider`` (default: the global one)."""
    global _explicit, _provider
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError("tracing needs opentelemetry-api: "
                          "pip install 'vendorguard[otel]'") from None
    _explicit = True
    _provider = tracer_provider or trace.get_tracer_provider()
    events.set_tracer(SpanTracer(_provider))


def disable() -> None:
    """Make no spans until :func:`enable` (or :func:`follow`) is called."""
    global _explicit, _provider
    _explicit, _provider = True, None
    events.set_tracer(None)


def follow() -> None:
    """Go back to following the application's global tracer provider."""
    global _explicit
    _explicit = False
    refresh(force=True)


class SpanTracer:
    """Starts the spans of guarded calls with one OpenTelemetry tracer provider."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from .. import __version__

        self.tracer = provider.get_tracer("vendorguard", __version__)
        self.attach, self.detach = context.attach, context.detach
        self.in_context = trace.set_span_in_context
        self.client = SpanKind.CLIENT
        self.error = Status(StatusCode.ERROR)

    def start(self, guard: Pipeline) -> CallSpan:
        span = self.tracer.start_span(guard.span_name, kind=self.client,
                                      attributes=guard.span_attributes)
        return CallSpan(self, guard, span, self.attach(self.in_context(span)))


class CallSpan:
    """The span of one logical call, and its attempts' child spans."""

    __slots__ = ("_recorded", "_token", "guard", "span", "tracer")

    def __init__(self, tracer: SpanTracer, guard: Pipeline, span: Any, token: Any) -> None:
        self.tracer, self.guard, self.span, self._token = tracer, guard, span, token
        self._recorded: BaseException | None = None

    def _child(self, attempt: int, start_time: int | None = None) -> Any:
        return self.tracer.tracer.start_span(
            f"{self.guard.span_name} attempt", context=self.tracer.in_context(self.span),
            kind=self.tracer.client, start_time=start_time,
            attributes={"vendorguard.attempt": attempt})

    def _fail(self, span: Any, exc: BaseException) -> None:
        span.set_attribute("error.type", type(exc).__qualname__)
        _record(span, exc)
        span.set_status(self.tracer.error)
        self._recorded = exc

    def attempt_start(self, attempt: int) -> tuple[Any, Any]:
        """A live child span for a retry's attempt, current while it runs."""
        child = self._child(attempt)
        return child, self.tracer.attach(self.tracer.in_context(child))

    def attempt_end(self, handle: tuple[Any, Any], exc: BaseException | None) -> None:
        child, token = handle
        self.tracer.detach(token)
        if exc is not None:
            self._fail(child, exc)
        child.end()

    def retry(self, attempt: int, exc: BaseException, delay: float, reason: str) -> None:
        """A retry was scheduled after ``attempt`` failed with ``exc``."""
        if attempt == 1:  # the first attempt ran before anyone knew it would be retried
            child = self._child(1, getattr(self.span, "start_time", None))
            self._fail(child, exc)
            child.end()
        self.span.add_event("vendorguard.retry", {
            "vendorguard.attempt": attempt, "vendorguard.retry.delay": delay,
            "vendorguard.retry.reason": reason, "error.type": type(exc).__qualname__})

    def rejected(self, error: BaseException) -> None:
        self.span.add_event("vendorguard.rejected", {"error.type": type(error).__qualname__})

    def finish(self, outcome: str, attempts: int, error: BaseException | None,
               fallback: bool) -> None:
        """Set the call's result on its span (the span ends in :meth:`close`)."""
        span = self.span
        span.set_attributes({"vendorguard.outcome": outcome, "vendorguard.attempts": attempts,
                             "vendorguard.fallback": fallback})
        if error is None:
            return
        span.set_attribute("error.type", type(error).__qualname__)
        if error is not self._recorded:
            _record(span, error)
            self._recorded = error
        if not fallback:
            span.set_status(self.tracer.error)

    def close(self, aborted: BaseException | None = None) -> None:
        """End the span and restore the context; ``aborted`` is an exception (such as
        cancellation) that left the guard without an outcome."""
        if aborted is not None:
            self.span.set_attribute("error.type", type(aborted).__qualname__)
            self.span.set_status(self.tracer.error)
        self.tracer.detach(self._token)
        self.span.end()


def _record(span: Any, exc: BaseException) -> None:
    """An ``exception`` event with the exception's type only. OpenTelemetry's
    ``record_exception`` would add its message and traceback, which can quote a vendor's
    answer, a URL with its query string, or the call's arguments (keys, emails, card numbers)."""
    kind = type(exc)
    module = kind.__module__
    name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    span.add_event("exception", {"exception.type": name})
