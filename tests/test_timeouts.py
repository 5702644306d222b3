"""Timeouts: attempt bounds on worker threads and asyncio, deadlines, abandonment, cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample, wait_until
from vendorguard.timeouts import attempt_timeout, remaining

OUTCOMES = ("success", "caller_error", "error", "timeout", "rejected")
NO_WAIT = vg.Backoff(initial=0, maximum=0)
MARGIN = 1.0  # generous slack over a time bound, for slow CI machines


class VendorDown(Exception):
    """A vendor failure the default classifier calls transient."""


class Hang:
    """A fake vendor call that blocks until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.started += 1
        self.release.wait(10)
        return "late"


@pytest.fixture
def hang() -> Iterator[Hang]:
    fn = Hang()
    yield fn
    fn.release.set()




def calls(metrics: CollectorRegistry, outcome: str, vendor: str = "v",
          operation: str = "op") -> float:
    return sample(metrics, "vendorguard_calls_total", vendor=vendor, operation=operation,
                  outcome=outcome)


def all_calls(metrics: CollectorRegistry, vendor: str = "v", operation: str = "op") -> float:
    return sum(calls(metrics, o, vendor, operation) for o in OUTCOMES)


def bounded(metrics: CollectorRegistry, attempt: float = 0.2, **kwargs: Any) -> vg.Vendor:
    """A vendor whose attempts are bounded, without retries."""
    kwargs.setdefault("retry", None)
    return vg.Vendor("v", timeout=vg.Timeout(attempt=attempt), registry=metrics, **kwargs)


# -- sync generic callables -------------------------------------------------------------------


def test_hung_call_times_out_within_bound(metrics: CollectorRegistry, hang: Hang) -> None:
    """A hung sync call raises VendorTimeoutError (a TimeoutError) near its bound."""
    guarded = bounded(metrics).guard("op")(hang)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        guarded()
    assert time.monotonic() - started < 0.2 + MARGIN
    assert isinstance(info.value, vg.VendorTimeoutError)
    assert (info.value.vendor, info.value.operation) == ("v", "op")


def test_hung_call_outcome_timeout(metrics: CollectorRegistry, hang: Hang) -> None:
    """A timed-out call is counted with outcome timeout."""
    with pytest.raises(vg.VendorTimeoutError):
        bounded(metrics).guard("op")(hang)()
    assert (calls(metrics, "timeout"), all_calls(metrics)) == (1, 1)


def test_hung_call_served_by_fallback(metrics: CollectorRegistry, hang: Hang) -> None:
    """A timed-out call is answered by the fallback, counted under reason timeout."""
    assert bounded(metrics).guard("op", fallback="cached")(hang)() == "cached"
    assert calls(metrics, "timeout") == 1
    assert sample(metrics, "vendorguard_fallbacks_total", vendor="v", operation="op",
                  reason="timeout") == 1


def test_abandoned_call_counted(metrics: CollectorRegistry, hang: Hang) -> None:
    """A call abandoned at its bound is counted in vendor.abandoned and the gauge."""
    vendor = bounded(metrics)
    with pytest.raises(vg.VendorTimeoutError):
        vendor.guard("op")(hang)()
    assert vendor.abandoned == 1
    assert sample(metrics, "vendorguard_abandoned_calls", vendor="v") == 1


def test_abandoned_count_drops_when_call_ends(metrics: CollectorRegistry, hang: Hang) -> None:
    """Once the abandoned call really ends, vendor.abandoned and the gauge are back to 0."""
    vendor = bounded(metrics)
    with pytest.raises(vg.VendorTimeoutError):
        vendor.guard("op")(hang)()
    hang.release.set()
    assert wait_until(lambda: vendor.abandoned == 0)
    assert wait_until(lambda: sample(metrics, "vendorguard_abandoned_calls", vendor="v") == 0)


def test_hung_vendor_limited_to_bulkhead_threads(metrics: CollectorRegistry,
                                                 hang: Hang) -> None:
    """Hung calls keep their bulkhead slots: a third call is rejected, no third thread."""
    vendor = bounded(metrics, bulkhead=vg.Bulkhead(max_concurrent=2))
    guarded = vendor.guard("op")(hang)
    for _ in range(2):
        with pytest.raises(vg.VendorTimeoutError):
            guarded()
    with pytest.raises(vg.BulkheadFullError):
        guarded()
    assert hang.started == 2
    assert vendor.worker_pool().workers <= 2
    assert calls(metrics, "rejected") == 1


def test_abandoned_call_frees_slot_when_it_ends(metrics: CollectorRegistry,
                                                hang: Hang) -> None:
    """The bulkhead slot of an abandoned call is freed once the call really ends."""
    vendor = bounded(metrics, bulkhead=vg.Bulkhead(max_concurrent=1))
    with pytest.raises(vg.VendorTimeoutError):
        vendor.guard("op")(hang)()
    hang.release.set()
    assert wait_until(lambda: vendor.abandoned == 0)
    assert vendor.guard("op")(lambda: "ok")() == "ok"


def test_contextvars_propagate_to_worker(metrics: CollectorRegistry) -> None:
    """The caller's context variables are visible in the worker thread."""
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")
    caller = threading.current_thread()

    def read() -> tuple[str, bool]:
        return tenant.get(), threading.current_thread() is caller

    tenant.set("acme")
    assert bounded(metrics, attempt=5.0).guard("op")(read)() == ("acme", False)


def test_worker_exception_raised_to_caller(metrics: CollectorRegistry) -> None:
    """A vendor exception raised on the worker thread reaches the caller unchanged."""
    error = VendorDown("down")

    def fail() -> None:
        raise error

    with pytest.raises(VendorDown) as info:
        bounded(metrics, attempt=5.0).guard("op")(fail)()
    assert info.value is error


# -- deadlines --------------------------------------------------------------------------------


def test_deadline_bounds_nested_guarded_calls(metrics: CollectorRegistry) -> None:
    """vg.deadline bounds an outer guarded call and the guarded calls inside it."""
    inner = vg.Vendor("inner", retry=None, registry=metrics)
    outer = vg.Vendor("outer", retry=None, registry=metrics)

    @inner.guard("op")
    def lookup() -> str:
        time.sleep(0.1)
        return "ok"

    @outer.guard("op")
    def workflow() -> None:
        for _ in range(20):  # 2 s unbounded
            lookup()

    started = time.monotonic()
    with vg.deadline(0.5), pytest.raises(vg.VendorTimeoutError):
        workflow()
    assert time.monotonic() - started < 0.5 + MARGIN


def test_deadline_bounds_retries(metrics: CollectorRegistry) -> None:
    """Retries inside vg.deadline stop when the deadline is reached."""
    calls_made = []

    def fail() -> None:
        calls_made.append(None)
        time.sleep(0.05)
        raise VendorDown("down")

    vendor = vg.Vendor("v", retry=vg.Retry(attempts=1000, backoff=NO_WAIT, budget=None),
                       breaker=None, registry=metrics)
    started = time.monotonic()
    with vg.deadline(0.3), pytest.raises((VendorDown, vg.VendorTimeoutError)):
        vendor.guard("op")(fail)()
    assert time.monotonic() - started < 0.3 + MARGIN
    assert 1 < len(calls_made) < 1000


def test_total_timeout_bounds_retries(metrics: CollectorRegistry) -> None:
    """Timeout(total=...) bounds the whole call, retries included."""
    calls_made = []

    def fail() -> None:
        calls_made.append(None)
        time.sleep(0.05)
        raise VendorDown("down")

    vendor = vg.Vendor("v", timeout=vg.Timeout(total=0.3),
                       retry=vg.Retry(attempts=1000, backoff=NO_WAIT, budget=None),
                       breaker=None, registry=metrics)
    started = time.monotonic()
    with pytest.raises((VendorDown, vg.VendorTimeoutError)):
        vendor.guard("op")(fail)()
    assert time.monotonic() - started < 0.3 + MARGIN
    assert 1 < len(calls_made) < 1000


def test_total_timeout_stops_retry_delay_past_it(metrics: CollectorRegistry) -> None:
    """A backoff that would end after Timeout.total ends the call at once instead."""
    calls_made = []

    def fail() -> None:
        calls_made.append(None)
        raise VendorDown("down")

    wait = vg.Backoff(initial=5.0, maximum=5.0, jitter=False)
    vendor = vg.Vendor("v", timeout=vg.Timeout(total=0.5),
                       retry=vg.Retry(attempts=3, backoff=wait, budget=None),
                       breaker=None, registry=metrics)
    started = time.monotonic()
    with pytest.raises(VendorDown):
        vendor.guard("op")(fail)()
    assert time.monotonic() - started < 0.5
    assert len(calls_made) == 1


def test_bulkhead_wait_counts_against_deadline(metrics: CollectorRegistry) -> None:
    """Time spent waiting for a bulkhead slot is taken from the attempt's bound."""
    vendor = vg.Vendor("v", retry=None, bulkhead=vg.Bulkhead(max_concurrent=1, max_wait=5.0),
                       registry=metrics)

    @vendor.guard("op", timeout_mode="caller")
    def call(hold: bool) -> tuple[float | None, float | None]:
        if hold:
            time.sleep(0.2)
        return attempt_timeout(), remaining()

    holder = threading.Thread(target=call, args=(True,))
    holder.start()
    assert wait_until(lambda: vendor.in_flight == 1)
    with vg.deadline(0.5):
        bound, left = call(False)
    holder.join(5)
    assert bound is not None
    assert left is not None
    assert bound <= left + 0.01


def test_async_bulkhead_wait_counts_against_deadline(metrics: CollectorRegistry) -> None:
    """Async: a call that waited for a slot still ends by the enclosing deadline."""
    vendor = vg.Vendor("v", retry=None, bulkhead=vg.Bulkhead(max_concurrent=1, max_wait=5.0),
                       registry=metrics)

    @vendor.guard("op")
    async def call(seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def main() -> float:
        holder = asyncio.create_task(call(0.2))
        while not vendor.in_flight:
            await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(vg.VendorTimeoutError):
            async with vg.deadline(0.3):
                await call(5.0)
        await holder
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.3 + 0.12  # waited 0.2 s, then at most what was left


def _spin_past(d: vg.deadline) -> None:
    """Busy-wait (well under a millisecond) until the deadline has passed."""
    while d.remaining is not None and d.remaining > 0:
        pass


def test_passed_deadline_skips_vendor(metrics: CollectorRegistry) -> None:
    """A call started after the deadline fails with VendorTimeoutError, vendor not called."""
    called = []
    guarded = vg.Vendor("v", registry=metrics).guard("op")(lambda: called.append(None))
    with vg.deadline(0.001) as d:
        _spin_past(d)
        with pytest.raises(vg.VendorTimeoutError):
            guarded()
    assert called == []
    assert (calls(metrics, "timeout"), all_calls(metrics)) == (1, 1)


def test_passed_deadline_skips_async_vendor(metrics: CollectorRegistry) -> None:
    """Async: a call started after the deadline fails at once, vendor not called."""
    called = []

    async def fn() -> None:
        called.append(None)

    guarded = vg.Vendor("v", registry=metrics).guard("op")(fn)

    async def main() -> None:
        async with vg.deadline(0.001) as d:
            _spin_past(d)
            await guarded()

    with pytest.raises(vg.VendorTimeoutError):
        asyncio.run(main())
    assert called == []
    assert calls(metrics, "timeout") == 1


@pytest.mark.parametrize(("outer", "inner"), [(10.0, 0.2), (0.2, 10.0)],
                         ids=["inner-shorter", "inner-longer"])
def test_nested_deadline_only_shortens(outer: float, inner: float) -> None:
    """A nested deadline never extends the enclosing one."""
    with vg.deadline(outer), vg.deadline(inner) as d:
        assert d.remaining is not None
        assert d.remaining <= 0.2


def test_nested_deadline_restores_outer() -> None:
    """Leaving a nested deadline restores the outer one."""
    with vg.deadline(10.0) as outer:
        with vg.deadline(0.2):
            pass
        assert outer.remaining is not None
        assert outer.remaining > 5.0
    assert outer.remaining is None


def test_longer_nested_deadline_does_not_extend_guard(metrics: CollectorRegistry,
                                                      hang: Hang) -> None:
    """A guard inside a longer nested deadline is still bounded by the outer one."""
    guarded = vg.Vendor("v", retry=None, registry=metrics).guard("op")(hang)
    started = time.monotonic()
    with vg.deadline(0.2), vg.deadline(30.0), pytest.raises(vg.VendorTimeoutError):
        guarded()
    assert time.monotonic() - started < 0.2 + MARGIN


# -- caller mode ------------------------------------------------------------------------------


def test_caller_mode_runs_on_caller_thread(metrics: CollectorRegistry) -> None:
    """timeout_mode="caller" runs the callable on the caller's thread, no worker."""
    caller = threading.current_thread()
    guarded = bounded(metrics).guard("op", timeout_mode="caller")(
        lambda: threading.current_thread() is caller)
    assert guarded() is True


def test_caller_mode_exposes_attempt_timeout(metrics: CollectorRegistry) -> None:
    """Inside a caller-mode call attempt_timeout() gives the attempt's bound."""
    guarded = bounded(metrics, attempt=0.2).guard("op", timeout_mode="caller")(attempt_timeout)
    assert guarded() == pytest.approx(0.2)
    assert attempt_timeout() is None


def test_caller_mode_bound_shortened_by_deadline(metrics: CollectorRegistry) -> None:
    """In caller mode the bound is the remaining deadline when that is shorter."""
    guarded = bounded(metrics, attempt=5.0).guard("op", timeout_mode="caller")(attempt_timeout)
    with vg.deadline(0.5):
        bound = guarded()
    assert bound is not None
    assert 0 < bound <= 0.5


# -- async ------------------------------------------------------------------------------------


def test_async_timeout_cancels_coroutine(metrics: CollectorRegistry) -> None:
    """An async attempt past its bound is really cancelled and raises VendorTimeoutError."""
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    guarded = bounded(metrics, attempt=0.1).guard("op")(slow)
    started = time.monotonic()
    with pytest.raises(vg.VendorTimeoutError):
        asyncio.run(guarded())
    assert time.monotonic() - started < 0.1 + MARGIN
    assert cancelled == [True]
    assert calls(metrics, "timeout") == 1


def _cancel_from_outside(metrics: CollectorRegistry, timeout: vg.Timeout | None) -> None:
    """Cancel a guarded async call from outside while the vendor call hangs."""
    started = []

    async def hang() -> None:
        started.append(None)
        await asyncio.Event().wait()

    vendor = vg.Vendor("v", timeout=timeout, breaker=vg.Breaker(failures=1),
                       registry=metrics)
    guarded = vendor.guard("op")(hang)

    async def main() -> None:
        task = asyncio.create_task(guarded())
        while not started:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


TIMEOUTS = pytest.mark.parametrize("timeout", [None, vg.Timeout(attempt=5.0)],
                                   ids=["unbounded", "bounded"])


@TIMEOUTS
def test_outside_cancellation_propagates_uncounted(metrics: CollectorRegistry,
                                                   timeout: vg.Timeout | None) -> None:
    """An outside CancelledError propagates and counts no outcome at all."""
    _cancel_from_outside(metrics, timeout)
    assert all_calls(metrics) == 0
    assert sample(metrics, "vendorguard_calls_in_flight", vendor="v") == 0


@TIMEOUTS
def test_outside_cancellation_not_a_breaker_failure(metrics: CollectorRegistry,
                                                    timeout: vg.Timeout | None) -> None:
    """An outside cancellation does not count against the breaker."""
    _cancel_from_outside(metrics, timeout)
    assert vg.vendor("v").guard("op")(lambda: "ok")() == "ok"
    assert sample(metrics, "vendorguard_circuit_state", vendor="v", circuit="v",
                  state="closed") == 1


def test_cancelled_bulkhead_wait_releases_trial(metrics: CollectorRegistry) -> None:
    """A half-open trial cancelled while waiting for the bulkhead frees its trial slot."""
    vendor = vg.Vendor("v", retry=None, registry=metrics,
                       breaker=vg.Breaker(failures=1, reset_after=0.05, scope="operation"),
                       bulkhead=vg.Bulkhead(max_concurrent=1, max_wait=5.0))

    async def fail() -> None:
        raise VendorDown("down")

    async def ok() -> str:
        return "ok"

    async def main() -> str:
        with pytest.raises(VendorDown):
            await vendor.guard("op")(fail)()
        circuit = vendor.circuits()["op"]
        end = time.monotonic() + 5
        while circuit.retry_after() > 0 and time.monotonic() < end:
            await asyncio.sleep(0.005)  # until reset_after has passed
        release = asyncio.Event()

        async def hold() -> None:
            await release.wait()

        holder = asyncio.create_task(vendor.guard("hold")(hold)())
        while not vendor.in_flight:
            await asyncio.sleep(0)
        trial = asyncio.create_task(vendor.guard("op")(ok)())
        while vendor.in_flight < 2:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        release.set()
        await holder
        return await vendor.guard("op")(ok)()

    assert asyncio.run(main()) == "ok"


@pytest.mark.parametrize("timeout", [None, vg.Timeout(attempt=5.0)],
                         ids=["inline", "worker-thread"])
def test_keyboard_interrupt_propagates_uncounted(metrics: CollectorRegistry,
                                                 timeout: vg.Timeout | None) -> None:
    """KeyboardInterrupt from the vendor propagates as is and counts no outcome."""
    interrupt = KeyboardInterrupt()

    def fn() -> None:
        raise interrupt

    vendor = vg.Vendor("v", timeout=timeout, breaker=vg.Breaker(failures=1), registry=metrics)
    with pytest.raises(KeyboardInterrupt) as info:
        vendor.guard("op")(fn)()
    assert info.value is interrupt
    assert all_calls(metrics) == 0
    assert vendor.guard("op")(lambda: "ok")() == "ok"  # breaker still closed


def test_async_keyboard_interrupt_propagates_uncounted(metrics: CollectorRegistry) -> None:
    """Async: KeyboardInterrupt from the vendor propagates as is and counts no outcome."""
    interrupt = KeyboardInterrupt()

    async def fn() -> None:
        raise interrupt

    guarded = vg.Vendor("v", breaker=vg.Breaker(failures=1), registry=metrics).guard("op")(fn)

    async def main() -> None:
        with pytest.raises(KeyboardInterrupt) as info:
            await guarded()
        assert info.value is interrupt

    asyncio.run(main())
    assert all_calls(metrics) == 0
