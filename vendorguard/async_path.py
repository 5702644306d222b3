"""The async path of a guard: the retry loop and one attempt, cancelled at its bound."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import events
from .callstate import CALLER_ERROR, Call, Rejected, Stop, fallback_error
from .errors import VendorTimeoutError
from .fallback import NoFallback
from .timeouts import AttemptTimedOut, _attempt_bound, _deadline, run_async

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["run_async_path"]

perf = time.perf_counter


async def run_async_path(g: Pipeline, fn: Callable[..., Any], args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
    """Await ``fn(*args, **kwargs)`` through guard ``g``'s pipeline."""
    start = perf()
    g.inflight.append(None)
    call = g._start()
    token = _deadline.set(call.deadline) if g.timeout.total is not None else None
    try:
        g._begin(call)
        error: Exception
        outcome: str
        while True:
            try:
                result, gen, duration, exc = await _attempt(g, fn, args, kwargs, call)
            except Rejected as rejected:
                error, outcome = rejected.error, "rejected"
                if call.span is not None:
                    call.span.rejected(error)
                break
            except Stop:
                assert call.exc is not None
                error, outcome = call.exc, g._outcome(call)
                break
            except VendorTimeoutError as late:
                error, outcome = late, "timeout"
                break
            if exc is None:
                g._succeeded(gen, duration, args, kwargs, result)
                g._end(call, start, "success", call.attempts + 1, None)
                return result
            delay = g._failed(call, exc, gen)
            if delay == CALLER_ERROR:
                g._end(call, start, "caller_error", call.attempts, exc)
                raise exc
            if delay is None:
                error, outcome = exc, g._outcome(call)
                break
            if delay > 0:
                await asyncio.sleep(delay)
        return await _finish(g, call, start, error, outcome, args, kwargs)
    except BaseException as escaped:  # cancellation or our own raise: end the span
        if call.span is not None:
            call.span.close(None if isinstance(escaped, Exception) else escaped)
            call.span = None
        raise
    finally:
        if call.span is not None:
            call.span.close()
        if token is not None:
            _deadline.reset(token)
        g.inflight.pop()


async def _attempt(g: Pipeline, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any], call: Call,
                   ) -> tuple[Any, int, float, Exception | None]:
    """One attempt: admission, bulkhead (waiting without blocking the loop), a cancelling
    timeout, the call."""
    bound = g._bound(call)
    gen = g._admit(call)
    circuit = g.circuit
    assert circuit is not None
    slots = g.slots
    if slots is not None and not slots.try_acquire():
        wait = g.max_wait if bound is None else min(g.max_wait, bound)
        try:
            acquired = await slots.acquire_async(wait)
        except BaseException:  # cancelled while waiting: give the trial slot back
            circuit.release(gen)
            raise
        if not acquired:
            raise g._bulkhead_full(call, gen)
        bound = g._rebound(call, gen)
    span = call.span.attempt_start(call.attempts + 1) if call.span and call.attempts else None
    if events.attempt_hook is not None:
        fn = events.attempt_hook(g, fn, True)
    began = perf()
    failed: Exception | None = None
    result: Any = None
    bound_token = None if bound is None else _attempt_bound.set(bound)
    try:
        if bound is None:
            result = await fn(*args, **kwargs)
        else:
            result = await run_async(fn, args, kwargs, bound)
    except AttemptTimedOut as timed_out:
        failed = g._timed_out(timed_out)
    except Exception as exc:
        failed = exc
    except BaseException:
        circuit.release(gen)
        if span is not None:
            call.span.attempt_end(span, None)
        raise
    finally:
        if bound_token is not None:
            _attempt_bound.reset(bound_token)
        if slots is not None:
            slots.release()
    if span is not None:
        call.span.attempt_end(span, failed)
    return result, gen, perf() - began, failed


async def _finish(g: Pipeline, call: Call, start: float, error: Exception, outcome: str,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Serve the fallback (awaiting it if it is async), or raise the call's error."""
    served = False
    try:
        value = g._fallback(call, error, outcome, args, kwargs)
        if inspect.isawaitable(value):
            try:
                value = await value
            except Exception as exc:
                raise fallback_error(g, exc) from error
        served = True
    except NoFallback:
        pass
    finally:
        g._end(call, start, outcome, call.attempts, error, served)
    if served:
        return value
    raise error
