"""vg.health(): the JSON contract, status rules, the recent window, latency and secrets."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import FakeClock, Gate, held
from vendorguard.telemetry.health import DEGRADED_ERROR_RATE, MIN_CALLS
from vendorguard.telemetry.metrics import BUCKETS, OUTCOMES
from vendorguard.telemetry.window import Counts, HealthWindow, quantile


class Boom(Exception):
    """A vendor failure (transient for the default classifier)."""




pytestmark = pytest.mark.usefixtures("no_backoff")



def _vendor(metrics: CollectorRegistry, name: str = "acme", **kwargs: Any) -> vg.Vendor:
    kwargs.setdefault("retry", None)
    return vg.Vendor(name, registry=metrics, **kwargs)


def _ok(*args: object) -> str:
    return "ok"


def _boom(*args: object) -> str:
    raise Boom("vendor down")


def _entry(name: str = "acme") -> dict[str, Any]:
    entry: dict[str, Any] = vg.health()["vendors"][name]
    return entry


# -- the JSON contract ------------------------------------------------------------------------

VENDOR_KEYS = {
    "status", "state", "critical", "circuits", "window_seconds", "calls", "calls_per_second",
    "outcomes", "error_rate", "latency", "fallbacks", "calls_total", "fallbacks_total",
    "in_flight", "abandoned", "last_failure", "transitions", "control", "detail"}


@pytest.fixture
def busy(metrics: CollectorRegistry) -> vg.Vendor:
    """A vendor with successes, a fallback, a failure, a transition and a control action."""
    vendor = _vendor(metrics, critical=True, breaker=vg.Breaker(failures=3))
    vendor.guard("ok")(_ok)()
    vendor.guard("fb", fallback="fb")(_boom)()
    with pytest.raises(Boom):
        vendor.guard("raise")(_boom)()
    vendor.force_open("maintenance")
    vendor.force_close("done")
    return vendor


def test_health_has_every_contract_key(busy: vg.Vendor) -> None:
    """The report and each vendor entry have exactly the documented keys."""
    report = vg.health()
    assert set(report) == {"status", "time", "vendors", "config", "audit"}
    assert set(report["vendors"]) == {"acme"}
    assert set(report["vendors"]["acme"]) == VENDOR_KEYS


def test_health_nested_shapes(busy: vg.Vendor) -> None:
    """Nested values (circuits, outcomes, latency, last failure, transitions, control) have
    their documented fields."""
    entry = _entry()
    assert entry["circuits"] == {"acme": {"state": "closed", "retry_after": 0.0}}
    assert set(entry["outcomes"]) == set(OUTCOMES)
    assert set(entry["latency"]) == {"p50", "p99"}
    assert set(entry["last_failure"]) == {"time", "type", "outcome"}
    assert all(set(t) == {"circuit", "from", "to", "time"} for t in entry["transitions"])
    assert all(set(c) == {"action", "reason", "actor", "time"} for c in entry["control"])
    assert entry["critical"] is True


def test_health_counts_calls_and_fallbacks(busy: vg.Vendor) -> None:
    """Calls, outcomes and fallbacks reflect the calls made through the guards."""
    entry = _entry()
    assert entry["calls"] == entry["calls_total"] == 3
    assert entry["outcomes"] == {"success": 1, "caller_error": 0, "error": 2, "timeout": 0,
                                 "rejected": 0}
    assert entry["fallbacks"] == entry["fallbacks_total"] == 1
    assert entry["error_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert entry["in_flight"] == 0
    assert entry["abandoned"] == 0


def test_health_is_json_serialisable(busy: vg.Vendor) -> None:
    """The report survives a JSON round trip unchanged."""
    report = vg.health()
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_empty_vendor_has_null_rates(metrics: CollectorRegistry) -> None:
    """A vendor with no calls yet is ok with no error rate and no latency."""
    _vendor(metrics).guard("op")(_ok)
    entry = _entry()
    assert entry["status"] == "ok"
    assert entry["calls"] == 0
    assert entry["error_rate"] is None
    assert entry["latency"] is None
    assert entry["last_failure"] is None


# -- status rules -----------------------------------------------------------------------------


def test_healthy_vendor_is_ok(metrics: CollectorRegistry) -> None:
    """Successful calls through a closed circuit: vendor and overall status ok."""
    guarded = _vendor(metrics).guard("op")(_ok)
    for _ in range(MIN_CALLS):
        guarded()
    report = vg.health()
    assert report["status"] == "ok"
    assert report["vendors"]["acme"]["status"] == "ok"
    assert report["vendors"]["acme"]["state"] == "closed"


def test_open_circuit_is_down(metrics: CollectorRegistry) -> None:
    """A circuit tripped by failures makes the vendor down, with retry_after reported."""
    vendor = _vendor(metrics, breaker=vg.Breaker(failures=2, reset_after=30.0))
    guarded = vendor.guard("op", fallback="fb")(_boom)
    guarded()
    guarded()
    entry = _entry()
    assert entry["state"] == "open"
    assert entry["status"] == "down"
    assert 0 < entry["circuits"]["acme"]["retry_after"] <= 30.0


def test_forced_open_is_down(metrics: CollectorRegistry) -> None:
    """The kill switch makes the vendor down."""
    vendor = _vendor(metrics)
    vendor.guard("op")(_ok)
    vendor.force_open("kill switch")
    entry = _entry()
    assert (entry["state"], entry["status"]) == ("forced_open", "down")


def test_disabled_breaker_is_ok(metrics: CollectorRegistry) -> None:
    """A disabled breaker (metrics only) is not a reason to degrade."""
    vendor = _vendor(metrics)
    vendor.guard("op")(_ok)
    vendor.disable("noisy")
    entry = _entry()
    assert (entry["state"], entry["status"]) == ("disabled", "ok")


def test_half_open_is_degraded(metrics: CollectorRegistry) -> None:
    """While a trial call runs in a half-open circuit the vendor is degraded."""
    clock = FakeClock()
    vendor = _vendor(metrics, breaker=vg.Breaker(failures=1, reset_after=10.0))
    gate = Gate()
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Boom("down")
        return gate()

    guarded = vendor.guard("op", fallback="fb")(fn)
    vendor.circuits()["acme"]._clock = clock
    assert guarded() == "fb"
    assert _entry()["status"] == "down"
    clock.advance(11.0)
    with held(guarded, gate):
        entry = _entry()
        assert (entry["state"], entry["status"]) == ("half_open", "degraded")
        assert entry["in_flight"] == 1
    entry = _entry()
    assert (entry["state"], entry["status"]) == ("closed", "ok")


@pytest.mark.parametrize(("opened", "status"), [(1, "degraded"), (2, "down")],
                         ids=["one-of-two", "all"])
def test_per_operation_circuits(metrics: CollectorRegistry, opened: int, status: str) -> None:
    """With a circuit per operation, some open is degraded and all open is down."""
    vendor = _vendor(metrics, breaker=vg.Breaker(failures=1, scope="operation"))
    guards = [vendor.guard(op, fallback="fb")(_boom) for op in ("a", "b")]
    for guarded in guards[:opened]:
        guarded()
    entry = _entry()
    assert entry["status"] == status
    assert entry["state"] == "open"


def test_abandoned_call_is_degraded(metrics: CollectorRegistry) -> None:
    """A sync call abandoned at its timeout and still running degrades the vendor."""
    gate = Gate()
    vendor = _vendor(metrics, timeout=vg.Timeout(attempt=0.01), breaker=None)
    try:
        assert vendor.guard("op", fallback="fb")(gate)() == "fb"
        entry = _entry()
        assert entry["abandoned"] == 1
        assert entry["status"] == "degraded"
        assert entry["outcomes"]["timeout"] == 1
    finally:
        gate.release.set()


@pytest.mark.parametrize(
    ("successes", "failures", "status"),
    [(10, 0, "ok"), (9, 3, "degraded"), (10, 3, "ok"), (0, MIN_CALLS - 1, "ok"),
     (0, MIN_CALLS, "degraded")],
    ids=["no-failures", "at-threshold", "below-threshold", "too-few-calls", "enough-calls"])
def test_error_rate_degrades(metrics: CollectorRegistry, successes: int, failures: int,
                             status: str) -> None:
    """At least MIN_CALLS calls with DEGRADED_ERROR_RATE or more failing is degraded."""
    vendor = _vendor(metrics, breaker=None)
    ok, bad = vendor.guard("ok")(_ok), vendor.guard("bad", fallback="fb")(_boom)
    for _ in range(successes):
        ok()
    for _ in range(failures):
        bad()
    entry = _entry()
    total = successes + failures
    assert entry["error_rate"] == round(failures / total, 4)
    assert entry["status"] == status
    assert (entry["status"] == "degraded") == (
        total >= MIN_CALLS and failures / total >= DEGRADED_ERROR_RATE)


@pytest.mark.parametrize(
    ("successes", "failures", "rate", "status"),
    [(MIN_CALLS, 0, 0.0, "ok"), (7, 3, 0.3, "degraded")],
    ids=["not-failures", "not-in-denominator"])
def test_caller_errors_are_excluded_from_error_rate(
        metrics: CollectorRegistry, successes: int, failures: int, rate: float,
        status: str) -> None:
    """Caller errors are neither failures nor judged calls in the error rate."""
    vendor = _vendor(metrics, breaker=None)
    bad = vendor.guard("bad", fallback="fb")(_boom)

    @vendor.guard("op")
    def op(n: int) -> str:
        return "ok"

    for _ in range(successes):
        op(1)
    for _ in range(failures):
        bad()
    for _ in range(MIN_CALLS * 2):
        with pytest.raises(TypeError):
            op()  # type: ignore[call-arg]
    entry = _entry()
    assert entry["outcomes"]["caller_error"] == MIN_CALLS * 2
    assert entry["error_rate"] == rate
    assert entry["status"] == status


def test_caller_error_is_not_a_last_failure(metrics: CollectorRegistry) -> None:
    """A caller error does not become the vendor's last failure."""
    @_vendor(metrics).guard("op")
    def op(n: int) -> str:
        return "ok"

    with pytest.raises(TypeError):
        op()  # type: ignore[call-arg]
    assert _entry()["last_failure"] is None


@pytest.mark.parametrize(("status", "detail"), [("degraded", "flags stale"),
                                                ("down", "not initialized")],
                         ids=["degraded", "down"])
def test_reported_status(metrics: CollectorRegistry, status: str, detail: str) -> None:
    """An integration's report sets the vendor's status and detail."""
    vendor = _vendor(metrics, breaker=None)
    vendor.report(status, detail)
    entry = _entry()
    assert (entry["status"], entry["detail"]) == (status, detail)


def test_report_none_clears(metrics: CollectorRegistry) -> None:
    """report(None) clears a reported status and its detail."""
    vendor = _vendor(metrics, breaker=None)
    vendor.report("degraded", "flags stale")
    vendor.report(None)
    entry = _entry()
    assert (entry["status"], entry["detail"]) == ("ok", None)


def test_report_ok_does_not_hide_open_circuit(metrics: CollectorRegistry) -> None:
    """A reported "ok" never makes a down vendor look healthier."""
    vendor = _vendor(metrics)
    vendor.guard("op")(_ok)
    vendor.force_open()
    vendor.report("ok", "sdk fine")
    assert _entry()["status"] == "down"


def test_vendor_without_breaker_has_no_state_until_forced_open(
        metrics: CollectorRegistry) -> None:
    """breaker=None reports state null; the kill switch still makes it forced_open/down."""
    vendor = _vendor(metrics, breaker=None)
    vendor.guard("op")(_ok)()
    assert (_entry()["state"], _entry()["status"]) == (None, "ok")
    vendor.force_open("kill")
    assert (_entry()["state"], _entry()["status"]) == ("forced_open", "down")
    vendor.force_close()
    assert _entry()["state"] is None


@pytest.mark.parametrize(
    ("critical", "action", "overall"),
    [(True, None, "ok"), (True, "down", "down"), (False, "down", "degraded"),
     (True, "degraded", "degraded"), (False, "degraded", "degraded")],
    ids=["all-ok", "critical-down", "noncritical-down", "critical-degraded",
         "noncritical-degraded"])
def test_overall_status(metrics: CollectorRegistry, critical: bool, action: str | None,
                        overall: str) -> None:
    """Overall down only when a critical vendor is down; degraded when any is not ok."""
    troubled = _vendor(metrics, "troubled", critical=critical)
    troubled.guard("op")(_ok)
    healthy = _vendor(metrics, "healthy", critical=True)
    healthy.guard("op")(_ok)()
    if action == "down":
        troubled.force_open("test")
    elif action == "degraded":
        troubled.report("degraded", "test")
    assert vg.health()["status"] == overall


def test_critical_down_wins_over_earlier_degraded(metrics: CollectorRegistry) -> None:
    """A degraded vendor listed before a down critical one still gives overall down."""
    first = _vendor(metrics, "first")
    first.report("degraded", "test")
    second = _vendor(metrics, "second", critical=True)
    second.guard("op")(_ok)
    second.force_open()
    assert vg.health()["status"] == "down"


# -- last failure, transitions, control -------------------------------------------------------


def test_last_failure_has_time_type_and_outcome(metrics: CollectorRegistry) -> None:
    """The latest failure is reported by time, exception type name and outcome only."""
    before = time.time()
    _vendor(metrics).guard("op", fallback="fb")(_boom)()
    failure = _entry()["last_failure"]
    assert failure["type"] == "Boom"
    assert failure["outcome"] == "error"
    assert before <= failure["time"] <= time.time()


def test_transitions_bounded_newest_last(metrics: CollectorRegistry) -> None:
    """Only the last 10 transitions are listed, oldest first."""
    vendor = _vendor(metrics)
    vendor.guard("op")(_ok)
    for _ in range(12):
        vendor.force_open()
        vendor.force_close()
    transitions = _entry()["transitions"]
    assert len(transitions) == 10
    assert [t["time"] for t in transitions] == sorted(t["time"] for t in transitions)
    assert [(t["from"], t["to"]) for t in transitions[-2:]] == [
        ("closed", "forced_open"), ("forced_open", "closed")]
    assert all(t["circuit"] == "acme" for t in transitions)


def test_control_bounded_newest_last(metrics: CollectorRegistry) -> None:
    """Only the last 10 control actions are listed, newest last, with their reasons."""
    vendor = _vendor(metrics)
    for i in range(15):
        (vendor.force_open if i % 2 == 0 else vendor.force_close)(f"r{i}")
    control = _entry()["control"]
    assert [c["reason"] for c in control] == [f"r{i}" for i in range(5, 15)]
    assert control[-1]["action"] == "force_open"


# -- the window -------------------------------------------------------------------------------


def _counts(success: float = 0.0, error: float = 0.0, fallbacks: float = 0.0) -> Counts:
    outcomes = [0.0] * len(OUTCOMES)
    outcomes[OUTCOMES.index("success")] = success
    outcomes[OUTCOMES.index("error")] = error
    return Counts(tuple(outcomes), fallbacks, (0.0,) * (len(BUCKETS) + 1))


def test_window_first_read_covers_everything_since_creation() -> None:
    """The first read, however late, covers every count since the window was created."""
    clock = FakeClock()
    window = HealthWindow(seconds=60, resolution=5, clock=clock)
    clock.advance(500)
    totals, recent, seconds = window.recent(_counts(success=42))
    assert recent.outcomes == totals.outcomes
    assert seconds == 500


def test_window_covers_roughly_the_last_window() -> None:
    """With frequent reads, numbers cover between one window and one window + resolution."""
    clock = FakeClock()
    window = HealthWindow(seconds=60, resolution=5, clock=clock)
    for t in range(1, 301):  # one call per second, read every second
        clock.advance(1)
        _, recent, seconds = window.recent(_counts(success=t))
        if t >= 65:
            assert 60 <= seconds < 65
            assert recent.outcomes[OUTCOMES.index("success")] == seconds


def test_window_drops_old_failures() -> None:
    """Failures older than the window no longer count once a newer baseline exists."""
    clock = FakeClock()
    window = HealthWindow(seconds=60, resolution=5, clock=clock)
    clock.advance(10)
    window.recent(_counts(error=5))
    clock.advance(70)
    _, recent, seconds = window.recent(_counts(success=3, error=5))
    assert recent.outcomes[OUTCOMES.index("error")] == 0
    assert recent.outcomes[OUTCOMES.index("success")] == 3
    assert seconds == 70


def test_window_snapshots_stay_bounded() -> None:
    """However many reads, only the snapshots the window needs are kept."""
    clock = FakeClock()
    window = HealthWindow(seconds=60, resolution=5, clock=clock)
    for t in range(10_000):
        clock.advance(0.5)
        window.recent(_counts(success=t))
    assert len(window._snapshots) <= 60 / 5 + 2


def test_window_through_real_guards(metrics: CollectorRegistry) -> None:
    """Through a vendor, failures that left the window stop counting in error_rate."""
    clock = FakeClock()
    vendor = _vendor(metrics, breaker=None)
    vendor.window = HealthWindow(seconds=60, resolution=5, clock=clock)
    ok, bad = vendor.guard("ok")(_ok), vendor.guard("bad", fallback="fb")(_boom)
    for _ in range(MIN_CALLS):
        bad()
    clock.advance(10)
    assert _entry()["status"] == "degraded"
    clock.advance(70)
    for _ in range(3):
        ok()
    entry = _entry()
    assert (entry["calls"], entry["calls_total"]) == (3, MIN_CALLS + 3)
    assert (entry["fallbacks"], entry["fallbacks_total"]) == (0, MIN_CALLS)
    assert entry["error_rate"] == 0.0
    assert entry["status"] == "ok"
    assert entry["window_seconds"] == 70


# -- latency ----------------------------------------------------------------------------------


def _buckets(**counts: int) -> tuple[float, ...]:
    """Per-bucket counts keyed like le_0_05=3 or le_inf=1."""
    bounds = [*BUCKETS, float("inf")]
    out = [0.0] * len(bounds)
    for key, n in counts.items():
        le = key.removeprefix("le_").replace("_", ".", 1)
        out[bounds.index(float(le))] = n
    return tuple(out)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, _buckets(le_0_05=10), 0.0375),
        (0.5, _buckets(le_0_001=4, le_0_25=4), 0.001),
        (0.75, _buckets(le_0_001=4, le_0_25=4), 0.175),
        (1.0, _buckets(le_0_001=4, le_0_25=4), 0.25),
        (0.99, _buckets(le_0_001=99, le_30=1), 0.001),
        (0.995, _buckets(le_0_001=99, le_30=1), 20.0),
        (0.5, _buckets(le_inf=10), 30.0),
        (0.9, _buckets(le_1=5, le_inf=5), 30.0),
    ],
    ids=["one-bucket", "rank-at-bucket-edge", "interpolated", "max", "p99-first-bucket",
         "p995-last-finite", "inf-only", "inf-bucket"])
def test_quantile_matches_histogram_quantile(q: float, buckets: tuple[float, ...],
                                             expected: float) -> None:
    """quantile() gives what PromQL's histogram_quantile gives for the same buckets."""
    assert quantile(q, buckets) == pytest.approx(expected)


def test_quantile_of_empty_histogram_is_none() -> None:
    """No observations: no quantile."""
    assert quantile(0.5, _buckets()) is None


def test_latency_reflects_slow_vendor(metrics: CollectorRegistry) -> None:
    """Calls sleeping 30 ms give a p50 in the 25-50 ms bucket."""
    @_vendor(metrics).guard("op")
    def slow() -> str:
        time.sleep(0.03)
        return "ok"

    for _ in range(6):
        slow()
    latency = _entry()["latency"]
    assert 0.025 < latency["p50"] <= 0.05
    assert latency["p50"] <= latency["p99"]


# -- secrets ----------------------------------------------------------------------------------


def test_health_never_contains_arguments_or_messages(metrics: CollectorRegistry) -> None:
    """Call arguments and exception messages never reach the health report."""
    vendor = _vendor(metrics, breaker=vg.Breaker(failures=2))

    @vendor.guard("charge", fallback=lambda failure: "queued")
    def charge(api_key: str, email: str) -> str:
        raise Boom(f"card declined for {email} with {api_key}")

    @vendor.guard("lookup")
    def lookup(api_key: str) -> str:
        raise TypeError(f"bad key {api_key} for user@example.com")

    with pytest.raises(TypeError):
        lookup("sk_live_secret")
    for _ in range(3):  # the third is rejected by the open breaker
        assert charge("sk_live_secret", email="user@example.com") == "queued"
    report = vg.health()
    assert report["vendors"]["acme"]["calls"] == 4
    text = json.dumps(report)
    assert "sk_live_secret" not in text
    assert "user@example.com" not in text


def test_rejections_do_not_hide_the_vendor_failure(metrics: CollectorRegistry) -> None:
    """last_failure keeps the vendor's own failure, not the guard's later rejections."""
    vendor = vg.Vendor("acme", retry=None, breaker=vg.Breaker(failures=1), registry=metrics)

    @vendor.guard("op", fallback=None)
    def down() -> None:
        raise ConnectionRefusedError

    down()
    down()  # rejected by the open circuit
    last = vg.health()["vendors"]["acme"]["last_failure"]
    assert (last["type"], last["outcome"]) == ("ConnectionRefusedError", "error")
