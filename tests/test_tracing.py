"""OpenTelemetry spans: one per logical call, a child per retried attempt, status and events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

import vendorguard as vg
from vendorguard import events
from vendorguard.telemetry import tracing

ROOT = Path(__file__).resolve().parent.parent


class Boom(Exception):
    """A vendor failure (transient for the default classifier)."""


class Spans:
    """An SDK tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Spans on for one test with a private SDK provider; back to following the global one."""
    s = Spans()
    tracing.enable(s.provider)
    try:
        yield s
    finally:
        tracing.follow()
        s.provider.shutdown()



pytestmark = pytest.mark.usefixtures("no_backoff")



def _vendor(metrics: CollectorRegistry, **kwargs: Any) -> vg.Vendor:
    kwargs.setdefault("retry", None)
    return vg.Vendor("acme", registry=metrics, **kwargs)


class Flaky:
    """Fails ``failures`` times with a new exception each time, then returns "ok"."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self, *args: object) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            exc = Boom(f"attempt {self.calls}")
            self.raised.append(exc)
            raise exc
        return "ok"


def _exception_events(span: ReadableSpan) -> list[Any]:
    return [e for e in span.events if e.name == "exception"]


def _ids(span: Any) -> tuple[int, int]:
    ctx = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    return ctx.trace_id, ctx.span_id


# -- the call span ----------------------------------------------------------------------------


def test_one_client_span_per_call_named_vendor_operation(
        spans: Spans, metrics: CollectorRegistry) -> None:
    """A successful call makes exactly one CLIENT span named "{vendor} {operation}"."""
    @_vendor(metrics).guard("mail.send")
    def send() -> str:
        return "sent"

    assert send() == "sent"
    finished = spans.finished()
    assert [s.name for s in finished] == ["acme mail.send"]
    assert finished[0].kind is SpanKind.CLIENT


def test_call_span_attributes_on_success(spans: Spans, metrics: CollectorRegistry) -> None:
    """The call span carries vendor, operation, outcome, attempts and fallback attributes."""
    @_vendor(metrics).guard("mail.send")
    def send() -> str:
        return "sent"

    send()
    span = spans.one("acme mail.send")
    assert dict(span.attributes or {}) == {
        "vendorguard.vendor": "acme", "vendorguard.operation": "mail.send",
        "vendorguard.outcome": "success", "vendorguard.attempts": 1,
        "vendorguard.fallback": False}
    assert span.status.status_code is StatusCode.UNSET
    assert _exception_events(span) == []


def test_successful_call_has_no_attempt_spans(spans: Spans, metrics: CollectorRegistry) -> None:
    """A call that succeeds at once costs a single span, even with retries armed."""
    @_vendor(metrics, retry=vg.Retry(attempts=3)).guard("op")
    def op() -> str:
        return "ok"

    op()
    assert [s.name for s in spans.finished()] == ["acme op"]


# -- retries ----------------------------------------------------------------------------------


@pytest.fixture
def retried(spans: Spans, metrics: CollectorRegistry) -> tuple[Spans, Flaky]:
    """A call that fails twice and succeeds on its third attempt."""
    flaky = Flaky(failures=2)
    guarded = _vendor(metrics, retry=vg.Retry(attempts=3, budget=None)).guard("op")(flaky)
    assert guarded() == "ok"
    return spans, flaky


def test_retried_call_has_one_attempt_span_per_attempt(retried: tuple[Spans, Flaky]) -> None:
    """A call that needed 3 attempts has 3 "attempt" spans numbered 1..3."""
    spans, _ = retried
    attempts = spans.named("acme op attempt")
    assert sorted(s.attributes["vendorguard.attempt"] for s in attempts) == [1, 2, 3]
    assert spans.one("acme op").attributes["vendorguard.attempts"] == 3


def test_attempt_spans_are_children_of_the_call_span(retried: tuple[Spans, Flaky]) -> None:
    """Every attempt span is a CLIENT child of the call span, in the same trace."""
    spans, _ = retried
    call = spans.one("acme op")
    for attempt in spans.named("acme op attempt"):
        assert attempt.parent is not None
        assert attempt.parent.span_id == call.context.span_id
        assert attempt.context.trace_id == call.context.trace_id
        assert attempt.kind is SpanKind.CLIENT


def test_failed_attempt_spans_have_error_status_type_and_one_exception(
        retried: tuple[Spans, Flaky]) -> None:
    """Failed attempts are ERROR with error.type and exactly one exception event each."""
    spans, _ = retried
    by_number = {s.attributes["vendorguard.attempt"]: s for s in spans.named("acme op attempt")}
    for n in (1, 2):
        span = by_number[n]
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "Boom"
        events_ = _exception_events(span)
        assert len(events_) == 1
        assert events_[0].attributes["exception.type"].endswith("Boom")
    last = by_number[3]
    assert last.status.status_code is StatusCode.UNSET
    assert "error.type" not in (last.attributes or {})
    assert _exception_events(last) == []


def test_attempt_spans_are_sequential_within_the_call(retried: tuple[Spans, Flaky]) -> None:
    """Attempt spans lie inside the call span, in order, without overlapping."""
    spans, _ = retried
    call = spans.one("acme op")
    attempts = sorted(spans.named("acme op attempt"),
                      key=lambda s: s.attributes["vendorguard.attempt"])
    assert attempts[0].start_time == call.start_time
    for earlier, later in itertools.pairwise(attempts):
        assert earlier.end_time <= later.start_time
    assert attempts[-1].end_time <= call.end_time


def test_retry_events_on_the_call_span(retried: tuple[Spans, Flaky]) -> None:
    """Each scheduled retry is a "vendorguard.retry" event on the call span."""
    spans, _ = retried
    call = spans.one("acme op")
    retries = [e for e in call.events if e.name == "vendorguard.retry"]
    assert [e.attributes["vendorguard.attempt"] for e in retries] == [1, 2]
    for e in retries:
        assert e.attributes["error.type"] == "Boom"
        assert e.attributes["vendorguard.retry.reason"] == "transient"
        assert "vendorguard.retry.delay" in e.attributes


def test_recovered_call_span_is_not_an_error(retried: tuple[Spans, Flaky]) -> None:
    """A call that succeeded after retries has outcome success and no error status."""
    spans, _ = retried
    call = spans.one("acme op")
    assert call.attributes["vendorguard.outcome"] == "success"
    assert call.status.status_code is StatusCode.UNSET
    assert "error.type" not in call.attributes
    assert _exception_events(call) == []


@pytest.mark.parametrize(
    ("failures", "attempts", "fallback"),
    [(1, 1, False), (1, 1, True), (3, 3, False), (3, 3, True), (2, 3, False)],
    ids=["single-raise", "single-fallback", "retried-raise", "retried-fallback",
         "retried-recovered"])
def test_each_exception_recorded_once_per_call(
        spans: Spans, metrics: CollectorRegistry, failures: int, attempts: int,
        fallback: bool) -> None:
    """Across all spans of a call, "exception" events equal the distinct exceptions raised."""
    flaky = Flaky(failures)
    kwargs: dict[str, Any] = {"fallback": "fb"} if fallback else {}
    guarded = _vendor(metrics, retry=vg.Retry(attempts=attempts, budget=None)).guard(
        "op", **kwargs)(flaky)
    with contextlib.suppress(Boom):
        guarded()
    recorded = [e for s in spans.finished() for e in _exception_events(s)]
    assert len(recorded) == len(flaky.raised)
    assert [e.attributes["exception.type"] for e in recorded] == [
        f"{Boom.__module__}.{Boom.__qualname__}"] * len(flaky.raised)
    # Only the type: a message or traceback can quote vendor answers and call arguments.
    assert all(set(e.attributes) == {"exception.type"} for e in recorded)


# -- status: fallback, raised failure, caller error, rejection ---------------------------------


def test_served_fallback_leaves_status_unset(spans: Spans, metrics: CollectorRegistry) -> None:
    """A failure answered by a fallback leaves the call span's status UNSET."""
    guarded = _vendor(metrics).guard("op", fallback="fb")(Flaky(1))
    assert guarded() == "fb"
    span = spans.one("acme op")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["vendorguard.fallback"] is True
    assert span.attributes["vendorguard.outcome"] == "error"
    assert span.attributes["error.type"] == "Boom"


def test_raised_failure_sets_error_status(spans: Spans, metrics: CollectorRegistry) -> None:
    """A failure the caller sees sets ERROR, error.type and records the exception."""
    guarded = _vendor(metrics).guard("op")(Flaky(1))
    with pytest.raises(Boom):
        guarded()
    span = spans.one("acme op")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "Boom"
    assert span.attributes["vendorguard.outcome"] == "error"
    assert span.attributes["vendorguard.fallback"] is False
    assert len(_exception_events(span)) == 1


def test_failing_fallback_sets_error_status(spans: Spans, metrics: CollectorRegistry) -> None:
    """A fallback that itself fails leaves the caller with a failure: status ERROR."""
    def fallback(failure: vg.Failure) -> str:
        raise RuntimeError("fallback broken")

    guarded = _vendor(metrics).guard("op", fallback=fallback)(Flaky(1))
    with pytest.raises(vg.FallbackError):
        guarded()
    span = spans.one("acme op")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["vendorguard.fallback"] is False
    assert "error.type" in span.attributes


def test_caller_error_sets_error_status(spans: Spans, metrics: CollectorRegistry) -> None:
    """A caller error (TypeError) is raised with ERROR status and error.type on the span."""
    @_vendor(metrics).guard("op", fallback="fb")
    def op() -> str:
        raise TypeError("bad argument")

    with pytest.raises(TypeError):
        op()
    span = spans.one("acme op")
    assert span.attributes["vendorguard.outcome"] == "caller_error"
    assert span.attributes["error.type"] == "TypeError"
    assert span.status.status_code is StatusCode.ERROR
    assert len(_exception_events(span)) == 1


@pytest.mark.parametrize("fallback", [False, True], ids=["raised", "fallback"])
def test_breaker_rejection_has_rejected_outcome_and_event(
        spans: Spans, metrics: CollectorRegistry, fallback: bool) -> None:
    """A call refused by a forced-open breaker: outcome rejected and a rejected event."""
    vendor = _vendor(metrics)
    kwargs: dict[str, Any] = {"fallback": "fb"} if fallback else {}
    calls: list[int] = []
    guarded = vendor.guard("op", **kwargs)(lambda: calls.append(1))
    vendor.force_open("test")
    if fallback:
        assert guarded() == "fb"
    else:
        with pytest.raises(vg.CircuitOpenError):
            guarded()
    assert calls == []
    span = spans.one("acme op")
    assert span.attributes["vendorguard.outcome"] == "rejected"
    assert span.attributes["vendorguard.attempts"] == 0
    rejected = [e for e in span.events if e.name == "vendorguard.rejected"]
    assert len(rejected) == 1
    assert rejected[0].attributes["error.type"] == "CircuitOpenError"
    expected = StatusCode.UNSET if fallback else StatusCode.ERROR
    assert span.status.status_code is expected


# -- context propagation ----------------------------------------------------------------------


def test_call_span_is_current_inside_sync_function(
        spans: Spans, metrics: CollectorRegistry) -> None:
    """Inside a sync guarded function the current span is the call span."""
    seen: list[Any] = []

    @_vendor(metrics).guard("op")
    def op() -> None:
        seen.append(trace.get_current_span())

    op()
    assert _ids(seen[0]) == _ids(spans.one("acme op"))


def test_call_span_is_current_inside_async_function(
        spans: Spans, metrics: CollectorRegistry) -> None:
    """Inside an async guarded function the current span is the call span."""
    seen: list[Any] = []

    @_vendor(metrics).guard("op")
    async def op() -> None:
        await asyncio.sleep(0)
        seen.append(trace.get_current_span())

    asyncio.run(op())
    assert _ids(seen[0]) == _ids(spans.one("acme op"))


def test_call_span_is_current_in_worker_pool_thread(
        spans: Spans, metrics: CollectorRegistry) -> None:
    """With an attempt timeout the function runs on a worker thread, under the call span."""
    seen: list[tuple[Any, str]] = []

    @_vendor(metrics, timeout=vg.Timeout(attempt=5.0)).guard("op")
    def op() -> None:
        seen.append((trace.get_current_span(), threading.current_thread().name))

    op()
    span, thread = seen[0]
    assert thread != threading.current_thread().name
    assert thread.startswith("vendorguard-")
    assert _ids(span) == _ids(spans.one("acme op"))


@pytest.mark.parametrize("timeout", [None, vg.Timeout(attempt=5.0)], ids=["inline", "worker"])
def test_inner_span_is_child_of_call_span(
        spans: Spans, metrics: CollectorRegistry, timeout: vg.Timeout | None) -> None:
    """A span started inside the guarded function is parented to the call span."""
    @_vendor(metrics, timeout=timeout).guard("op")
    def op() -> None:
        with spans.tracer.start_as_current_span("http GET"):
            pass

    op()
    inner, call = spans.one("http GET"), spans.one("acme op")
    assert inner.parent is not None
    assert inner.parent.span_id == call.context.span_id
    assert inner.context.trace_id == call.context.trace_id


@pytest.mark.parametrize("timeout", [None, vg.Timeout(attempt=5.0)], ids=["inline", "worker"])
def test_inner_span_of_a_retry_is_child_of_its_attempt_span(
        spans: Spans, metrics: CollectorRegistry, timeout: vg.Timeout | None) -> None:
    """On a retried attempt, a span started inside the function nests under that attempt."""
    calls: list[int] = []

    @_vendor(metrics, timeout=timeout, retry=vg.Retry(attempts=2, budget=None)).guard("op")
    def op() -> str:
        calls.append(1)
        with spans.tracer.start_as_current_span(f"http {len(calls)}"):
            if len(calls) == 1:
                raise Boom("first")
        return "ok"

    assert op() == "ok"
    attempt2 = next(s for s in spans.named("acme op attempt")
                    if s.attributes["vendorguard.attempt"] == 2)
    inner = spans.one("http 2")
    assert inner.parent is not None
    assert inner.parent.span_id == attempt2.context.span_id


def test_async_retry_attempt_span_is_current(spans: Spans, metrics: CollectorRegistry) -> None:
    """In an async retried attempt the attempt span is current; in the first, the call span."""
    seen: list[Any] = []

    @_vendor(metrics, retry=vg.Retry(attempts=2, budget=None)).guard("op")
    async def op() -> str:
        await asyncio.sleep(0)
        seen.append(trace.get_current_span())
        if len(seen) == 1:
            raise Boom("first")
        return "ok"

    assert asyncio.run(op()) == "ok"
    attempt2 = next(s for s in spans.named("acme op attempt")
                    if s.attributes["vendorguard.attempt"] == 2)
    assert _ids(seen[0]) == _ids(spans.one("acme op"))
    assert _ids(seen[1]) == _ids(attempt2)


def test_call_span_is_child_of_the_callers_span(
        spans: Spans, metrics: CollectorRegistry) -> None:
    """The call span nests under the caller's current span, which is current again after."""
    @_vendor(metrics).guard("op")
    def op() -> str:
        return "ok"

    with spans.tracer.start_as_current_span("request") as outer:
        op()
        assert trace.get_current_span() is outer
    call = spans.one("acme op")
    assert call.parent is not None
    assert call.parent.span_id == outer.get_span_context().span_id


# -- interrupts -------------------------------------------------------------------------------


@pytest.mark.parametrize("on_attempt", [1, 2], ids=["first-attempt", "retried-attempt"])
def test_keyboard_interrupt_ends_span_and_restores_context(
        spans: Spans, metrics: CollectorRegistry, on_attempt: int) -> None:
    """KeyboardInterrupt through the guard still exports the span and restores the context."""
    calls: list[int] = []

    @_vendor(metrics, retry=vg.Retry(attempts=3, budget=None)).guard("op")
    def op() -> None:
        calls.append(1)
        if len(calls) < on_attempt:
            raise Boom("retry me")
        raise KeyboardInterrupt

    with spans.tracer.start_as_current_span("request") as outer:
        with pytest.raises(KeyboardInterrupt):
            op()
        assert trace.get_current_span() is outer
    call = spans.one("acme op")
    assert call.attributes["error.type"] == "KeyboardInterrupt"
    assert call.status.status_code is StatusCode.ERROR
    assert len(spans.named("acme op attempt")) == (0 if on_attempt == 1 else 2)
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_cancelled_error_raised_through_guard_ends_span(
        spans: Spans, metrics: CollectorRegistry) -> None:
    """An async function raising CancelledError: the span is exported, the context restored."""
    @_vendor(metrics).guard("op")
    async def op() -> None:
        raise asyncio.CancelledError

    async def main() -> tuple[Any, Any]:
        with spans.tracer.start_as_current_span("request") as outer:
            with contextlib.suppress(asyncio.CancelledError):
                await op()
            return outer, trace.get_current_span()

    outer, after = asyncio.run(main())
    assert after is outer
    call = spans.one("acme op")
    assert call.attributes["error.type"] == "CancelledError"
    assert call.status.status_code is StatusCode.ERROR


def test_task_cancelled_inside_guard_ends_span(spans: Spans, metrics: CollectorRegistry) -> None:
    """Cancelling the task while it waits inside the guard exports the span and restores it."""
    @_vendor(metrics).guard("op")
    async def op(inside: asyncio.Event) -> None:
        inside.set()
        await asyncio.Event().wait()

    async def main() -> tuple[Any, Any]:
        inside = asyncio.Event()
        seen: list[Any] = []

        async def runner() -> None:
            with spans.tracer.start_as_current_span("request") as outer:
                seen.append(outer)
                try:
                    await op(inside)
                finally:
                    seen.append(trace.get_current_span())

        task = asyncio.create_task(runner())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen[0], seen[1]

    outer, after = asyncio.run(main())
    assert after is outer
    call = spans.one("acme op")
    assert call.attributes["error.type"] == "CancelledError"
    assert call.parent is not None
    assert call.parent.span_id == outer.get_span_context().span_id


# -- switching tracing on and off -------------------------------------------------------------


def test_disable_makes_no_spans(spans: Spans, metrics: CollectorRegistry) -> None:
    """After tracing.disable() guarded calls make no spans at all."""
    guarded = _vendor(metrics, retry=vg.Retry(attempts=2, budget=None)).guard(
        "op", fallback="fb")(Flaky(5))
    tracing.disable()
    assert guarded() == "fb"
    assert events.tracer is None
    assert spans.finished() == []


def test_enable_after_guard_creation_takes_effect_at_once(metrics: CollectorRegistry) -> None:
    """Guards created before tracing.enable() make spans as soon as it is called."""
    @_vendor(metrics).guard("op")
    def op() -> str:
        return "ok"

    s = Spans()
    tracing.enable(s.provider)
    try:
        op()
    finally:
        tracing.follow()
    assert [x.name for x in s.finished()] == ["acme op"]


def test_refresh_without_sdk_provider_leaves_no_tracer() -> None:
    """With no SDK provider set globally, auto-detection installs no tracer."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), (
        "another test set a global tracer provider")
    tracing.follow()
    tracing.refresh(force=True)
    assert events.tracer is None


# -- subprocesses: the global provider, and no opentelemetry at all -----------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


_GLOBAL_PROVIDER = """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()

    def install():
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
"""


def test_global_sdk_provider_is_detected_when_guards_are_created() -> None:
    """A global SDK provider set before a guard is built is followed without enable()."""
    result = _run(_GLOBAL_PROVIDER + """
    install()
    import vendorguard as vg
    from prometheus_client import CollectorRegistry

    @vg.Vendor("acme", registry=CollectorRegistry()).guard("op")
    def op():
        return "ok"

    op()
    print([s.name for s in exporter.get_finished_spans()])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['acme op']"


def test_global_provider_set_later_is_found_by_a_failing_call() -> None:
    """A provider set after guards exist is found by a later non-success call (per docstring)."""
    result = _run(_GLOBAL_PROVIDER + """
    import vendorguard as vg
    from vendorguard.telemetry import tracing
    from prometheus_client import CollectorRegistry

    @vg.Vendor("acme", retry=None, registry=CollectorRegistry()).guard("op", fallback="fb")
    def op():
        raise RuntimeError("down")

    install()
    tracing._checked -= 2.0  # more than the one-second rate limit has passed
    op()
    op()
    print(len(exporter.get_finished_spans()) > 0)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_everything_works_without_opentelemetry() -> None:
    """With every opentelemetry import blocked, guards, health and refresh still work."""
    result = _run("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())

    import json
    import vendorguard as vg
    from vendorguard.telemetry import tracing
    from prometheus_client import CollectorRegistry

    vendor = vg.Vendor("acme", registry=CollectorRegistry())
    calls = []

    @vendor.guard("ok")
    def ok():
        return "ok"

    @vendor.guard("fails", fallback="fb", retry=None)
    def fails():
        raise RuntimeError("down")

    @vendor.guard("flaky", retry=vg.Retry(attempts=3, budget=None))
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("again")
        return "recovered"

    with vg.testing_mode():
        print(ok(), fails(), flaky(), len(calls))
    print(json.loads(json.dumps(vg.health()))["vendors"]["acme"]["calls"])
    tracing.refresh(force=True)
    try:
        tracing.enable()
    except ImportError as exc:
        print("ImportError", "vendorguard[otel]" in str(exc))
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ok fb recovered 3", "3", "ImportError True", "[]"]
