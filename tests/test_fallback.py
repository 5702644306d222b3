"""Fallbacks: values, callables, LastGood, FallbackError, caller errors, metrics, async."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample


class Boom(Exception):
    """A vendor failure (transient for the default classifier)."""



pytestmark = pytest.mark.usefixtures("no_backoff")



def _vendor(metrics: CollectorRegistry, **kwargs: Any) -> vg.Vendor:
    kwargs.setdefault("retry", None)
    return vg.Vendor("acme", registry=metrics, **kwargs)


def _fails(exc: BaseException | None = None) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        raise exc if exc is not None else Boom("vendor down")
    return fn


class Recorder:
    """A fallback callable that records the Failure it receives."""

    def __init__(self, value: Any = "fallback") -> None:
        self.value = value
        self.failures: list[vg.Failure] = []

    def __call__(self, failure: vg.Failure) -> Any:
        self.failures.append(failure)
        return self.value


def _fallbacks(reg: CollectorRegistry, reason: str) -> float:
    return sample(reg, "vendorguard_fallbacks_total", vendor="acme", operation="op",
                  reason=reason)


# -- value and callable fallbacks -------------------------------------------------------------


def test_value_fallback_is_returned_on_failure(metrics: CollectorRegistry) -> None:
    """A plain value fallback is returned as is when the vendor fails."""
    sentinel = object()
    guarded = _vendor(metrics).guard("op", fallback=sentinel)(_fails())
    assert guarded() is sentinel


def test_none_is_a_fallback_value(metrics: CollectorRegistry) -> None:
    """fallback=None returns None instead of raising the failure."""
    guarded = _vendor(metrics).guard("op", fallback=None)(_fails())
    assert guarded() is None
    assert _fallbacks(metrics, "error") == 1


def test_without_fallback_the_vendor_exception_is_raised(metrics: CollectorRegistry) -> None:
    """With no fallback the vendor's own exception object reaches the caller."""
    exc = Boom("down")
    guarded = _vendor(metrics).guard("op")(_fails(exc))
    with pytest.raises(Boom) as info:
        guarded()
    assert info.value is exc
    assert _fallbacks(metrics, "error") == 0


def test_fallback_not_used_on_success(metrics: CollectorRegistry) -> None:
    """A successful call returns the vendor's result and never calls the fallback."""
    recorder = Recorder()
    guarded = _vendor(metrics).guard("op", fallback=recorder)(lambda x: x * 2)
    assert guarded(21) == 42
    assert recorder.failures == []


def test_callable_fallback_receives_failure_details(metrics: CollectorRegistry) -> None:
    """A callable fallback gets a Failure with the exception, outcome, names, args, attempts."""
    exc = Boom("down")
    recorder = Recorder()
    v = _vendor(metrics, retry=vg.Retry(attempts=3))
    guarded = v.guard("op", fallback=recorder)(_fails(exc))
    assert guarded(1, "two", key="value") == "fallback"
    [failure] = recorder.failures
    assert failure.exception is exc
    assert (failure.outcome, failure.vendor, failure.operation) == ("error", "acme", "op")
    assert (failure.args, failure.kwargs) == ((1, "two"), {"key": "value"})
    assert failure.attempts == 3


def test_callable_fallback_sees_timeout_outcome(metrics: CollectorRegistry) -> None:
    """A timed-out call reaches the fallback with outcome 'timeout' and a VendorTimeoutError."""
    recorder = Recorder()
    v = _vendor(metrics, timeout=vg.Timeout(attempt=0.02))

    @v.guard("op", fallback=recorder)
    async def slow() -> None:
        await asyncio.Event().wait()  # never set: only the timeout ends it

    assert asyncio.run(slow()) == "fallback"
    [failure] = recorder.failures
    assert failure.outcome == "timeout"
    assert isinstance(failure.exception, vg.VendorTimeoutError)
    assert failure.attempts == 1


def test_sync_timeout_is_served_by_fallback(metrics: CollectorRegistry) -> None:
    """A sync call that outlives its attempt timeout gets the fallback with outcome timeout."""
    recorder = Recorder()
    release = threading.Event()
    v = _vendor(metrics, timeout=vg.Timeout(attempt=0.05))
    guarded = v.guard("op", fallback=recorder)(lambda: release.wait(timeout=5))
    try:
        assert guarded() == "fallback"
    finally:
        release.set()
    [failure] = recorder.failures
    assert failure.outcome == "timeout"
    assert isinstance(failure.exception, vg.VendorTimeoutError)
    assert _fallbacks(metrics, "timeout") == 1


def test_callable_fallback_sees_rejected_outcome(metrics: CollectorRegistry) -> None:
    """A call refused by an open circuit reaches the fallback with no attempt made."""
    recorder = Recorder()
    v = _vendor(metrics)
    called: list[int] = []
    guarded = v.guard("op", fallback=recorder)(lambda: called.append(1))
    v.force_open(reason="test")
    assert guarded() == "fallback"
    [failure] = recorder.failures
    assert failure.outcome == "rejected"
    assert isinstance(failure.exception, vg.CircuitOpenError)
    assert failure.attempts == 0
    assert called == []


def test_failure_is_frozen() -> None:
    """A Failure cannot be altered by the fallback that receives it."""
    failure = vg.Failure(Boom(), "error", "acme", "op", (), {}, 1)
    with pytest.raises(AttributeError):
        failure.outcome = "success"  # type: ignore[misc]


# -- FallbackError and caller errors ----------------------------------------------------------


def test_fallback_raising_gives_fallback_error_caused_by_failure(
        metrics: CollectorRegistry) -> None:
    """When the fallback raises, FallbackError is raised with the original failure as cause."""
    exc = Boom("down")

    def broken(failure: vg.Failure) -> Any:
        raise RuntimeError("fallback broke")

    guarded = _vendor(metrics).guard("op", fallback=broken)(_fails(exc))
    with pytest.raises(vg.FallbackError) as info:
        guarded()
    assert info.value.__cause__ is exc
    assert (info.value.vendor, info.value.operation) == ("acme", "op")


def test_fallback_error_message_has_no_exception_text(metrics: CollectorRegistry) -> None:
    """FallbackError names the fallback's error type but not its (possibly private) message."""
    def broken(failure: vg.Failure) -> Any:
        raise RuntimeError("user@example.com")

    guarded = _vendor(metrics).guard("op", fallback=broken)(_fails())
    with pytest.raises(vg.FallbackError) as info:
        guarded()
    assert "RuntimeError" in str(info.value)
    assert "user@example.com" not in str(info.value)


def test_caller_error_is_raised_as_is_without_fallback(metrics: CollectorRegistry) -> None:
    """A TypeError from the function (a caller error) is raised unchanged; no fallback."""
    exc = TypeError("bad argument")
    recorder = Recorder()
    guarded = _vendor(metrics).guard("op", fallback=recorder)(_fails(exc))
    with pytest.raises(TypeError) as info:
        guarded()
    assert info.value is exc
    assert recorder.failures == []
    assert sample(metrics, "vendorguard_calls_total", vendor="acme", operation="op",
                  outcome="caller_error") == 1


def test_caller_error_skips_value_fallback(metrics: CollectorRegistry) -> None:
    """Even a plain value fallback is not served for a caller error."""
    guarded = _vendor(metrics).guard("op", fallback="cached")(_fails(TypeError("bad")))
    with pytest.raises(TypeError):
        guarded()
    assert _fallbacks(metrics, "error") == 0


def test_caller_error_on_async_path_skips_fallback(metrics: CollectorRegistry) -> None:
    """An async function's caller error is raised as-is too."""
    recorder = Recorder()

    @_vendor(metrics).guard("op", fallback=recorder)
    async def call() -> None:
        raise TypeError("bad")

    with pytest.raises(TypeError, match="bad"):
        asyncio.run(call())
    assert recorder.failures == []


# -- metrics ----------------------------------------------------------------------------------


def _error_setup(metrics: CollectorRegistry) -> Any:
    return _vendor(metrics).guard("op", fallback="fb")(_fails())


def _timeout_setup(metrics: CollectorRegistry) -> Any:
    v = _vendor(metrics, timeout=vg.Timeout(attempt=0.02))

    async def slow() -> None:
        await asyncio.Event().wait()

    guarded = v.guard("op", fallback="fb")(slow)
    return lambda: asyncio.run(guarded())


def _rejected_setup(metrics: CollectorRegistry) -> Any:
    v = _vendor(metrics)
    guarded = v.guard("op", fallback="fb")(lambda: "vendor")
    v.force_open()
    return guarded


@pytest.mark.parametrize(
    ("setup", "reason"),
    [(_error_setup, "error"), (_timeout_setup, "timeout"), (_rejected_setup, "rejected")],
    ids=["error", "timeout", "rejected"],
)
def test_fallbacks_total_counts_by_outcome(setup: Any, reason: str,
                                           metrics: CollectorRegistry) -> None:
    """vendorguard_fallbacks_total is incremented with reason = the triggering outcome."""
    call = setup(metrics)
    assert call() == "fb"
    assert _fallbacks(metrics, reason) == 1
    others = {"error", "timeout", "rejected"} - {reason}
    assert [_fallbacks(metrics, r) for r in sorted(others)] == [0, 0]
    assert sample(metrics, "vendorguard_calls_total", vendor="acme", operation="op",
                  outcome=reason) == 1


def test_fallback_error_is_not_counted_as_served(metrics: CollectorRegistry) -> None:
    """A fallback that raised served nothing, so fallbacks_total stays at zero."""
    def broken(failure: vg.Failure) -> Any:
        raise RuntimeError("no")

    guarded = _vendor(metrics).guard("op", fallback=broken)(_fails())
    with pytest.raises(vg.FallbackError):
        guarded()
    assert _fallbacks(metrics, "error") == 0
    assert sample(metrics, "vendorguard_calls_total", vendor="acme", operation="op",
                  outcome="error") == 1


# -- async ------------------------------------------------------------------------------------


def test_async_function_with_value_fallback(metrics: CollectorRegistry) -> None:
    """An async function's failure is served by a plain value."""
    @_vendor(metrics).guard("op", fallback="cached")
    async def call() -> str:
        raise Boom("down")

    assert asyncio.run(call()) == "cached"
    assert _fallbacks(metrics, "error") == 1


def test_async_function_with_sync_callable_fallback(metrics: CollectorRegistry) -> None:
    """An async function's failure is passed to a sync callable fallback."""
    recorder = Recorder("sync-fb")

    @_vendor(metrics).guard("op", fallback=recorder)
    async def call(x: int) -> str:
        raise Boom("down")

    assert asyncio.run(call(5)) == "sync-fb"
    assert recorder.failures[0].args == (5,)


def test_async_function_with_coroutine_fallback(metrics: CollectorRegistry) -> None:
    """A coroutine fallback is awaited and its result returned."""
    seen: list[vg.Failure] = []

    async def fallback(failure: vg.Failure) -> str:
        seen.append(failure)
        await asyncio.sleep(0)
        return "async-fb"

    @_vendor(metrics).guard("op", fallback=fallback)
    async def call() -> str:
        raise Boom("down")

    assert asyncio.run(call()) == "async-fb"
    assert seen[0].outcome == "error"


def test_async_coroutine_fallback_raising_gives_fallback_error(
        metrics: CollectorRegistry) -> None:
    """A coroutine fallback that raises gives FallbackError caused by the vendor failure."""
    exc = Boom("down")

    async def fallback(failure: vg.Failure) -> str:
        raise RuntimeError("fallback broke")

    @_vendor(metrics).guard("op", fallback=fallback)
    async def call() -> str:
        raise exc

    with pytest.raises(vg.FallbackError) as info:
        asyncio.run(call())
    assert info.value.__cause__ is exc


# -- LastGood ---------------------------------------------------------------------------------


class Flaky:
    """A vendor function that succeeds until told to fail."""

    def __init__(self) -> None:
        self.failing = False
        self.error = Boom("down")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failing:
            raise self.error
        return ("result", args, tuple(sorted(kwargs.items())))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lastgood(metrics: CollectorRegistry, lg: vg.LastGood) -> tuple[Any, Flaky]:
    flaky = Flaky()
    return _vendor(metrics).guard("op", fallback=lg)(flaky), flaky


def test_lastgood_serves_last_result_for_same_args(metrics: CollectorRegistry) -> None:
    """After a success, a failure with the same arguments gets the remembered result."""
    guarded, flaky = _lastgood(metrics, vg.LastGood())
    good = guarded("a", page=1)
    flaky.failing = True
    assert guarded("a", page=1) == good
    assert _fallbacks(metrics, "error") == 1


def test_lastgood_serves_the_latest_success(metrics: CollectorRegistry) -> None:
    """A newer success for the same arguments replaces the older remembered one."""
    lg = vg.LastGood()
    flaky = Flaky()
    results = iter(["old", "new"])
    guarded = _vendor(metrics).guard("op", fallback=lg)(
        lambda key: flaky(key) and next(results))
    guarded("k")
    guarded("k")
    flaky.failing = True
    assert guarded("k") == "new"


def test_lastgood_without_entry_or_otherwise_reraises(metrics: CollectorRegistry) -> None:
    """With nothing remembered for these arguments and no otherwise, the failure is raised."""
    guarded, flaky = _lastgood(metrics, vg.LastGood())
    guarded("a")
    flaky.failing = True
    with pytest.raises(Boom) as info:
        guarded("b")
    assert info.value is flaky.error
    assert _fallbacks(metrics, "error") == 0


def test_lastgood_distinguishes_kwargs(metrics: CollectorRegistry) -> None:
    """Calls differing only in keyword arguments are remembered separately."""
    guarded, flaky = _lastgood(metrics, vg.LastGood())
    guarded("a", page=1)
    flaky.failing = True
    with pytest.raises(Boom):
        guarded("a", page=2)


def test_lastgood_serves_until_ttl(metrics: CollectorRegistry) -> None:
    """A remembered result is served while younger than ttl (injected clock)."""
    clock = FakeClock()
    guarded, flaky = _lastgood(metrics, vg.LastGood(ttl=10, clock=clock))
    good = guarded("a")
    flaky.failing = True
    clock.now += 9.99
    assert guarded("a") == good


def test_lastgood_expires_after_ttl(metrics: CollectorRegistry) -> None:
    """Once ttl has passed the remembered result is dropped and the failure raised."""
    clock = FakeClock()
    lg = vg.LastGood(ttl=10, clock=clock)
    guarded, flaky = _lastgood(metrics, lg)
    guarded("a")
    flaky.failing = True
    clock.now += 10
    with pytest.raises(Boom):
        guarded("a")
    assert len(lg) == 0


def test_lastgood_expired_entry_uses_otherwise(metrics: CollectorRegistry) -> None:
    """An expired entry falls through to ``otherwise``."""
    clock = FakeClock()
    guarded, flaky = _lastgood(metrics, vg.LastGood(ttl=1, otherwise="stale", clock=clock))
    guarded("a")
    flaky.failing = True
    clock.now += 5
    assert guarded("a") == "stale"


def test_lastgood_max_entries_evicts_least_recently_remembered(
        metrics: CollectorRegistry) -> None:
    """Beyond max_entries the least recently remembered argument set is forgotten."""
    lg = vg.LastGood(max_entries=2)
    guarded, flaky = _lastgood(metrics, lg)
    guarded("a")
    guarded("b")
    guarded("a")  # refreshes "a": "b" is now the oldest
    guarded("c")
    assert len(lg) == 2
    flaky.failing = True
    assert guarded("a")[1] == ("a",)
    assert guarded("c")[1] == ("c",)
    with pytest.raises(Boom):
        guarded("b")


def test_lastgood_stays_bounded(metrics: CollectorRegistry) -> None:
    """However many argument sets succeed, at most max_entries are kept."""
    lg = vg.LastGood(max_entries=5)
    guarded, _ = _lastgood(metrics, lg)
    for i in range(50):
        guarded(i)
    assert len(lg) == 5


def test_lastgood_otherwise_value(metrics: CollectorRegistry) -> None:
    """With nothing remembered, ``otherwise`` as a value is served."""
    guarded, flaky = _lastgood(metrics, vg.LastGood(otherwise="default"))
    flaky.failing = True
    assert guarded("a") == "default"
    assert _fallbacks(metrics, "error") == 1


def test_lastgood_otherwise_callable(metrics: CollectorRegistry) -> None:
    """With nothing remembered, ``otherwise`` as a callable gets the Failure."""
    recorder = Recorder("computed")
    guarded, flaky = _lastgood(metrics, vg.LastGood(otherwise=recorder))
    flaky.failing = True
    assert guarded("a", x=1) == "computed"
    [failure] = recorder.failures
    assert failure.exception is flaky.error
    assert (failure.args, failure.kwargs) == (("a",), {"x": 1})


def test_lastgood_otherwise_none_is_a_value(metrics: CollectorRegistry) -> None:
    """otherwise=None is served as None rather than raising."""
    guarded, flaky = _lastgood(metrics, vg.LastGood(otherwise=None))
    flaky.failing = True
    assert guarded("a") is None


def test_lastgood_remembers_plain_data_args_by_value(metrics: CollectorRegistry) -> None:
    """Dicts and lists (request params) are compared by value, at any depth."""
    lg = vg.LastGood()
    guarded, flaky = _lastgood(metrics, lg)
    good = guarded({"limit": 10, "expand": ["customer"]})
    assert len(lg) == 1
    flaky.failing = True
    assert guarded({"expand": ["customer"], "limit": 10}) == good
    with pytest.raises(Boom):
        guarded({"limit": 11, "expand": ["customer"]})


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]


def test_lastgood_does_not_remember_unhashable_args(metrics: CollectorRegistry) -> None:
    """A call with an argument that is neither hashable nor plain data is not remembered."""
    lg = vg.LastGood()
    guarded, flaky = _lastgood(metrics, lg)
    assert guarded(_Unhashable())[0] == "result"
    assert len(lg) == 0
    flaky.failing = True
    with pytest.raises(Boom):
        guarded(_Unhashable())


def test_lastgood_custom_key(metrics: CollectorRegistry) -> None:
    """A custom key decides which calls share a remembered result."""
    lg = vg.LastGood(key=lambda args, kwargs: args[0]["id"])
    guarded, flaky = _lastgood(metrics, lg)
    good = guarded({"id": 7, "noise": 1})
    flaky.failing = True
    assert guarded({"id": 7, "noise": 2}) == good


def test_lastgood_serves_rejected_calls(metrics: CollectorRegistry) -> None:
    """A call rejected by a forced-open circuit is served the last good result."""
    v = _vendor(metrics)
    guarded = v.guard("op", fallback=vg.LastGood())(lambda key: f"value-{key}")
    guarded("a")
    v.force_open()
    assert guarded("a") == "value-a"
    assert _fallbacks(metrics, "rejected") == 1


def test_lastgood_on_async_function(metrics: CollectorRegistry) -> None:
    """LastGood remembers and serves results of async functions too."""
    flaky = Flaky()

    @_vendor(metrics).guard("op", fallback=vg.LastGood())
    async def call(key: str) -> Any:
        return flaky(key)

    async def scenario() -> tuple[Any, Any]:
        good = await call("a")
        flaky.failing = True
        return good, await call("a")

    good, served = asyncio.run(scenario())
    assert served == good


def test_lastgood_concurrent_remembering_stays_bounded(metrics: CollectorRegistry) -> None:
    """Many threads remembering at once never leave more than max_entries entries."""
    lg = vg.LastGood(max_entries=16)
    guarded, _ = _lastgood(metrics, lg)
    threads_n, calls_n = 8, 300
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(calls_n):
                guarded(t, i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(lg) == 16
    assert sample(metrics, "vendorguard_calls_total", vendor="acme", operation="op",
                  outcome="success") == threads_n * calls_n


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"ttl": 0}, "ttl"), ({"ttl": -1}, "ttl"), ({"ttl": float("nan")}, "ttl"),
     ({"max_entries": 0}, "max_entries"), ({"max_entries": 1.5}, "max_entries"),
     ({"max_entries": True}, "max_entries")],
    ids=["ttl-zero", "ttl-negative", "ttl-nan", "max_entries-zero", "max_entries-float",
         "max_entries-bool"],
)
def test_lastgood_rejects_bad_settings(kwargs: dict[str, Any], field: str) -> None:
    """Bad ttl or max_entries raise at construction, naming the field."""
    with pytest.raises((ValueError, TypeError), match=f"LastGood.{field}"):
        vg.LastGood(**kwargs)


def test_lastgood_ttl_accepts_timedelta() -> None:
    """LastGood's ttl is a duration and, like every duration, accepts a timedelta."""
    assert vg.LastGood(ttl=timedelta(minutes=5)).ttl == 300.0
