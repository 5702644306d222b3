"""The vendor registry, Vendor.call, runtime control with its audit trail, and metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import vendorguard as vg
from tests.conftest import Gate, held, sample
from vendorguard import audit
from vendorguard.events import ControlApplied

STATES = ("closed", "open", "half_open", "forced_open", "disabled")
OUTCOMES = ("success", "caller_error", "error", "timeout", "rejected")


class Boom(Exception):
    """A vendor failure."""



pytestmark = pytest.mark.usefixtures("no_backoff")



def _fail(*args: Any, **kwargs: Any) -> None:
    raise Boom("down")


def _calls(reg: CollectorRegistry, outcome: str, operation: str = "op",
           vendor: str = "acme") -> float:
    return sample(reg, "vendorguard_calls_total", vendor=vendor, operation=operation,
                  outcome=outcome)


def _state(reg: CollectorRegistry, circuit: str = "acme") -> dict[str, float | None]:
    return {s: reg.get_sample_value("vendorguard_circuit_state",
                                    {"vendor": "acme", "circuit": circuit, "state": s})
            for s in STATES}


def _one_hot(state: str) -> dict[str, float]:
    return {s: 1.0 if s == state else 0.0 for s in STATES}


# -- registration -----------------------------------------------------------------------------


def test_vendor_is_registered_by_name(metrics: CollectorRegistry) -> None:
    """A new Vendor can be looked up by its name."""
    v = vg.Vendor("acme", registry=metrics)
    assert vg.vendor("acme") is v


def test_duplicate_vendor_name_raises(metrics: CollectorRegistry) -> None:
    """Registering a second vendor with a taken name raises ValueError naming it."""
    first = vg.Vendor("acme", registry=metrics)
    with pytest.raises(ValueError, match="'acme'"):
        vg.Vendor("acme", registry=metrics)
    assert vg.vendors() == [first]


def test_unknown_vendor_raises_key_error() -> None:
    """vg.vendor() of an unregistered name raises KeyError naming it."""
    with pytest.raises(KeyError, match="nobody"):
        vg.vendor("nobody")


def test_vendors_in_registration_order(metrics: CollectorRegistry) -> None:
    """vg.vendors() lists vendors in the order they were registered."""
    made = [vg.Vendor(name, registry=metrics) for name in ("zeta", "alpha", "mid")]
    assert vg.vendors() == made


def test_vendors_returns_a_copy(metrics: CollectorRegistry) -> None:
    """Mutating the list from vg.vendors() does not change the registry."""
    vg.Vendor("acme", registry=metrics)
    vg.vendors().clear()
    assert [v.name for v in vg.vendors()] == ["acme"]


def test_unregister_frees_the_name(metrics: CollectorRegistry) -> None:
    """After unregister() the name can be registered again."""
    vg.Vendor("acme", registry=metrics).unregister()
    with pytest.raises(KeyError):
        vg.vendor("acme")
    assert vg.Vendor("acme", registry=metrics).name == "acme"


def test_guard_shorthand_uses_registered_vendor(metrics: CollectorRegistry) -> None:
    """vg.guard() with a registered name guards with that Vendor."""
    v = vg.Vendor("acme", registry=metrics)
    guarded = vg.guard("acme", "op")(lambda: 1)
    assert guarded.vendorguard.vendor is v
    assert guarded() == 1
    assert _calls(metrics, "success") == 1


def test_guard_shorthand_creates_one_shared_vendor() -> None:
    """Two vg.guard() calls for a new name create one Vendor and share its circuit."""
    first = vg.guard("fresh", "a")(lambda: 1)
    second = vg.guard("fresh", "b")(lambda: 2)
    assert first.vendorguard.vendor is second.vendorguard.vendor is vg.vendor("fresh")
    assert first.vendorguard.circuit is second.vendorguard.circuit
    assert len(vg.vendors()) == 1


def test_operations_share_the_vendor_circuit(metrics: CollectorRegistry) -> None:
    """Failures of one operation open the circuit for another operation of the vendor."""
    vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=2))
    failing = vg.guard("acme", "a")(_fail)
    other_called: list[int] = []
    other = vg.guard("acme", "b")(lambda: other_called.append(1))
    for _ in range(2):
        with pytest.raises(Boom):
            failing()
    with pytest.raises(vg.CircuitOpenError):
        other()
    assert other_called == []


# -- Vendor.call ------------------------------------------------------------------------------


def test_call_sync_passes_args_and_returns(metrics: CollectorRegistry) -> None:
    """Vendor.call runs fn(*args, **kwargs) through the guard and returns its result."""
    v = vg.Vendor("acme", registry=metrics)
    assert v.call("op", lambda a, b=0: a + b, 40, b=2) == 42
    assert _calls(metrics, "success") == 1


def test_call_async_returns_awaitable(metrics: CollectorRegistry) -> None:
    """Vendor.call with a coroutine function gives an awaitable guarded call."""
    v = vg.Vendor("acme", registry=metrics)

    async def fetch(a: int, *, b: int) -> int:
        await asyncio.sleep(0)
        return a * b

    assert asyncio.run(v.call("op", fetch, 6, b=7)) == 42
    assert _calls(metrics, "success") == 1


def test_call_raises_vendor_exception(metrics: CollectorRegistry) -> None:
    """Vendor.call without fallback raises the vendor's own exception after retries."""
    v = vg.Vendor("acme", registry=metrics, retry=vg.Retry(attempts=2))
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        raise Boom("down")

    with pytest.raises(Boom):
        v.call("op", flaky)
    assert len(attempts) == 2
    assert _calls(metrics, "error") == 1


def test_call_async_failure_is_counted(metrics: CollectorRegistry) -> None:
    """An async Vendor.call that fails is counted with outcome error."""
    v = vg.Vendor("acme", registry=metrics, retry=None)

    async def broken() -> None:
        raise Boom("down")

    with pytest.raises(Boom):
        asyncio.run(v.call("op", broken))
    assert _calls(metrics, "error") == 1


# -- runtime control --------------------------------------------------------------------------


def test_force_open_rejects_without_calling_vendor(metrics: CollectorRegistry) -> None:
    """force_open rejects calls with CircuitOpenError, outcome rejected, vendor not called."""
    v = vg.Vendor("acme", registry=metrics)
    called: list[int] = []
    guarded = v.guard("op")(lambda: called.append(1))
    v.force_open(reason="incident #1")
    with pytest.raises(vg.CircuitOpenError) as info:
        guarded()
    assert called == []
    assert (info.value.vendor, info.value.operation) == ("acme", "op")
    assert _calls(metrics, "rejected") == 1


def test_force_open_serves_fallback(metrics: CollectorRegistry) -> None:
    """With a fallback, a forced-open vendor's calls get the fallback."""
    v = vg.Vendor("acme", registry=metrics)
    called: list[int] = []
    guarded = v.guard("op", fallback="cached")(lambda: called.append(1))
    v.force_open()
    assert guarded() == "cached"
    assert called == []


def test_force_open_before_guard_applies_to_it(metrics: CollectorRegistry) -> None:
    """A kill switch thrown before any guard exists also covers guards created later."""
    v = vg.Vendor("acme", registry=metrics)
    v.force_open()
    guarded = v.guard("op")(lambda: 1)
    with pytest.raises(vg.CircuitOpenError):
        guarded()


def test_force_open_covers_later_operations_with_operation_scope(
        metrics: CollectorRegistry) -> None:
    """With per-operation circuits, force_open also covers an operation guarded afterwards."""
    v = vg.Vendor("acme", registry=metrics, breaker=vg.Breaker(scope="operation"))
    v.guard("early")(lambda: 1)
    v.force_open(reason="incident")
    late_called: list[int] = []
    late = v.guard("late")(lambda: late_called.append(1))
    with pytest.raises(vg.CircuitOpenError):
        late()
    assert late_called == []


def test_force_open_async_rejects(metrics: CollectorRegistry) -> None:
    """force_open rejects async calls too."""
    v = vg.Vendor("acme", registry=metrics)

    @v.guard("op")
    async def call() -> int:
        return 1

    v.force_open()
    with pytest.raises(vg.CircuitOpenError):
        asyncio.run(call())


def test_force_open_retry_after_is_zero(metrics: CollectorRegistry) -> None:
    """A forced-open circuit has no known reopening time: retry_after is 0."""
    v = vg.Vendor("acme", registry=metrics)
    guarded = v.guard("op")(lambda: 1)
    v.force_open()
    with pytest.raises(vg.CircuitOpenError) as info:
        guarded()
    assert info.value.retry_after == 0


def test_force_open_is_not_undone_by_failures_or_successes(metrics: CollectorRegistry) -> None:
    """A forced-open circuit stays forced open however many calls are rejected."""
    v = vg.Vendor("acme", registry=metrics, breaker=vg.Breaker(failures=1))
    guarded = v.guard("op", fallback=None)(lambda: 1)
    v.force_open()
    for _ in range(5):
        assert guarded() is None
    assert _state(metrics) == _one_hot("forced_open")


def test_force_close_releases_force_open(metrics: CollectorRegistry) -> None:
    """force_close after force_open lets calls through again."""
    v = vg.Vendor("acme", registry=metrics)
    guarded = v.guard("op")(lambda: "live")
    v.force_open()
    v.force_close()
    assert guarded() == "live"


def test_force_close_closes_a_tripped_circuit(metrics: CollectorRegistry) -> None:
    """force_close closes a circuit the breaker opened on its own."""
    v = vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=1))
    failing = v.guard("op")(_fail)
    with pytest.raises(Boom):
        failing()
    with pytest.raises(vg.CircuitOpenError):
        failing()
    v.force_close()
    with pytest.raises(Boom):
        failing()


def test_disable_never_rejects(metrics: CollectorRegistry) -> None:
    """A disabled circuit lets every call through even after many failures."""
    v = vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=2))
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(1)
        raise Boom("down")

    guarded = v.guard("op")(flaky)
    v.disable(reason="metrics only")
    for _ in range(20):
        with pytest.raises(Boom):
            guarded()
    assert len(attempts) == 20
    assert _calls(metrics, "rejected") == 0
    assert _calls(metrics, "error") == 20


def test_disable_releases_force_open(metrics: CollectorRegistry) -> None:
    """disable after force_open lets calls through."""
    v = vg.Vendor("acme", registry=metrics)
    guarded = v.guard("op")(lambda: "live")
    v.force_open()
    v.disable()
    assert guarded() == "live"


def test_reset_closes_tripped_circuit(metrics: CollectorRegistry) -> None:
    """reset brings an opened circuit back to closed so calls go through."""
    v = vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=2))
    flaky_fail = [True]

    def flaky() -> str:
        if flaky_fail[0]:
            raise Boom("down")
        return "ok"

    guarded = v.guard("op")(flaky)
    for _ in range(2):
        with pytest.raises(Boom):
            guarded()
    with pytest.raises(vg.CircuitOpenError):
        guarded()
    v.reset()
    flaky_fail[0] = False
    assert guarded() == "ok"


def test_reset_forgets_counted_failures(metrics: CollectorRegistry) -> None:
    """After reset the breaker needs its full failure count again to open."""
    v = vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=3))
    guarded = v.guard("op")(_fail)
    for _ in range(2):
        with pytest.raises(Boom):
            guarded()
    v.reset()
    for _ in range(2):
        with pytest.raises(Boom):
            guarded()
    assert _state(metrics) == _one_hot("closed")


CONTROLS = ["force_open", "force_close", "disable", "reset"]


def _controls() -> list[audit.Entry]:
    return [e for e in audit.entries() if e.kind == "control"]


@pytest.mark.parametrize("action", CONTROLS, ids=CONTROLS)
def test_control_is_audited(action: str, metrics: CollectorRegistry) -> None:
    """Each control action is an audit entry with action, actor, reason, the state before
    and after, and wall time."""
    v = vg.Vendor("acme", registry=metrics)
    v.force_open(reason="earlier")
    audit.clear()
    before = time.time()
    getattr(v, action)(reason="ticket 42", actor="ana")
    after = time.time()
    [entry] = _controls()
    assert (entry.vendor, entry.action, entry.reason, entry.actor) == (
        "acme", action, "ticket 42", "ana")
    assert entry.before == "forced_open"
    assert entry.after == {"force_open": "forced_open", "disable": "disabled"}.get(
        action, "closed")
    assert before <= entry.time <= after


def test_audit_keeps_actions_in_order(metrics: CollectorRegistry) -> None:
    """Successive control actions are audited in the order applied."""
    v = vg.Vendor("acme", registry=metrics)
    v.force_open(reason="a")
    v.disable()
    v.reset(reason="c")
    assert [(e.action, e.reason) for e in _controls()] == [
        ("force_open", "a"), ("disable", None), ("reset", "c")]


@pytest.mark.parametrize("action", CONTROLS, ids=CONTROLS)
def test_control_is_delivered_to_observers(action: str, metrics: CollectorRegistry) -> None:
    """Each control action is delivered to registered observers."""
    v = vg.Vendor("acme", registry=metrics)
    seen: list[Any] = []
    observer = seen.append
    vg.add_observer(observer)
    try:
        getattr(v, action)(reason="ops")
    finally:
        vg.remove_observer(observer)
    controls = [e for e in seen if isinstance(e, ControlApplied)]
    assert [(e.vendor, e.action, e.reason) for e in controls] == [("acme", action, "ops")]
    assert controls[0].time == _controls()[-1].time


def test_removed_observer_gets_nothing(metrics: CollectorRegistry) -> None:
    """After remove_observer, control actions are no longer delivered."""
    v = vg.Vendor("acme", registry=metrics)
    seen: list[Any] = []
    observer = seen.append
    vg.add_observer(observer)
    vg.remove_observer(observer)
    v.force_open()
    assert seen == []


def test_remove_observer_matches_like_add_observer(metrics: CollectorRegistry) -> None:
    """remove_observer removes an observer equal to the one added (e.g. a bound method
    looked up again), as add_observer uses equality to avoid duplicates."""
    v = vg.Vendor("acme", registry=metrics)
    seen: list[Any] = []
    added = seen.append
    vg.add_observer(added)
    try:
        vg.remove_observer(seen.append)  # an equal, not identical, bound method
        v.force_open()
    finally:
        vg.remove_observer(added)
    assert seen == []


def test_failing_observer_does_not_break_control(metrics: CollectorRegistry) -> None:
    """An observer that raises does not stop the control action or its audit."""
    v = vg.Vendor("acme", registry=metrics)
    guarded = v.guard("op", fallback="fb")(lambda: "live")

    def broken(event: Any) -> None:
        raise RuntimeError("observer bug")

    vg.add_observer(broken)
    try:
        v.force_open()
    finally:
        vg.remove_observer(broken)
    assert guarded() == "fb"
    assert [e.action for e in _controls()] == ["force_open"]


def test_control_reason_must_be_a_string(metrics: CollectorRegistry) -> None:
    """A non-string reason raises TypeError and records nothing."""
    v = vg.Vendor("acme", registry=metrics)
    with pytest.raises(TypeError, match="reason"):
        v.force_open(reason=123)  # type: ignore[arg-type]
    assert _controls() == []


def test_force_open_without_breaker_rejects(metrics: CollectorRegistry) -> None:
    """The kill switch works on a vendor created with breaker=None."""
    v = vg.Vendor("acme", registry=metrics, breaker=None)
    called: list[int] = []
    guarded = v.guard("op")(lambda: called.append(1))
    v.force_open()
    with pytest.raises(vg.CircuitOpenError):
        guarded()
    assert called == []


def test_force_close_without_breaker_lets_calls_through(metrics: CollectorRegistry) -> None:
    """force_close works on a vendor with breaker=None."""
    v = vg.Vendor("acme", registry=metrics, breaker=None)
    guarded = v.guard("op")(lambda: "live")
    v.force_open()
    v.force_close()
    assert guarded() == "live"


def test_vendor_without_breaker_never_trips(metrics: CollectorRegistry) -> None:
    """With breaker=None many failures never open the circuit."""
    v = vg.Vendor("acme", registry=metrics, breaker=None, retry=None)
    guarded = v.guard("op")(_fail)
    for _ in range(30):
        with pytest.raises(Boom):
            guarded()
    assert _calls(metrics, "rejected") == 0


# -- metrics ----------------------------------------------------------------------------------


def test_all_outcome_series_exist_at_zero(metrics: CollectorRegistry) -> None:
    """Right after a guard is created, all five outcome series exist with value 0."""
    v = vg.Vendor("acme", registry=metrics)
    v.guard("op")(lambda: 1)
    values = {o: metrics.get_sample_value(
        "vendorguard_calls_total", {"vendor": "acme", "operation": "op", "outcome": o})
        for o in OUTCOMES}
    assert values == dict.fromkeys(OUTCOMES, 0.0)


def test_fallback_reason_series_exist_at_zero(metrics: CollectorRegistry) -> None:
    """The fallbacks series for each reason exist at zero once a guard exists."""
    vg.Vendor("acme", registry=metrics).guard("op")(lambda: 1)
    values = [metrics.get_sample_value(
        "vendorguard_fallbacks_total", {"vendor": "acme", "operation": "op", "reason": r})
        for r in ("error", "timeout", "rejected")]
    assert values == [0.0, 0.0, 0.0]


def test_one_outcome_per_logical_call(metrics: CollectorRegistry) -> None:
    """A call retried three times is counted once."""
    v = vg.Vendor("acme", registry=metrics, retry=vg.Retry(attempts=3))
    with pytest.raises(Boom):
        v.guard("op")(_fail)()
    assert sum(_calls(metrics, o) for o in OUTCOMES) == 1


def test_circuit_state_starts_closed_one_hot(metrics: CollectorRegistry) -> None:
    """A new guard's circuit gauge has closed=1 and every other state 0."""
    vg.Vendor("acme", registry=metrics).guard("op")(lambda: 1)
    assert _state(metrics) == _one_hot("closed")


def test_circuit_state_follows_breaker_trip(metrics: CollectorRegistry) -> None:
    """When the breaker trips the gauge moves to open, still one-hot."""
    v = vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=2))
    guarded = v.guard("op")(_fail)
    for _ in range(2):
        with pytest.raises(Boom):
            guarded()
    assert _state(metrics) == _one_hot("open")


@pytest.mark.parametrize(
    ("actions", "expected"),
    [(["force_open"], "forced_open"), (["disable"], "disabled"),
     (["force_open", "force_close"], "closed"), (["disable", "reset"], "closed"),
     (["force_open", "disable"], "disabled")],
    ids=["force_open", "disable", "force_open-force_close", "disable-reset",
         "force_open-disable"],
)
def test_circuit_state_follows_control(actions: list[str], expected: str,
                                       metrics: CollectorRegistry) -> None:
    """Control actions move the one-hot state gauge."""
    v = vg.Vendor("acme", registry=metrics)
    v.guard("op")(lambda: 1)
    for action in actions:
        getattr(v, action)()
    assert _state(metrics) == _one_hot(expected)


def test_circuit_state_per_operation_scope_labels(metrics: CollectorRegistry) -> None:
    """With per-operation circuits the gauge's circuit label is the operation."""
    v = vg.Vendor("acme", registry=metrics, breaker=vg.Breaker(scope="operation"))
    v.guard("op")(lambda: 1)
    assert _state(metrics, circuit="op") == _one_hot("closed")


def _transitions(reg: CollectorRegistry, old: str, new: str) -> float:
    return sample(reg, "vendorguard_circuit_transitions_total", vendor="acme", circuit="acme",
                  from_state=old, to_state=new)


def test_transition_counter_on_trip(metrics: CollectorRegistry) -> None:
    """A breaker trip counts one closed -> open transition."""
    v = vg.Vendor("acme", registry=metrics, retry=None, breaker=vg.Breaker(failures=1))
    with pytest.raises(Boom):
        v.guard("op")(_fail)()
    assert _transitions(metrics, "closed", "open") == 1


def test_transition_counter_on_control(metrics: CollectorRegistry) -> None:
    """Control actions count their transitions with from_state and to_state labels."""
    v = vg.Vendor("acme", registry=metrics)
    v.guard("op")(lambda: 1)
    v.force_open()
    v.force_close()
    v.force_open()
    assert _transitions(metrics, "closed", "forced_open") == 2
    assert _transitions(metrics, "forced_open", "closed") == 1
    assert _transitions(metrics, "closed", "closed") == 0


def test_calls_in_flight_counts_calls_inside(metrics: CollectorRegistry) -> None:
    """calls_in_flight reads the number of calls currently inside the guard."""
    v = vg.Vendor("acme", registry=metrics)
    gate = Gate()
    with held(v.guard("op")(gate), gate):
        assert sample(metrics, "vendorguard_calls_in_flight", vendor="acme") == 1
    assert sample(metrics, "vendorguard_calls_in_flight", vendor="acme") == 0


def test_calls_in_flight_counts_async_calls(metrics: CollectorRegistry) -> None:
    """calls_in_flight counts async calls waiting inside the guard."""
    v = vg.Vendor("acme", registry=metrics)
    reading: list[float] = []

    entered: list[int] = []

    @v.guard("op")
    async def hold(all_inside: asyncio.Event, release: asyncio.Event) -> None:
        entered.append(1)
        if len(entered) == 3:
            all_inside.set()
        await release.wait()

    async def scenario() -> None:
        all_inside, release = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(hold(all_inside, release)) for _ in range(3)]
        await all_inside.wait()
        reading.append(sample(metrics, "vendorguard_calls_in_flight", vendor="acme"))
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert reading == [3]
    assert sample(metrics, "vendorguard_calls_in_flight", vendor="acme") == 0


def test_calls_in_flight_returns_to_zero_after_failure(metrics: CollectorRegistry) -> None:
    """A failed call leaves calls_in_flight at zero."""
    v = vg.Vendor("acme", registry=metrics, retry=None)
    with pytest.raises(Boom):
        v.guard("op")(_fail)()
    assert sample(metrics, "vendorguard_calls_in_flight", vendor="acme") == 0


def test_labels_carry_no_arguments_or_messages(metrics: CollectorRegistry) -> None:
    """Neither call arguments nor exception messages appear in the scraped metrics."""
    v = vg.Vendor("acme", registry=metrics, retry=vg.Retry(attempts=2))

    def charge(api_key: str, *, email: str) -> None:
        raise Boom(f"card declined for {email}")

    def fallback(failure: vg.Failure) -> None:
        raise RuntimeError(f"fallback failed for {failure.kwargs['email']}")

    def wrong(api_key: str) -> None:
        raise TypeError(f"bad key {api_key} for user@example.com")

    with pytest.raises(Boom):
        v.guard("charge")(charge)("sk_live_123", email="user@example.com")
    with pytest.raises(vg.FallbackError):
        v.guard("charge.fb", fallback=fallback)(charge)("sk_live_123", email="user@example.com")
    with pytest.raises(TypeError):
        v.guard("wrong")(wrong)("sk_live_123")
    text = generate_latest(metrics).decode()
    assert _calls(metrics, "error", operation="charge") == 1
    assert "sk_live_123" not in text
    assert "user@example.com" not in text


def test_refused_duplicate_does_not_rebind_in_flight_gauge(metrics: CollectorRegistry) -> None:
    """A Vendor refused as a duplicate leaves the registered vendor's in-flight gauge alone."""
    v = vg.Vendor("acme", registry=metrics)
    with pytest.raises(ValueError, match="already registered"):
        vg.Vendor("acme", registry=metrics)
    gate = Gate()
    with held(v.guard("op")(gate), gate):
        assert sample(metrics, "vendorguard_calls_in_flight", vendor="acme") == 1


def test_vendor_policy_bundles_its_policies(metrics: CollectorRegistry) -> None:
    """Vendor.policy reports the policies the vendor was built with."""
    timeout, bulkhead = vg.Timeout(attempt=1.0), vg.Bulkhead(max_concurrent=3)
    v = vg.Vendor("acme", timeout=timeout, retry=None, bulkhead=bulkhead, registry=metrics)
    assert v.policy == vg.Policy(timeout=timeout, retry=None, breaker=vg.Breaker(),
                                 bulkhead=bulkhead)
