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

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from . import events
from .async_path import run_async_path
from .breaker import REJECT, Circuit
from .callstate import CALLER_ERROR, Call, Rejected, Stop, fallback_error
from .classify import Classifier, Kind, Verdict, default_classifier
from .errors import BulkheadFullError, CircuitOpenError, VendorTimeoutError
from .events import (
    CallAbandoned,
    CallEnded,
    CallStarted,
    FallbackServed,
    RetryBlocked,
    RetryScheduled,
    emit,
)
from .fallback import MISSING, Failure, FallbackStrategy, NoFallback, compile_fallback
from .policy import Retry, Timeout
from .retry import RetryPlan, TokenBucket, is_testing
from .sync_path import compile_sync
from .telemetry import tracing
from .telemetry.logs import FallbackLog
from .telemetry.metrics import OperationMetrics
from .timeouts import AttemptTimedOut, WorkerPool, _deadline, monotonic

if TYPE_CHECKING:
    from .registry import Vendor

__all__ = ["Guard", "Pipeline", "TimeoutMode", "is_async_callable"]

TimeoutMode = Literal["thread", "caller"]
Run = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
perf = time.perf_counter
_log = logging.getLogger("vendorguard")


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine: async functions and methods, and objects
    whose ``__call__`` is ``async def``."""
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not callable()
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


_REASONS = {kind: kind.value for kind in Kind}
_VERDICTS = {(kind, timeout): Verdict(kind, None, timeout)
             for kind in Kind for timeout in (False, True)}


def _verdict(result: Kind | Verdict, exc: Exception) -> Verdict:
    if isinstance(result, Verdict):
        if not result.timeout and isinstance(exc, TimeoutError):
            return Verdict(result.kind, result.retry_after, True)
        return result
    return _VERDICTS[Kind(result), isinstance(exc, TimeoutError)]


class Guard:
    """One vendor operation, guarded. Build it with :meth:`Vendor.guard` (or ``wrap``/``call``).

    A guard runs calls through its :class:`Pipeline`, compiled from the vendor's policies in
    effect. When a configuration changes them (:func:`vendorguard.reload`), a new pipeline is
    compiled and swapped in between calls; calls in flight finish on the one they started on.
    """

    def __init__(self, vendor: Vendor, operation: str, *, fallback: Any,
                 timeout: Timeout | None, retry: Retry | Any | None,
                 classifier: Classifier | None, idempotent: bool,
                 timeout_mode: TimeoutMode) -> None:
        if not isinstance(operation, str) or not operation:
            raise ValueError(f"operation must be a non-empty string, got {operation!r}")
        if timeout is not None and not isinstance(timeout, Timeout):
            raise TypeError(f"timeout must be a vendorguard.Timeout, got {timeout!r}")
        if retry is not None and retry is not MISSING and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a vendorguard.Retry or None, got {retry!r}")
        if classifier is not None and not callable(classifier):
            raise TypeError(f"classifier must be callable, got {classifier!r}")
        if timeout_mode not in ("thread", "caller"):
            raise ValueError(f"timeout_mode must be 'thread' or 'caller', got {timeout_mode!r}")
        self.vendor = vendor
        self.name = vendor.name
        self.operation = operation
        self.fallback: FallbackStrategy | None = compile_fallback(fallback)
        self.classifier: Classifier = classifier or default_classifier
        self.idempotent = bool(idempotent)
        self.timeout_mode = timeout_mode
        self.own = (timeout, retry)
        """The guard's own policies from code (``None`` / ``MISSING``: the vendor's)."""
        self.pipeline: Pipeline
        self.run_sync: Run
        """Call ``fn(*args, **kwargs)`` through the pipeline."""
        self.run_async: Callable[..., Awaitable[Any]]
        """Await ``fn(*args, **kwargs)`` through the pipeline."""
        vendor.adopt(self)

    def rebuild(self, timeout: Timeout, retry: Retry | None) -> None:
        """Compile a pipeline with these policies and route new calls to it."""
        pipeline = Pipeline(self, timeout, retry)
        self.pipeline = pipeline
        self.run_sync = pipeline.run_sync
        self.run_async = pipeline.run_async

    @property
    def timeout(self) -> Timeout:
        return self.pipeline.timeout

    @property
    def retry(self) -> Retry | None:
        return self.pipeline.retry

    @property
    def circuit(self) -> Circuit | None:
        return self.pipeline.circuit

    @property
    def metrics(self) -> OperationMetrics:
        return self.pipeline.metrics

    def describe(self) -> list[str]:
        """The layers of this guard, outermost first, as they apply to a call."""
        return self.pipeline.describe()

    def without_fallback(self) -> Guard:
        """The same guard with no fallback (for redelivering what a fallback kept)."""
        timeout, retry = self.own
        return Guard(self.vendor, self.operation, fallback=MISSING, timeout=timeout,
                     retry=retry, classifier=self.classifier, idempotent=self.idempotent,
                     timeout_mode=self.timeout_mode)


class Pipeline:
    """A guard's layers compiled for one set of policies; immutable once built."""

    def __init__(self, guard: Guard, timeout: Timeout, retry: Retry | None) -> None:
        vendor = guard.vendor
        operation = guard.operation
        self.guard = guard
        self.vendor = vendor
        self.name = vendor.name
        self.operation = operation
        self.fallback = guard.fallback
        self.timeout = timeout
        self.retry = retry
        self.classifier = guard.classifier
        self.idempotent = guard.idempotent
        self.timeout_mode = guard.timeout_mode
        self.metrics = OperationMetrics(vendor.families, vendor.name, operation)
        vendor.operations.setdefault(operation, self.metrics)
        self.span_name = f"{vendor.name} {operation}"
        self.span_attributes = {"vendorguard.vendor": vendor.name,
                                "vendorguard.operation": operation}
        self.fallback_log = FallbackLog(vendor.name, operation)
        tracing.refresh()
        self.circuit: Circuit | None = vendor.circuit_for(operation)
        self.slots = vendor.slots
        self.max_wait = vendor.bulkhead.max_wait if vendor.bulkhead else 0.0
        self.plan = RetryPlan(retry) if retry is not None and retry.attempts > 1 else None
        self.bucket: TokenBucket | None = (
            vendor.bucket_for(retry.budget) if self.plan and retry and retry.budget else None)
        self.inflight = vendor.inflight
        self._remember = self.fallback is not None and self.fallback.remembers
        self._max_open_hint = retry.max_retry_after if retry is not None else 60.0
        self._pool: WorkerPool | None = None
        self.run_sync: Run = compile_sync(self)

    async def run_async(self, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> Any:
        return await run_async_path(self, fn, args, kwargs)

    def describe(self) -> list[str]:
        """The layers of this guard, outermost first, as they apply to a call."""
        t, r, c = self.timeout, self.retry, self.circuit
        layers = ["observe: metrics + events"]
        layers.append(f"fallback: {type(self.fallback).__name__.lstrip('_')}" if self.fallback
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

    def _start(self, count: bool = True) -> Call:
        if count and self.bucket is not None:
            self.bucket.calls += 1
        end = _deadline.get()
        total = self.timeout.total
        if total is not None:
            own = monotonic() + total
            end = own if end is None or own < end else end
        return Call(end)

    def _bound(self, call: Call) -> float | None:
        """The bound for the next attempt; raises the deadline's timeout when none is left."""
        bound = self.timeout.attempt
        if call.deadline is not None:
            left = call.deadline - monotonic()
            if left <= 0:
                if call.exc is not None:
                    raise Stop
                raise VendorTimeoutError(
                    f"{self.name} {self.operation}: deadline passed before the call",
                    vendor=self.name, operation=self.operation)
            bound = left if bound is None or left < bound else bound
        return bound

    def _admit(self, call: Call) -> int:
        circuit = self.circuit
        if circuit is None:
            return 0
        gen = circuit.admit()
        if gen == REJECT:
            if call.exc is not None:
                raise Stop
            raise Rejected(CircuitOpenError(
                f"{self.name} circuit {circuit.name!r} is {circuit.state}",
                vendor=self.name, operation=self.operation, retry_after=circuit.retry_after()))
        return gen

    def _bulkhead_full(self, call: Call, gen: int) -> Exception:
        if self.circuit is not None:
            self.circuit.release(gen)
        if call.exc is not None:
            return Stop()
        return Rejected(BulkheadFullError(
            f"{self.name}: {self.slots.limit if self.slots else 0} calls already in flight",
            vendor=self.name, operation=self.operation))

    def _rebound(self, call: Call, gen: int) -> float | None:
        """The attempt's bound after waiting for a bulkhead slot, which used part of the
        deadline; gives the slot and any trial slot back when no time is left."""
        try:
            return self._bound(call)
        except BaseException:
            if self.slots is not None:
                self.slots.release()
            if self.circuit is not None:
                self.circuit.release(gen)
            raise

    def _timed_out(self, exc: AttemptTimedOut) -> VendorTimeoutError:
        if exc.abandoned and events.observers:
            emit(CallAbandoned(self.name, self.operation))
        what = "abandoned after" if exc.abandoned else "cancelled at"
        return VendorTimeoutError(f"{self.name} {self.operation}: attempt {what} its timeout",
                                  vendor=self.name, operation=self.operation)

    def _failed(self, call: Call, exc: Exception, gen: int) -> float | None:
        """Record a failed attempt; return the delay before the next one, None to stop, or
        :data:`CALLER_ERROR` (no retry, no breaker, no fallback)."""
        call.attempts += 1
        call.exc = exc
        own = getattr(exc, "vendorguard_verdict", None)
        try:
            verdict = own if isinstance(own, Verdict) else _verdict(self.classifier(exc), exc)
        except Exception as broken:  # a classifier bug must not replace the vendor's failure
            _log.error("vendorguard: %s %s: classifier failed with %s; using the default",
                       self.name, self.operation, type(broken).__name__)
            verdict = _verdict(default_classifier(exc), exc)
        call.verdict = verdict
        circuit = self.circuit
        if verdict.kind is Kind.CALLER_ERROR:
            if circuit is not None:
                circuit.release(gen)
            return CALLER_ERROR
        if circuit is not None:
            retry_after = verdict.retry_after
            if retry_after is not None:  # a vendor's wait keeps the circuit open, within reason
                retry_after = min(retry_after, self._max_open_hint)
            circuit.failure(gen, exc, retry_after)
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
                  "timeout" if verdict.timeout else _REASONS[verdict.kind])
        self.metrics.inc_retry[reason](1)
        if call.span is not None:
            call.span.retry(call.attempts, exc, delay, reason)
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

    def _end(self, call: Call, start: float, outcome: str, attempts: int,
             error: BaseException | None, fallback: bool = False) -> None:
        """Account for a finished call: metrics, health, logs, its span and events."""
        m = self.metrics
        m.inc_call[outcome](1)
        if outcome != "rejected":
            m.observe[outcome](perf() - start)
        if outcome == "error" or outcome == "timeout":  # a rejection is ours, not the vendor's
            self.vendor.last_failure = (time.time(), type(error).__name__, outcome)
        if fallback:
            m.inc_fallback[outcome](1)
            self.fallback_log.hit(outcome)
        if call.span is not None:
            call.span.finish(outcome, attempts, error, fallback)
        if events.observers:
            if fallback:
                emit(FallbackServed(self.name, self.operation, outcome))
            emit(CallEnded(self.name, self.operation, outcome, attempts, perf() - start,
                           None if error is None else type(error).__name__,
                           outcome if fallback else None))

    def _begin(self, call: Call) -> None:
        """Start the call's span and tell observers (only when someone is watching)."""
        tracer = events.tracer
        if tracer is None:
            tracing.refresh()
            tracer = events.tracer
        if tracer is not None:
            call.span = tracer.start(self)
        if events.observers:
            emit(CallStarted(self.name, self.operation))

    def _outcome(self, call: Call) -> str:
        verdict = call.verdict
        return "timeout" if verdict is not None and verdict.timeout else "error"

    def _fallback(self, call: Call, error: Exception, outcome: str, args: tuple[Any, ...],
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
        kind = call.verdict.kind.value if call.verdict is not None and error is call.exc else None
        failure = Failure(error, outcome, self.name, self.operation, args, kwargs, call.attempts,
                          kind)
        try:
            return self.fallback.serve(failure)
        except NoFallback:
            raise
        except Exception as exc:
            raise fallback_error(self, exc) from error

    # -- sync -----------------------------------------------------------------------------------

    def worker_pool(self) -> WorkerPool:
        pool = self._pool
        if pool is None:
            pool = self._pool = self.vendor.worker_pool()
        return pool
