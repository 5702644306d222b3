"""Guard: the compiled pipeline for one (vendor, operation), with sync and async paths.

Outermost first::

    observe (metrics, events: the whole logical call)
      fallback
        total deadline (Timeout.total and the enclosing vg.deadline)
          retry (classification, backoff, Retry-After, retry budget)
            breaker admission        <- rejected here: outcome "rejected", no vendor call
              bulkhead               <- rejected here: outcome "rejected"
                attempt timeout
                  the vendor call

Everything is resolved when the guard is built. The first attempt runs inline; retry state is
created only after a failure, and no lock is held around the vendor call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from . import events
from .breaker import CLOSED, REJECT, Circuit
from .classify import Classifier, Kind, Verdict, default_classifier
from .errors import BulkheadFullError, CircuitOpenError, FallbackError, VendorTimeoutError
from .events import (
    CallAbandoned,
    CallEnded,
    CallStarted,
    FallbackServed,
    RetryBlocked,
    RetryScheduled,
    emit,
)
from .fallback import Failure, FallbackStrategy, NoFallback, _Value, compile_fallback
from .policy import Retry, Timeout
from .retry import RetryPlan, TokenBucket, is_testing
from .telemetry.metrics import OperationMetrics, fast_inc
from .timeouts import (
    AttemptTimedOut,
    WorkerPool,
    _deadline,
    monotonic,
    run_async,
    run_in_caller_mode,
)

if TYPE_CHECKING:
    from .registry import Vendor

__all__ = ["Guard", "TimeoutMode"]

TimeoutMode = Literal["thread", "caller"]
perf = time.perf_counter
_log = logging.getLogger("vendorguard")


class _Rejected(Exception):
    """Internal: breaker or bulkhead refused an attempt."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


class _Call:
    """Per-call state, created only once a call needs more than its first attempt."""

    __slots__ = ("attempts", "deadline", "exc", "retry_state", "verdict")

    def __init__(self, deadline: float | None) -> None:
        self.attempts = 0
        self.deadline = deadline
        self.exc: Exception | None = None
        self.verdict: Verdict | None = None
        self.retry_state: Any = None


def _verdict(result: Kind | Verdict, exc: Exception) -> Verdict:
    if isinstance(result, Verdict):
        if not result.timeout and isinstance(exc, TimeoutError):
            return Verdict(result.kind, result.retry_after, True)
        return result
    return Verdict(Kind(result), None, isinstance(exc, TimeoutError))


class Guard:
    """One vendor operation's compiled pipeline. Build it with :meth:`Vendor.guard`."""

    def __init__(self, vendor: Vendor, operation: str, *, fallback: Any, timeout: Timeout,
                 retry: Retry | None, classifier: Classifier | None, idempotent: bool,
                 timeout_mode: TimeoutMode) -> None:
        if not isinstance(operation, str) or not operation:
            raise ValueError(f"operation must be a non-empty string, got {operation!r}")
        if not isinstance(timeout, Timeout):
            raise TypeError(f"timeout must be a vendorguard.Timeout, got {timeout!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a vendorguard.Retry or None, got {retry!r}")
        if classifier is not None and not callable(classifier):
            raise TypeError(f"classifier must be callable, got {classifier!r}")
        if timeout_mode not in ("thread", "caller"):
            raise ValueError(f"timeout_mode must be 'thread' or 'caller', got {timeout_mode!r}")
        self.vendor = vendor
        self.name = vendor.name
        self.operation = operation
        self.fallback: FallbackStrategy | None = compile_fallback(fallback)
        self.timeout = timeout
        self.retry = retry
        self.classifier: Classifier = classifier or default_classifier
        self.idempotent = bool(idempotent)
        self.timeout_mode = timeout_mode
        self.metrics = OperationMetrics(vendor.families, vendor.name, operation)
        self.circuit: Circuit | None = vendor.circuit_for(operation)
        self.slots = vendor.slots
        self.max_wait = vendor.bulkhead.max_wait if vendor.bulkhead else 0.0
        self.plan = RetryPlan(retry) if retry is not None and retry.attempts > 1 else None
        self.bucket: TokenBucket | None = (
            vendor.bucket_for(retry.budget) if self.plan and retry and retry.budget else None)
        self.inflight = vendor.inflight
        self._remember = self.fallback is not None and self.fallback.remembers
        self._pool: WorkerPool | None = None
        self.run_sync = self._compile_sync()

    def describe(self) -> list[str]:
        """The layers of this guard, outermost first, as they apply to a call."""
        t, r, c = self.timeout, self.retry, self.circuit
        layers = ["observe: metrics + events"]
        layers.append(f"fallback: {type(self.fallback).__name__}" if self.fallback
                      else "fallback: none (failures are raised)")
        layers.append(f"total deadline: {t.total}s and any enclosing vg.deadline"
                      if t.total else "total deadline: enclosing vg.deadline only")
        layers.append(f"retry: {r.attempts} attempts, budget {r.budget}" if self.plan and r
                      else "retry: none")
        layers.append(f"breaker: {c.name} ({c.policy})" if c else "breaker: none")
        layers.append(f"bulkhead: {self.slots.limit} concurrent" if self.slots
                      else "bulkhead: none")
        layers.append(f"attempt timeout: {t.attempt}s ({self.timeout_mode})" if t.attempt
                      else "attempt timeout: none")
        layers.append("the vendor call")
        return layers

    # -- shared decision logic ----------------------------------------------------------------

    def _start(self, count: bool = True) -> _Call:
        if count and self.bucket is not None:
            self.bucket.calls += 1
        end = _deadline.get()
        total = self.timeout.total
        if total is not None:
            own = monotonic() + total
            end = own if end is None or own < end else end
        return _Call(end)

    def _bound(self, call: _Call) -> float | None:
        """The bound for the next attempt; raises the deadline's timeout when none is left."""
        bound = self.timeout.attempt
        if call.deadline is not None:
            left = call.deadline - monotonic()
            if left <= 0:
                if call.exc is not None:
                    raise _Stop
                raise VendorTimeoutError(
                    f"{self.name} {self.operation}: deadline passed before the call",
                    vendor=self.name, operation=self.operation)
            bound = left if bound is None or left < bound else bound
        return bound

    def _admit(self, call: _Call) -> int:
        circuit = self.circuit
        if circuit is None:
            return 0
        gen = circuit.admit()
        if gen == REJECT:
            if call.exc is not None:
                raise _Stop
            raise _Rejected(CircuitOpenError(
                f"{self.name} circuit {circuit.name!r} is {circuit.state}",
                vendor=self.name, operation=self.operation, retry_after=circuit.retry_after()))
        return gen

    def _bulkhead_full(self, call: _Call, gen: int) -> Exception:
        if self.circuit is not None:
            self.circuit.release(gen)
        if call.exc is not None:
            return _Stop()
        return _Rejected(BulkheadFullError(
            f"{self.name}: {self.slots.limit if self.slots else 0} calls already in flight",
            vendor=self.name, operation=self.operation))

    def _timed_out(self, exc: AttemptTimedOut) -> VendorTimeoutError:
        if exc.abandoned and events.observers:
            emit(CallAbandoned(self.name, self.operation))
        what = "abandoned after" if exc.abandoned else "cancelled at"
        return VendorTimeoutError(f"{self.name} {self.operation}: attempt {what} its timeout",
                                  vendor=self.name, operation=self.operation)

    def _failed(self, call: _Call, exc: Exception, gen: int) -> float | None:
        """Record a failed attempt; return the delay before the next one, None to stop, or
        :data:`_CALLER_ERROR` (no retry, no breaker, no fallback)."""
        call.attempts += 1
        call.exc = exc
        try:
            verdict = _verdict(self.classifier(exc), exc)
        except Exception as broken:  # a classifier bug must not replace the vendor's failure
            _log.error("vendorguard: %s %s: classifier failed with %s; using the default",
                       self.name, self.operation, type(broken).__name__)
            verdict = _verdict(default_classifier(exc), exc)
        call.verdict = verdict
        circuit = self.circuit
        if verdict.kind is Kind.CALLER_ERROR:
            if circuit is not None:
                circuit.release(gen)
            return _CALLER_ERROR
        if circuit is not None:
            circuit.failure(gen, exc, verdict.retry_after)
        plan = self.plan
        if plan is None or verdict.kind is Kind.FATAL or (
                verdict.kind is Kind.AMBIGUOUS and not self.idempotent):
            return None
        if plan.on is not None and not isinstance(exc, plan.on):
            return None
        if call.retry_state is None:
            call.retry_state = plan.new_state(self._failed, (), {})
        delay = plan.delay(call.retry_state, call.attempts, exc, verdict.retry_after)
        if delay is None:
            return None
        if call.deadline is not None and monotonic() + delay >= call.deadline:
            return None
        if self.bucket is not None and not self.bucket.try_spend():
            self.metrics.retries_blocked.inc()
            if events.observers:
                emit(RetryBlocked(self.name, self.operation))
            return None
        reason = ("rate_limited" if verdict.retry_after is not None else
                  "timeout" if verdict.timeout else verdict.kind.value)
        self.metrics.retries[reason].inc()
        if events.observers:
            emit(RetryScheduled(self.name, self.operation, call.attempts, reason, delay,
                                type(exc).__name__))
        return 0.0 if is_testing() else delay

    def _succeeded(self, gen: int, duration: float, args: tuple[Any, ...],
                   kwargs: dict[str, Any], result: Any) -> None:
        if self.circuit is not None:
            self.circuit.success(gen, duration)
        if self._remember and self.fallback is not None:
            self.fallback.remember(args, kwargs, result)

    def _end(self, start: float, outcome: str, attempts: int, error: BaseException | None,
             fallback: bool = False) -> None:
        m = self.metrics
        m.inc_call[outcome](1)
        if outcome != "rejected":
            m.observe[outcome](perf() - start)
        if fallback:
            m.fallbacks[outcome].inc()
        if events.observers:
            if fallback:
                emit(FallbackServed(self.name, self.operation, outcome))
            emit(CallEnded(self.name, self.operation, outcome, attempts, perf() - start,
                           None if error is None else type(error).__name__,
                           outcome if fallback else None))

    def _outcome(self, call: _Call) -> str:
        verdict = call.verdict
        return "timeout" if verdict is not None and verdict.timeout else "error"

    def _fallback(self, call: _Call, error: Exception, outcome: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
        """The fallback's answer to a failed call; raises NoFallback when there is none and
        FallbackError when the fallback itself fails."""
        if call.attempts > 1 and error is call.exc and hasattr(error, "add_note"):
            note = (f"vendorguard: {self.name} {self.operation} failed after "
                    f"{call.attempts} attempts")
            if note not in getattr(error, "__notes__", ()):
                error.add_note(note)
        if self.fallback is None:
            raise NoFallback
        failure = Failure(error, outcome, self.name, self.operation, args, kwargs, call.attempts)
        try:
            return self.fallback.serve(failure)
        except NoFallback:
            raise
        except Exception as exc:
            raise _fallback_error(self, exc, error) from error

    # -- sync -----------------------------------------------------------------------------------

    def _compile_sync(self) -> Callable[[Callable[..., Any], tuple[Any, ...],
                                         dict[str, Any]], Any]:
        """Build ``run_sync``: a closure with everything pre-bound.

        While the circuit is closed and nothing but breaker and metrics touches a success, the
        first attempt runs inline: no admission call, no per-call state, no label lookup, no
        lock. An open circuit answered by a fallback value raises nothing.
        """
        circuit = self.circuit
        assert circuit is not None
        loop, start_call = self._sync_loop, self._start
        push, pop = self.inflight.append, self.inflight.pop
        m = self.metrics
        ok_inc, ok_observe = m.inc_call["success"], m.observe["success"]
        rejected_inc = m.inc_call["rejected"]
        fallback_rejected_inc = fast_inc(m.fallbacks["rejected"])
        fallback = self.fallback
        reject_value = isinstance(fallback, _Value)
        value = fallback.value if isinstance(fallback, _Value) else None
        remember = fallback.remember if fallback is not None and fallback.remembers else None
        bucket = self.bucket
        inline = not self.timeout.bounded and self.slots is None
        get_deadline = _deadline.get
        ev = events

        def run_sync(fn: Callable[..., Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
            if ev.observers or get_deadline() is not None:
                pass
            elif circuit.state is CLOSED and inline:
                gen = circuit.gen
                if bucket is not None:
                    bucket.calls += 1
                push(None)
                start = perf()
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    first: Exception = exc
                except BaseException:
                    pop()
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
                    return result
                try:
                    return loop(fn, args, kwargs, start, start_call(False),
                                (first, gen, perf() - start))
                finally:
                    pop()
            elif reject_value and circuit.rejecting():
                rejected_inc(1)
                fallback_rejected_inc(1)
                return value
            start = perf()
            push(None)
            try:
                return loop(fn, args, kwargs, start, start_call(), None)
            finally:
                pop()

        return run_sync

    def _sync_loop(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   start: float, call: _Call, first: tuple[Exception, int, float] | None) -> Any:
        if events.observers:
            emit(CallStarted(self.name, self.operation))
        token = _deadline.set(call.deadline) if self.timeout.total is not None else None
        try:
            error: Exception
            outcome: str
            while True:
                if first is not None:
                    exc, gen, duration = first
                    first = None
                else:
                    try:
                        result, gen, duration, exc_or_none = self._sync_attempt(
                            fn, args, kwargs, call)
                    except _Rejected as rejected:
                        error, outcome = rejected.error, "rejected"
                        break
                    except _Stop:
                        assert call.exc is not None
                        error, outcome = call.exc, self._outcome(call)
                        break
                    except VendorTimeoutError as late:  # deadline gone before any attempt
                        error, outcome = late, "timeout"
                        break
                    if exc_or_none is None:
                        self._succeeded(gen, duration, args, kwargs, result)
                        self._end(start, "success", call.attempts + 1, None)
                        return result
                    exc = exc_or_none
                delay = self._failed(call, exc, gen)
                if delay == _CALLER_ERROR:
                    self._end(start, "caller_error", call.attempts, exc)
                    raise exc
                if delay is None:
                    error, outcome = exc, self._outcome(call)
                    break
                if delay > 0:
                    time.sleep(delay)
            return self._sync_finish(call, start, error, outcome, args, kwargs)
        finally:
            if token is not None:
                _deadline.reset(token)

    def _sync_attempt(self, fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any], call: _Call,
                      ) -> tuple[Any, int, float, Exception | None]:
        bound = self._bound(call)
        gen = self._admit(call)
        slots = self.slots
        if slots is not None and not slots.try_acquire():
            wait = self.max_wait if bound is None else min(self.max_wait, bound)
            if not slots.acquire(wait):
                raise self._bulkhead_full(call, gen)
        began = perf()
        held = slots is not None
        try:
            if bound is None:
                result = fn(*args, **kwargs)
            elif self.timeout_mode == "caller":
                result = run_in_caller_mode(fn, args, kwargs, bound)
            else:
                result = self._worker_pool().run(
                    fn, args, kwargs, bound, slots.release if slots else _nothing)
            return result, gen, perf() - began, None
        except AttemptTimedOut as timed_out:
            held = held and not timed_out.abandoned
            return None, gen, perf() - began, self._timed_out(timed_out)
        except Exception as exc:
            return None, gen, perf() - began, exc
        except BaseException:
            if self.circuit is not None:
                self.circuit.release(gen)
            raise
        finally:
            if held and slots is not None:
                slots.release()

    def _worker_pool(self) -> WorkerPool:
        pool = self._pool
        if pool is None:
            pool = self._pool = self.vendor.worker_pool()
        return pool

    def _sync_finish(self, call: _Call, start: float, error: Exception, outcome: str,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        served = False
        try:
            value = self._fallback(call, error, outcome, args, kwargs)
            served = True
        except NoFallback:
            pass
        finally:
            self._end(start, outcome, call.attempts, error, served)
        if served:
            return value
        raise error

    # -- async ----------------------------------------------------------------------------------

    async def run_async(self, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
        """Await ``fn(*args, **kwargs)`` through the pipeline."""
        start = perf()
        self.inflight.append(None)
        call = self._start()
        if events.observers:
            emit(CallStarted(self.name, self.operation))
        token = _deadline.set(call.deadline) if self.timeout.total is not None else None
        try:
            error: Exception
            outcome: str
            while True:
                try:
                    result, gen, duration, exc = await self._async_attempt(fn, args, kwargs, call)
                except _Rejected as rejected:
                    error, outcome = rejected.error, "rejected"
                    break
                except _Stop:
                    assert call.exc is not None
                    error, outcome = call.exc, self._outcome(call)
                    break
                except VendorTimeoutError as late:
                    error, outcome = late, "timeout"
                    break
                if exc is None:
                    self._succeeded(gen, duration, args, kwargs, result)
                    self._end(start, "success", call.attempts + 1, None)
                    return result
                delay = self._failed(call, exc, gen)
                if delay == _CALLER_ERROR:
                    self._end(start, "caller_error", call.attempts, exc)
                    raise exc
                if delay is None:
                    error, outcome = exc, self._outcome(call)
                    break
                if delay > 0:
                    await asyncio.sleep(delay)
            return await self._async_finish(call, start, error, outcome, args, kwargs)
        finally:
            if token is not None:
                _deadline.reset(token)
            self.inflight.pop()

    async def _async_attempt(self, fn: Callable[..., Any], args: tuple[Any, ...],
                             kwargs: dict[str, Any], call: _Call,
                             ) -> tuple[Any, int, float, Exception | None]:
        bound = self._bound(call)
        gen = self._admit(call)
        slots = self.slots
        if slots is not None and not slots.try_acquire():
            wait = self.max_wait if bound is None else min(self.max_wait, bound)
            if not await slots.acquire_async(wait):
                raise self._bulkhead_full(call, gen)
        began = perf()
        try:
            if bound is None:
                result = await fn(*args, **kwargs)
            else:
                result = await run_async(fn, args, kwargs, bound)
            return result, gen, perf() - began, None
        except AttemptTimedOut as timed_out:
            return None, gen, perf() - began, self._timed_out(timed_out)
        except Exception as exc:
            return None, gen, perf() - began, exc
        except BaseException:
            if self.circuit is not None:
                self.circuit.release(gen)
            raise
        finally:
            if slots is not None:
                slots.release()

    async def _async_finish(self, call: _Call, start: float, error: Exception,
                            outcome: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        served = False
        try:
            value = self._fallback(call, error, outcome, args, kwargs)
            if inspect.isawaitable(value):
                try:
                    value = await value
                except Exception as exc:
                    raise _fallback_error(self, exc, error) from error
            served = True
        except NoFallback:
            pass
        finally:
            self._end(start, outcome, call.attempts, error, served)
        if served:
            return value
        raise error


class _Stop(Exception):
    """Internal: no further attempt is possible; the last attempt's failure ends the call."""


_CALLER_ERROR = -1.0


def _fallback_error(guard: Guard, exc: Exception, error: Exception) -> FallbackError:
    return FallbackError(
        f"{guard.name} {guard.operation}: fallback raised {type(exc).__name__}",
        vendor=guard.name, operation=guard.operation)


def _nothing() -> None:
    return None
