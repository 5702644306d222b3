"""Retries through guards: classification, Retry-After, retry budget, breaker interplay."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample
from vendorguard.events import RetryBlocked, RetryScheduled
from vendorguard.retry import is_testing

NO_WAIT = vg.Backoff(initial=0, maximum=0)
OUTCOMES = ("success", "caller_error", "error", "timeout", "rejected")


class VendorDown(Exception):
    """A vendor failure the default classifier calls transient."""


class Flaky:
    """A fake vendor call: raises a fresh ``error`` for its first ``failures`` calls, then
    returns ``"ok"``. Remembers every exception it raised and when it was called."""

    def __init__(self, error: Callable[[], Exception] = lambda: VendorDown("down"),
                 failures: int = 10**9) -> None:
        self.error = error
        self.failures = failures
        self.raised: list[Exception] = []
        self.times: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.times)

    def _next(self) -> str:
        self.times.append(time.monotonic())
        if len(self.times) <= self.failures:
            exc = self.error()
            self.raised.append(exc)
            raise exc
        return "ok"

    def __call__(self) -> str:
        return self._next()

    async def run_async(self) -> str:
        await asyncio.sleep(0)
        return self._next()


def make_vendor(metrics: CollectorRegistry, *, attempts: int = 3,
                backoff: vg.Backoff = NO_WAIT, breaker: vg.Breaker | None = None,
                budget: vg.RetryBudget | None = None, **retry: Any) -> vg.Vendor:
    return vg.Vendor("v", retry=vg.Retry(attempts=attempts, backoff=backoff, budget=budget,
                                         **retry),
                     breaker=breaker, registry=metrics)


def calls(metrics: CollectorRegistry, outcome: str, operation: str = "op") -> float:
    return sample(metrics, "vendorguard_calls_total", vendor="v", operation=operation,
                  outcome=outcome)


def retries(metrics: CollectorRegistry, reason: str, operation: str = "op") -> float:
    return sample(metrics, "vendorguard_retries_total", vendor="v", operation=operation,
                  reason=reason)


@pytest.fixture
def seen() -> Iterator[list[vg.Event]]:
    """Every event emitted during the test."""
    events: list[vg.Event] = []
    observer = events.append
    vg.add_observer(observer)
    yield events
    vg.remove_observer(observer)


# -- attempts and the vendor's own exception --------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 4], ids=["one", "two", "four"])
def test_transient_failures_retried_up_to_attempts(metrics: CollectorRegistry,
                                                   attempts: int) -> None:
    """A transient failure is tried exactly ``attempts`` times in all."""
    fn = Flaky()
    with pytest.raises(VendorDown):
        make_vendor(metrics, attempts=attempts).guard("op")(fn)()
    assert fn.calls == attempts


def test_last_vendor_exception_raised_unchanged(metrics: CollectorRegistry) -> None:
    """When attempts run out the vendor's own last exception object is raised."""
    fn = Flaky()
    with pytest.raises(VendorDown) as info:
        make_vendor(metrics).guard("op")(fn)()
    assert type(info.value) is VendorDown
    assert info.value is fn.raised[-1]
    assert calls(metrics, "error") == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note needs Python 3.11")
def test_last_exception_carries_note(metrics: CollectorRegistry) -> None:
    """The re-raised vendor exception gets a vendorguard note naming the attempts."""
    fn = Flaky()
    with pytest.raises(VendorDown) as info:
        make_vendor(metrics).guard("op")(fn)()
    notes = getattr(info.value, "__notes__", [])
    assert any("vendorguard" in note and "3 attempts" in note for note in notes)


def test_success_after_transient_failures(metrics: CollectorRegistry) -> None:
    """A call that succeeds on a retry returns the vendor's value with outcome success."""
    fn = Flaky(failures=2)
    assert make_vendor(metrics).guard("op")(fn)() == "ok"
    assert (fn.calls, calls(metrics, "success"), calls(metrics, "error")) == (3, 1, 0)


@pytest.mark.parametrize("error", [TimeoutError, ConnectionResetError],
                         ids=["timeout", "connection-reset"])
@pytest.mark.parametrize(("idempotent", "expected"), [(False, 1), (True, 3)],
                         ids=["not-idempotent", "idempotent"])
def test_ambiguous_retried_only_when_idempotent(metrics: CollectorRegistry,
                                                error: type[Exception], idempotent: bool,
                                                expected: int) -> None:
    """Ambiguous failures are retried only for idempotent operations."""
    fn = Flaky(error=lambda: error("maybe sent"))
    with pytest.raises(error):
        make_vendor(metrics).guard("op", idempotent=idempotent)(fn)()
    assert fn.calls == expected


def test_fatal_not_retried(metrics: CollectorRegistry) -> None:
    """A failure classified fatal is never retried."""
    fn = Flaky()
    with pytest.raises(VendorDown):
        make_vendor(metrics).guard("op", classifier=lambda exc: vg.Kind.FATAL)(fn)()
    assert fn.calls == 1


# -- caller errors ----------------------------------------------------------------------------


def test_caller_error_not_retried(metrics: CollectorRegistry) -> None:
    """A TypeError is raised at once, unchanged, with outcome caller_error."""
    fn = Flaky(error=lambda: TypeError("bad argument"))
    with pytest.raises(TypeError) as info:
        make_vendor(metrics).guard("op")(fn)()
    assert info.value is fn.raised[0]
    assert (fn.calls, calls(metrics, "caller_error"), calls(metrics, "error")) == (1, 1, 0)


def test_caller_error_not_counted_by_breaker(metrics: CollectorRegistry) -> None:
    """Caller errors never open the breaker."""
    vendor = make_vendor(metrics, breaker=vg.Breaker(failures=1))
    fn = Flaky(error=lambda: TypeError("bad argument"), failures=3)
    guarded = vendor.guard("op")(fn)
    for _ in range(3):
        with pytest.raises(TypeError):
            guarded()
    assert guarded() == "ok"
    assert sample(metrics, "vendorguard_circuit_state", vendor="v", circuit="v",
                  state="closed") == 1


def test_caller_error_gets_no_fallback(metrics: CollectorRegistry) -> None:
    """A caller error is raised even when the guard has a fallback."""
    fn = Flaky(error=lambda: TypeError("bad argument"))
    with pytest.raises(TypeError):
        make_vendor(metrics).guard("op", fallback="fallback")(fn)()
    assert sample(metrics, "vendorguard_fallbacks_total", vendor="v", operation="op",
                  reason="error") == 0


@pytest.mark.parametrize(("error", "expected"), [(KeyError, 3), (VendorDown, 1)],
                         ids=["listed", "not-listed"])
def test_retry_on_restricts_retries(metrics: CollectorRegistry, error: type[Exception],
                                    expected: int) -> None:
    """Retry(on=...) retries only the listed exception types."""
    fn = Flaky(error=lambda: error("x"))
    with pytest.raises(error):
        make_vendor(metrics, on=(KeyError,)).guard("op")(fn)()
    assert fn.calls == expected


# -- Retry-After ------------------------------------------------------------------------------


def rate_limited(seconds: float) -> Callable[[Exception], vg.Verdict]:
    return lambda exc: vg.Verdict(vg.Kind.TRANSIENT, retry_after=seconds)


def test_retry_after_sets_minimum_delay(metrics: CollectorRegistry,
                                        seen: list[vg.Event]) -> None:
    """Each scheduled retry waits at least the vendor's Retry-After."""
    fn = Flaky()
    with pytest.raises(VendorDown):
        make_vendor(metrics).guard("op", classifier=rate_limited(0.03))(fn)()
    delays = [e.delay for e in seen if isinstance(e, RetryScheduled)]
    assert len(delays) == 2
    assert all(d >= 0.03 for d in delays)


def test_retry_after_respected_between_attempts(metrics: CollectorRegistry) -> None:
    """The next attempt never starts earlier than the vendor asked."""
    fn = Flaky()
    with pytest.raises(VendorDown):
        make_vendor(metrics).guard("op", classifier=rate_limited(0.03))(fn)()
    gaps = [b - a for a, b in zip(fn.times, fn.times[1:], strict=False)]
    assert len(gaps) == 2
    assert all(gap >= 0.03 for gap in gaps)


def test_retry_after_above_max_ends_call(metrics: CollectorRegistry,
                                         seen: list[vg.Event]) -> None:
    """A Retry-After above max_retry_after ends the call with the vendor's exception."""
    fn = Flaky()
    started = time.monotonic()
    with pytest.raises(VendorDown) as info:
        make_vendor(metrics, max_retry_after=1.0).guard("op", classifier=rate_limited(5.0))(fn)()
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert not [e for e in seen if isinstance(e, RetryScheduled)]
    assert time.monotonic() - started < 1.0


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "classifier", "reason"),
    [
        (lambda: VendorDown("down"), None, "transient"),
        (lambda: ConnectionResetError("reset"), None, "ambiguous"),
        (lambda: TimeoutError("slow"), None, "timeout"),
        (lambda: VendorDown("429"), rate_limited(0.0), "rate_limited"),
    ],
    ids=["transient", "ambiguous", "timeout", "rate-limited"],
)
def test_retries_counted_by_reason(metrics: CollectorRegistry, error: Callable[[], Exception],
                                   classifier: Any, reason: str) -> None:
    """Each retry is counted in vendorguard_retries_total under its reason."""
    fn = Flaky(error=error)
    guarded = make_vendor(metrics).guard("op", classifier=classifier, idempotent=True)(fn)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the vendor's own error
        guarded()
    counted = {r: retries(metrics, r) for r in ("transient", "ambiguous", "timeout",
                                                "rate_limited")}
    assert counted == {r: (2.0 if r == reason else 0.0) for r in counted}


# -- retry budget -----------------------------------------------------------------------------


def test_budget_blocks_retries_beyond_it(metrics: CollectorRegistry) -> None:
    """With no floor a new bucket starts empty: a failing call is not retried."""
    fn = Flaky()
    vendor = make_vendor(metrics, budget=vg.RetryBudget(ratio=0.1, floor=0))
    with pytest.raises(VendorDown) as info:
        vendor.guard("op")(fn)()
    assert fn.calls == 1
    assert info.value is fn.raised[-1]


def test_blocked_retry_counted(metrics: CollectorRegistry, seen: list[vg.Event]) -> None:
    """A blocked retry is counted in vendorguard_retries_blocked_total and emitted."""
    vendor = make_vendor(metrics, budget=vg.RetryBudget(ratio=0.1, floor=0))
    guarded = vendor.guard("op")(Flaky())
    for _ in range(2):
        with pytest.raises(VendorDown):
            guarded()
    assert sample(metrics, "vendorguard_retries_blocked_total", vendor="v") == 2
    assert len([e for e in seen if isinstance(e, RetryBlocked)]) == 2


def test_blocked_retry_ends_with_vendor_exception(metrics: CollectorRegistry) -> None:
    """Once the budget is spent a failing call makes one attempt and raises its exception."""
    vendor = make_vendor(metrics, budget=vg.RetryBudget(ratio=0.1, floor=0))
    with pytest.raises(VendorDown):
        vendor.guard("op")(Flaky())()
    fn = Flaky()
    with pytest.raises(VendorDown) as info:
        vendor.guard("op")(fn)()
    assert fn.calls == 1
    assert info.value is fn.raised[0]
    assert calls(metrics, "error") == 2


def test_budget_shared_by_vendor_operations(metrics: CollectorRegistry) -> None:
    """The budget is per vendor: one operation spending it blocks another's retries."""
    vendor = make_vendor(metrics, budget=vg.RetryBudget(ratio=0.1, floor=0))
    with pytest.raises(VendorDown):
        vendor.guard("first")(Flaky())()
    fn = Flaky()
    with pytest.raises(VendorDown):
        vendor.guard("second")(fn)()
    assert fn.calls == 1


def test_budget_earns_tokens_from_calls(metrics: CollectorRegistry) -> None:
    """Calls earn ``ratio`` retry tokens each, so retries resume after enough calls."""
    vendor = make_vendor(metrics, attempts=2, budget=vg.RetryBudget(ratio=0.5, floor=0))
    first = Flaky()
    with pytest.raises(VendorDown):
        vendor.guard("op")(first)()  # earns 0.5 token: not enough for a retry
    assert first.calls == 1
    ok = vendor.guard("op")(lambda: "ok")
    for _ in range(3):  # 0.5 + 3 calls x 0.5 = 2 tokens earned
        ok()
    fn = Flaky()
    with pytest.raises(VendorDown):
        vendor.guard("op")(fn)()
    assert fn.calls == 2


def test_budget_floor_refills_over_time(metrics: CollectorRegistry) -> None:
    """The floor adds retry tokens per second even without calls."""
    vendor = make_vendor(metrics, attempts=2, budget=vg.RetryBudget(ratio=0.01, floor=2))
    bucket = vendor.bucket_for(vg.RetryBudget(ratio=0.01, floor=2))
    now = [time.monotonic()]
    bucket.clock = lambda: now[0]
    guarded = vendor.guard("op")(Flaky())
    for _ in range(2):  # spends the two starting tokens
        with pytest.raises(VendorDown):
            guarded()
    fn = Flaky()
    with pytest.raises(VendorDown):
        vendor.guard("op")(fn)()
    assert fn.calls == 1
    now[0] += 0.5  # 0.5 s x 2/s = 1 token
    fn = Flaky()
    with pytest.raises(VendorDown):
        vendor.guard("op")(fn)()
    assert fn.calls == 2


# -- breaker interplay ------------------------------------------------------------------------


def test_breaker_opening_between_attempts_ends_call(metrics: CollectorRegistry) -> None:
    """A breaker that opens between attempts ends the call with the vendor's exception."""
    fn = Flaky()
    vendor = make_vendor(metrics, attempts=5, breaker=vg.Breaker(failures=2))
    with pytest.raises(VendorDown) as info:
        vendor.guard("op")(fn)()
    assert info.value is fn.raised[-1]
    assert fn.calls == 2
    assert (calls(metrics, "error"), calls(metrics, "rejected")) == (1, 0)


def test_open_breaker_rejection_not_retried(metrics: CollectorRegistry) -> None:
    """A call rejected by an open breaker never reaches the vendor and is not retried."""
    fn = Flaky()
    guarded = make_vendor(metrics, breaker=vg.Breaker(failures=1)).guard("op")(fn)
    with pytest.raises(VendorDown):
        guarded()
    with pytest.raises(vg.CircuitOpenError) as info:
        guarded()
    assert fn.calls == 1
    assert (info.value.vendor, info.value.operation) == ("v", "op")
    assert (calls(metrics, "rejected"), calls(metrics, "error")) == (1, 1)


# -- testing mode -----------------------------------------------------------------------------


def test_testing_mode_removes_backoff(metrics: CollectorRegistry) -> None:
    """In testing mode a retry with a long backoff does not sleep."""
    fn = Flaky()
    long_wait = vg.Backoff(initial=5.0, maximum=5.0, jitter=False)
    started = time.monotonic()
    with vg.testing_mode(), pytest.raises(VendorDown):
        make_vendor(metrics, backoff=long_wait).guard("op")(fn)()
    assert fn.calls == 3
    assert time.monotonic() - started < 1.0


def test_testing_mode_removes_retry_after_wait(metrics: CollectorRegistry) -> None:
    """In testing mode a Retry-After is not waited for either."""
    fn = Flaky()
    started = time.monotonic()
    with vg.testing_mode(), pytest.raises(VendorDown):
        make_vendor(metrics).guard("op", classifier=rate_limited(5.0))(fn)()
    assert fn.calls == 3
    assert time.monotonic() - started < 1.0


def test_testing_mode_restored_on_exit(metrics: CollectorRegistry) -> None:
    """After testing mode ends backoff sleeps happen again."""
    with vg.testing_mode():
        pass
    fn = Flaky(failures=1)
    wait = vg.Backoff(initial=0.05, maximum=0.05, jitter=False)
    assert make_vendor(metrics, attempts=2, backoff=wait).guard("op")(fn)() == "ok"
    assert fn.times[1] - fn.times[0] >= 0.05


def test_testing_mode_nesting_restores_outer() -> None:
    """A nested testing_mode(False) switches it off only inside, and exits restore."""
    with vg.testing_mode():
        with vg.testing_mode(False):
            assert not is_testing()
        assert is_testing()
    assert not is_testing()


def test_testing_mode_restored_after_exception() -> None:
    """An exception leaving testing_mode still restores the previous mode."""
    with pytest.raises(RuntimeError), vg.testing_mode():
        raise RuntimeError("boom")
    assert not is_testing()


# -- parse_retry_after ------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, tz=timezone.utc), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        (7, 7.0),
        (2.5, 2.5),
        (http_date(30), 30.0),
        ("Wed, 01 May 2024 12:01:00", 60.0),
        (http_date(-30), 0.0),
        ("-5", 0.0),
        (-5, 0.0),
        ("soon", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        (float("inf"), None),
        (None, None),
    ],
    ids=["seconds", "padded", "fraction", "int", "float", "http-date", "date-no-zone",
         "past-date", "negative-text", "negative-int", "garbage", "empty", "nan", "inf-text",
         "inf-float", "none"],
)
def test_parse_retry_after(value: Any, expected: float | None) -> None:
    """Retry-After parses seconds and HTTP dates, never negative, None when unusable."""
    assert vg.parse_retry_after(value, now=lambda: NOW) == expected


# -- async ------------------------------------------------------------------------------------


def test_async_transient_retried_then_last_exception(metrics: CollectorRegistry) -> None:
    """Async: transient failures are retried and the last vendor exception is raised."""
    fn = Flaky()
    guarded = make_vendor(metrics).guard("op")(fn.run_async)
    with pytest.raises(VendorDown) as info:
        asyncio.run(guarded())
    assert fn.calls == 3
    assert info.value is fn.raised[-1]


def test_async_success_after_retry(metrics: CollectorRegistry) -> None:
    """Async: a call that succeeds on a retry returns the vendor's value."""
    fn = Flaky(failures=1)
    assert asyncio.run(make_vendor(metrics).guard("op")(fn.run_async)()) == "ok"
    assert calls(metrics, "success") == 1


@pytest.mark.parametrize(("idempotent", "expected"), [(False, 1), (True, 3)],
                         ids=["not-idempotent", "idempotent"])
def test_async_ambiguous_retried_only_when_idempotent(metrics: CollectorRegistry,
                                                      idempotent: bool, expected: int) -> None:
    """Async: ambiguous failures are retried only for idempotent operations."""
    fn = Flaky(error=lambda: ConnectionResetError("reset"))
    guarded = make_vendor(metrics).guard("op", idempotent=idempotent)(fn.run_async)
    with pytest.raises(ConnectionResetError):
        asyncio.run(guarded())
    assert fn.calls == expected


def test_async_caller_error_not_retried(metrics: CollectorRegistry) -> None:
    """Async: a caller error is raised at once without fallback."""
    fn = Flaky(error=lambda: TypeError("bad"))
    guarded = make_vendor(metrics).guard("op", fallback="fallback")(fn.run_async)
    with pytest.raises(TypeError):
        asyncio.run(guarded())
    assert (fn.calls, calls(metrics, "caller_error")) == (1, 1)


def test_async_retry_after_respected(metrics: CollectorRegistry) -> None:
    """Async: the next attempt never starts earlier than the vendor's Retry-After."""
    fn = Flaky()
    guarded = make_vendor(metrics, attempts=2).guard("op", classifier=rate_limited(0.03))(
        fn.run_async)
    with pytest.raises(VendorDown):
        asyncio.run(guarded())
    assert fn.times[1] - fn.times[0] >= 0.03


def test_async_budget_blocks_retries(metrics: CollectorRegistry) -> None:
    """Async: retries beyond the budget are blocked and counted."""
    fn = Flaky()
    vendor = make_vendor(metrics, budget=vg.RetryBudget(ratio=0.1, floor=0))
    with pytest.raises(VendorDown) as info:
        asyncio.run(vendor.guard("op")(fn.run_async)())
    assert fn.calls == 1
    assert info.value is fn.raised[-1]
    assert sample(metrics, "vendorguard_retries_blocked_total", vendor="v") == 1


def test_async_breaker_opening_between_attempts(metrics: CollectorRegistry) -> None:
    """Async: a breaker opening between attempts ends the call with outcome error."""
    fn = Flaky()
    vendor = make_vendor(metrics, attempts=5, breaker=vg.Breaker(failures=1))
    with pytest.raises(VendorDown) as info:
        asyncio.run(vendor.guard("op")(fn.run_async)())
    assert info.value is fn.raised[-1]
    assert (fn.calls, calls(metrics, "error"), calls(metrics, "rejected")) == (1, 1, 0)


def test_async_rejection_not_retried(metrics: CollectorRegistry) -> None:
    """Async: a call rejected by an open breaker never reaches the vendor."""
    fn = Flaky()
    guarded = make_vendor(metrics, breaker=vg.Breaker(failures=1)).guard("op")(fn.run_async)
    with pytest.raises(VendorDown):
        asyncio.run(guarded())
    with pytest.raises(vg.CircuitOpenError):
        asyncio.run(guarded())
    assert (fn.calls, calls(metrics, "rejected")) == (1, 1)
