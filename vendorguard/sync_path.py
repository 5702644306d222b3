"""The sync path of a guard: a compiled fast path, the retry loop, and one attempt."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import events
from .breaker import CLOSED
from .callstate import CALLER_ERROR, Call, Rejected, Stop
from .errors import CircuitOpenError, VendorTimeoutError
from .fallback import NoFallback, _Value
from .telemetry.metrics import fast_inc
from .telemetry.tracing import FIRST_TRY_SUCCESS, CallSpan
from .timeouts import AttemptTimedOut, _deadline, run_in_caller_mode

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["compile_sync"]

perf = time.perf_counter
Run = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


def compile_sync(g: Pipeline) -> Run:
    """Build a guard's ``run_sync``: a closure with everything pre-bound.

    While the circuit is closed and no bulkhead or timeout applies, the first attempt runs
    inline: no admission call, no per-call state, no label lookup, no lock (and, when tracing
    is on, one span). An open circuit answered by a fallback value raises nothing.
    """
    circuit = g.circuit
    assert circuit is not None
    push, pop = g.inflight.append, g.inflight.pop
    m = g.metrics
    ok_inc, ok_observe = m.inc_call["success"], m.observe["success"]
    rejected_inc = m.inc_call["rejected"]
    fallback_rejected_inc = fast_inc(m.fallbacks["rejected"])
    fallback = g.fallback
    value = fallback.value if isinstance(fallback, _Value) else None
    reject_value = isinstance(fallback, _Value)
    reject_raise = fallback is None
    remember = fallback.remember if fallback is not None and fallback.remembers else None
    bucket = g.bucket
    inline = not g.timeout.bounded and g.slots is None
    get_deadline = _deadline.get
    fallback_log = g.fallback_log.hit
    span_name, span_attributes = g.span_name, g.span_attributes
    ev = events

    def run_sync(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if ev.observers or get_deadline() is not None or ev.attempt_hook is not None:
            pass
        elif circuit.state is CLOSED and inline:
            tracer = ev.tracer
            if tracer is not None:  # the span's OTel calls inline; a CallSpan only on failure
                span = tracer.tracer.start_span(span_name, kind=tracer.client,
                                                attributes=span_attributes)
                token = tracer.attach(tracer.in_context(span))
            gen = circuit.gen
            if bucket is not None:
                bucket.calls += 1
            push(None)
            start = perf()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                first: Exception = exc
            except BaseException as escaped:
                pop()
                if tracer is not None:
                    CallSpan(tracer, g, span, token).close(escaped)
                raise
            else:
                pop()
                duration = perf() - start
                if circuit.dirty:
                    circuit.success(gen, duration)
                if remember is not None:
                    remember(args, kwargs, result)
                ok_inc(1)
                ok_observe(duration)
                if tracer is not None:
                    tracer.detach(token)
                    span.set_attributes(FIRST_TRY_SUCCESS)
                    span.end()
                return result
            call = g._start(False)
            if tracer is not None:
                call.span = CallSpan(tracer, g, span, token)
            try:
                return _loop(g, fn, args, kwargs, start, call, (first, gen, perf() - start))
            finally:
                pop()
        elif ev.tracer is None and circuit.rejecting():
            if reject_value:
                rejected_inc(1)
                fallback_rejected_inc(1)
                fallback_log("rejected")
                return value
            if reject_raise:
                rejected_inc(1)
                raise CircuitOpenError(
                    f"{g.name} circuit {circuit.name!r} is {circuit.state}", vendor=g.name,
                    operation=g.operation, retry_after=circuit.retry_after())
        start = perf()
        push(None)
        try:
            return _loop(g, fn, args, kwargs, start, g._start(), None)
        finally:
            pop()

    return run_sync


def _loop(g: Pipeline, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
          start: float, call: Call, first: tuple[Exception, int, float] | None) -> Any:
    """Attempts until success, a caller error, or no further attempt; then fallback/raise."""
    token = _deadline.set(call.deadline) if g.timeout.total is not None else None
    try:
        if call.span is None:
            g._begin(call)
        error: Exception
        outcome: str
        while True:
            if first is not None:
                exc, gen, duration = first
                first = None
            else:
                try:
                    result, gen, duration, failed = _attempt(g, fn, args, kwargs, call)
                except Rejected as rejected:
                    error, outcome = rejected.error, "rejected"
                    if call.span is not None:
                        call.span.rejected(error)
                    break
                except Stop:
                    assert call.exc is not None
                    error, outcome = call.exc, g._outcome(call)
                    break
                except VendorTimeoutError as late:  # the deadline was gone before any attempt
                    error, outcome = late, "timeout"
                    break
                if failed is None:
                    g._succeeded(gen, duration, args, kwargs, result)
                    g._end(call, start, "success", call.attempts + 1, None)
                    return result
                exc = failed
            delay = g._failed(call, exc, gen)
            if delay == CALLER_ERROR:
                g._end(call, start, "caller_error", call.attempts, exc)
                raise exc
            if delay is None:
                error, outcome = exc, g._outcome(call)
                break
            if delay > 0:
                time.sleep(delay)
        return _finish(g, call, start, error, outcome, args, kwargs)
    except BaseException as escaped:  # a caller's interrupt or our own raise: end the span
        if call.span is not None:
            call.span.close(None if isinstance(escaped, Exception) else escaped)
            call.span = None
        raise
    finally:
        if call.span is not None:
            call.span.close()
        if token is not None:
            _deadline.reset(token)


def _attempt(g: Pipeline, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             call: Call) -> tuple[Any, int, float, Exception | None]:
    """One attempt: admission, bulkhead, timeout, the call. Returns (result, generation,
    duration, exception or None); raises Rejected / Stop when no attempt was made."""
    bound = g._bound(call)
    gen = g._admit(call)
    circuit = g.circuit
    assert circuit is not None
    slots = g.slots
    if slots is not None and not slots.try_acquire():
        wait = g.max_wait if bound is None else min(g.max_wait, bound)
        try:
            acquired = slots.acquire(wait)
        except BaseException:
            circuit.release(gen)
            raise
        if not acquired:
            raise g._bulkhead_full(call, gen)
        bound = g._rebound(call, gen)
    span = call.span.attempt_start(call.attempts + 1) if call.span and call.attempts else None
    if events.attempt_hook is not None:
        fn = events.attempt_hook(g, fn, False)
    began = perf()
    held = slots is not None
    failed: Exception | None = None
    result: Any = None
    try:
        if bound is None:
            result = fn(*args, **kwargs)
        elif g.timeout_mode == "caller":
            result = run_in_caller_mode(fn, args, kwargs, bound)
        else:
            # An abandoned call keeps its bulkhead slot until it really ends.
            result = g.worker_pool().run(fn, args, kwargs, bound,
                                         slots.release if slots else _nothing)
    except AttemptTimedOut as timed_out:
        held = held and not timed_out.abandoned
        failed = g._timed_out(timed_out)
    except Exception as exc:
        failed = exc
    except BaseException:
        circuit.release(gen)
        if span is not None:
            call.span.attempt_end(span, None)
        raise
    finally:
        if held and slots is not None:
            slots.release()
    if span is not None:
        call.span.attempt_end(span, failed)
    return result, gen, perf() - began, failed


def _finish(g: Pipeline, call: Call, start: float, error: Exception, outcome: str,
            args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Serve the fallback for a failed call, or raise its error (outside any handler, so the
    vendor's exception keeps its own ``__context__``)."""
    served = False
    try:
        value = g._fallback(call, error, outcome, args, kwargs)
        served = True
    except NoFallback:
        pass
    finally:
        g._end(call, start, outcome, call.attempts, error, served)
    if served:
        return value
    raise error


def _nothing() -> None:
    return None
