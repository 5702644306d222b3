"""Unit tests of the circuit breaker (``vendorguard.breaker.Circuit``) on a fake clock."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import FakeClock, sample
from vendorguard.breaker import REJECT, Circuit
from vendorguard.events import CircuitStateChanged


class VendorDown(Exception):
    """A vendor failure as the breaker sees it."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **policy: object) -> Circuit:
    return Circuit(vg.Breaker(**policy), vendor="v", name="v", clock=clock)  # type: ignore[arg-type]


def fail(circuit: Circuit, times: int = 1, retry_after: float | None = None) -> None:
    """Make ``times`` admitted calls that fail."""
    for _ in range(times):
        gen = circuit.admit()
        assert gen != REJECT
        circuit.failure(gen, VendorDown("down"), retry_after)


def succeed(circuit: Circuit, times: int = 1, duration: float = 0.001) -> None:
    """Make ``times`` admitted calls that succeed."""
    for _ in range(times):
        gen = circuit.admit()
        assert gen != REJECT
        circuit.success(gen, duration)


def tripped(clock: FakeClock, **policy: object) -> Circuit:
    """A circuit that has just opened after its run of failures."""
    policy.setdefault("failures", 1)
    circuit = make(clock, **policy)
    fail(circuit, policy["failures"])  # type: ignore[arg-type]
    assert circuit.state == "open"
    return circuit


def half_open(clock: FakeClock, **policy: object) -> Circuit:
    """A circuit whose reset time is up, still open until the next admission."""
    policy.setdefault("reset_after", 10.0)
    circuit = tripped(clock, **policy)
    clock.advance(policy["reset_after"])  # type: ignore[arg-type]
    return circuit


# -- tripping ---------------------------------------------------------------------------------


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    """N consecutive failures open the circuit, N - 1 do not."""
    circuit = make(clock, failures=3)
    fail(circuit, 2)
    assert circuit.state == "closed"
    fail(circuit)
    assert circuit.state == "open"


def test_success_resets_consecutive_failures(clock: FakeClock) -> None:
    """A success between failures starts the consecutive count again."""
    circuit = make(clock, failures=3)
    fail(circuit, 2)
    succeed(circuit)
    fail(circuit, 2)
    assert circuit.state == "closed"


def test_failure_rate_trips_over_window(clock: FakeClock) -> None:
    """The failure rate over the sliding window opens the circuit once min_calls were seen."""
    circuit = make(clock, failures=None, failure_rate=0.5, window=10, min_calls=4)
    succeed(circuit, 2)
    fail(circuit)
    assert circuit.state == "closed"  # 1 of 3: below min_calls and below the rate
    fail(circuit)
    assert circuit.state == "open"  # 2 of 4 = 50%


def test_failure_rate_waits_for_min_calls(clock: FakeClock) -> None:
    """Below min_calls even 100% failures do not trip the rate."""
    circuit = make(clock, failures=None, failure_rate=0.5, window=10, min_calls=5)
    fail(circuit, 4)
    assert circuit.state == "closed"
    fail(circuit)
    assert circuit.state == "open"


def test_failure_rate_forgets_outcomes_outside_window(clock: FakeClock) -> None:
    """Old failures slide out of the window and no longer count."""
    circuit = make(clock, failures=None, failure_rate=0.5, window=4, min_calls=4)
    fail(circuit)
    succeed(circuit, 3)  # window: F S S S (25%)
    succeed(circuit)  # window: S S S S
    fail(circuit)  # window: S S S F (25%)
    assert circuit.state == "closed"


@pytest.mark.parametrize(
    ("duration", "state"),
    [(0.5, "closed"), (1.0, "open"), (5.0, "open")],
    ids=["fast", "at-threshold", "slow"],
)
def test_slow_calls_count_as_failures(clock: FakeClock, duration: float, state: str) -> None:
    """Successes slower than slow_call count as failures towards the trip."""
    circuit = make(clock, failures=2, slow_call=1.0)
    succeed(circuit, 2, duration=duration)
    assert circuit.state == state


def test_slow_calls_count_in_failure_rate(clock: FakeClock) -> None:
    """Slow calls count as failures in the failure-rate window too."""
    circuit = make(clock, failures=None, failure_rate=0.5, window=4, min_calls=4, slow_call=1.0)
    succeed(circuit, 2, duration=0.1)
    succeed(circuit, 2, duration=2.0)
    assert circuit.state == "open"


# -- open and half-open -----------------------------------------------------------------------


def test_open_rejects_until_reset_after(clock: FakeClock) -> None:
    """An open circuit rejects every call until reset_after has passed."""
    circuit = tripped(clock, reset_after=10.0)
    clock.advance(9.999)
    assert circuit.admit() == REJECT
    assert circuit.state == "open"


def test_open_reports_retry_after(clock: FakeClock) -> None:
    """retry_after() tells how long until a trial may go through."""
    circuit = tripped(clock, reset_after=10.0)
    clock.advance(4.0)
    assert circuit.retry_after() == pytest.approx(6.0)


def test_half_open_after_reset_after(clock: FakeClock) -> None:
    """Once reset_after has passed the next call is admitted as a half-open trial."""
    circuit = half_open(clock)
    assert circuit.admit() != REJECT
    assert circuit.state == "half_open"


@pytest.mark.parametrize("trials", [1, 2, 3], ids=["one", "two", "three"])
def test_half_open_admits_exactly_half_open_calls(clock: FakeClock, trials: int) -> None:
    """Half-open admits half_open_calls concurrent trials and rejects the rest."""
    circuit = half_open(clock, half_open_calls=trials)
    admitted = [circuit.admit() for _ in range(trials + 3)]
    assert [g != REJECT for g in admitted] == [True] * trials + [False] * 3


@pytest.mark.parametrize("trials", [1, 3], ids=["one", "three"])
def test_half_open_trials_succeeding_close(clock: FakeClock, trials: int) -> None:
    """half_open_calls successful trials close the circuit."""
    circuit = half_open(clock, half_open_calls=trials)
    gens = [circuit.admit() for _ in range(trials)]
    for gen in gens[:-1]:
        circuit.success(gen, 0.001)
        assert circuit.state == "half_open"
    circuit.success(gens[-1], 0.001)
    assert circuit.state == "closed"


def test_closed_after_trials_admits_freely(clock: FakeClock) -> None:
    """A circuit closed by its trials admits calls and needs a fresh run of failures."""
    circuit = half_open(clock, failures=2)
    succeed(circuit)
    fail(circuit)
    assert circuit.state == "closed"
    assert circuit.admit() != REJECT


def test_half_open_trial_failing_reopens(clock: FakeClock) -> None:
    """A failed trial opens the circuit again for reset_after."""
    circuit = half_open(clock, half_open_calls=2, reset_after=10.0)
    gen = circuit.admit()
    circuit.admit()
    circuit.failure(gen, VendorDown("still down"), None)
    assert circuit.state == "open"
    assert circuit.admit() == REJECT
    assert circuit.retry_after() == pytest.approx(10.0)


def test_release_frees_half_open_trial(clock: FakeClock) -> None:
    """release() (caller error, cancellation) frees a trial slot for the next call."""
    circuit = half_open(clock, half_open_calls=1)
    gen = circuit.admit()
    assert circuit.admit() == REJECT
    circuit.release(gen)
    assert circuit.admit() != REJECT


def test_released_trial_does_not_stick_half_open(clock: FakeClock) -> None:
    """After a released trial a later trial's success still closes the circuit."""
    circuit = half_open(clock, half_open_calls=1)
    circuit.release(circuit.admit())
    succeed(circuit)
    assert circuit.state == "closed"


def test_release_of_stale_generation_is_ignored(clock: FakeClock) -> None:
    """Releasing a call admitted before the circuit half-opened frees no trial slot."""
    circuit = make(clock, failures=1, reset_after=10.0)
    stale = circuit.admit()
    fail(circuit)
    clock.advance(10.0)
    assert circuit.admit() != REJECT
    circuit.release(stale)
    assert circuit.admit() == REJECT


# -- stale outcomes ---------------------------------------------------------------------------


def test_late_success_does_not_close_during_trial(clock: FakeClock) -> None:
    """A success admitted before the trip does not close a circuit whose trial runs."""
    circuit = make(clock, failures=1, reset_after=10.0)
    late = circuit.admit()
    fail(circuit)
    clock.advance(10.0)
    trial = circuit.admit()
    assert trial != REJECT
    circuit.success(late, 0.001)
    assert circuit.state == "half_open"
    assert circuit.admit() == REJECT  # the trial still holds its slot


def test_late_failure_does_not_reopen(clock: FakeClock) -> None:
    """A failure admitted in an earlier generation does not reopen a recovered circuit."""
    circuit = make(clock, failures=1, reset_after=10.0)
    late = circuit.admit()
    fail(circuit)
    clock.advance(10.0)
    succeed(circuit)
    assert circuit.state == "closed"
    circuit.failure(late, VendorDown("late"), None)
    assert circuit.state == "closed"


def test_late_failure_does_not_fail_trial(clock: FakeClock) -> None:
    """A stale failure arriving while half-open does not reopen the circuit."""
    circuit = make(clock, failures=1, reset_after=10.0)
    late = circuit.admit()
    fail(circuit)
    clock.advance(10.0)
    trial = circuit.admit()
    circuit.failure(late, VendorDown("late"), None)
    assert circuit.state == "half_open"
    circuit.success(trial, 0.001)
    assert circuit.state == "closed"


# -- Retry-After ------------------------------------------------------------------------------


def test_retry_after_keeps_open_longer(clock: FakeClock) -> None:
    """A Retry-After longer than reset_after keeps the circuit open that long."""
    circuit = make(clock, failures=1, reset_after=10.0)
    fail(circuit, retry_after=120.0)
    clock.advance(119.0)
    assert circuit.admit() == REJECT
    clock.advance(1.0)
    assert circuit.admit() != REJECT


def test_short_retry_after_does_not_shorten_open(clock: FakeClock) -> None:
    """A Retry-After shorter than reset_after never shortens the open period."""
    circuit = make(clock, failures=1, reset_after=10.0)
    fail(circuit, retry_after=1.0)
    clock.advance(5.0)
    assert circuit.admit() == REJECT


def test_retry_after_of_non_tripping_failure_is_forgotten(clock: FakeClock) -> None:
    """A Retry-After on a failure that did not trip does not stretch a later trip."""
    circuit = make(clock, failures=2, reset_after=10.0)
    fail(circuit, retry_after=120.0)
    fail(circuit)
    clock.advance(10.0)
    assert circuit.admit() != REJECT


def test_retry_after_on_failed_trial(clock: FakeClock) -> None:
    """A failed half-open trial with a Retry-After reopens for at least that long."""
    circuit = half_open(clock, reset_after=10.0)
    fail(circuit, retry_after=60.0)
    assert circuit.retry_after() == pytest.approx(60.0)


# -- the vendor's exception -------------------------------------------------------------------


def _raised() -> VendorDown:
    """A vendor exception with a traceback, a context and a cause."""
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise VendorDown("outer") from inner
    except VendorDown as exc:
        exc.__context__ = ValueError("context")
        return exc


@pytest.mark.parametrize("failures", [1, 5], ids=["tripping", "counting"])
def test_failure_leaves_exception_untouched(clock: FakeClock, failures: int) -> None:
    """Recording a failure keeps the exception's traceback, context and cause."""
    circuit = make(clock, failures=failures)
    exc = _raised()
    tb, ctx, cause, suppress = (exc.__traceback__, exc.__context__, exc.__cause__,
                                exc.__suppress_context__)
    circuit.failure(circuit.admit(), exc, None)
    assert exc.__traceback__ is tb
    assert exc.__context__ is ctx
    assert exc.__cause__ is cause
    assert exc.__suppress_context__ is suppress


def test_failure_on_trial_leaves_exception_untouched(clock: FakeClock) -> None:
    """Recording a failed half-open trial keeps the exception's traceback and cause."""
    circuit = half_open(clock)
    exc = _raised()
    tb, cause = exc.__traceback__, exc.__cause__
    circuit.failure(circuit.admit(), exc, None)
    assert (exc.__traceback__, exc.__cause__) == (tb, cause)


# -- runtime control --------------------------------------------------------------------------


def test_force_open_rejects_closed_circuit(clock: FakeClock) -> None:
    """force_open rejects every call, however much time passes."""
    circuit = make(clock, reset_after=10.0)
    circuit.force_open()
    clock.advance(1000.0)
    assert circuit.admit() == REJECT
    assert circuit.state == "forced_open"


def test_force_open_ignores_outcomes(clock: FakeClock) -> None:
    """Outcomes of calls admitted before force_open do not move a forced circuit."""
    circuit = make(clock, failures=1)
    gen = circuit.admit()
    circuit.force_open()
    circuit.success(gen, 0.001)
    circuit.failure(gen, VendorDown("late"), None)
    assert circuit.state == "forced_open"


def test_disable_admits_while_failing(clock: FakeClock) -> None:
    """A disabled circuit never rejects, however many failures it sees."""
    circuit = make(clock, failures=1)
    circuit.disable()
    fail(circuit, 10)
    assert circuit.state == "disabled"
    assert circuit.admit() != REJECT


def test_disable_admits_open_circuit(clock: FakeClock) -> None:
    """Disabling an open circuit lets calls through at once."""
    circuit = tripped(clock, reset_after=10.0)
    circuit.disable()
    assert circuit.admit() != REJECT


@pytest.mark.parametrize("override", ["force_open", "disable"], ids=["forced", "disabled"])
def test_close_releases_override(clock: FakeClock, override: str) -> None:
    """close() releases force_open/disable and the circuit counts failures again."""
    circuit = make(clock, failures=2)
    getattr(circuit, override)()
    circuit.close()
    assert circuit.state == "closed"
    fail(circuit, 2)
    assert circuit.state == "open"


def test_close_forgets_counted_failures(clock: FakeClock) -> None:
    """close() on a closed circuit forgets the failures counted so far."""
    circuit = make(clock, failures=3)
    fail(circuit, 2)
    circuit.close()
    fail(circuit, 2)
    assert circuit.state == "closed"


def test_close_closes_open_circuit(clock: FakeClock) -> None:
    """close() on an open circuit admits calls again at once."""
    circuit = tripped(clock, reset_after=10.0)
    circuit.close()
    assert circuit.admit() != REJECT
    assert circuit.state == "closed"


def test_transitions_reported(clock: FakeClock) -> None:
    """Every state change is reported to on_transition as (old, new)."""
    seen: list[tuple[str, str]] = []
    circuit = Circuit(vg.Breaker(failures=1, reset_after=10.0), vendor="v", name="v",
                      clock=clock, on_transition=lambda old, new: seen.append((old, new)))
    fail(circuit)
    clock.advance(10.0)
    succeed(circuit)
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# -- through a guard --------------------------------------------------------------------------


def _down() -> None:
    raise VendorDown("down")


def test_guard_feeds_successes_to_failure_rate(metrics: CollectorRegistry) -> None:
    """Successes through a guard count in the failure-rate window (min_calls reached)."""
    vendor = vg.Vendor("v", retry=None, registry=metrics,
                       breaker=vg.Breaker(failures=None, failure_rate=0.5, window=4, min_calls=4))
    ok, down = vendor.guard("op")(lambda: "ok"), vendor.guard("op")(_down)
    ok()
    ok()
    for _ in range(2):
        with pytest.raises(VendorDown):
            down()
    assert sample(metrics, "vendorguard_circuit_state", vendor="v", circuit="v",
                  state="open") == 1


def test_guard_counts_slow_success_as_failure(metrics: CollectorRegistry) -> None:
    """A successful call through a guard slower than slow_call counts as a failure."""
    vendor = vg.Vendor("v", retry=None, registry=metrics,
                       breaker=vg.Breaker(failures=1, slow_call=0.01))
    assert vendor.guard("op")(lambda: time.sleep(0.05) or "ok")() == "ok"
    with pytest.raises(vg.CircuitOpenError):
        vendor.guard("op")(lambda: "ok")()


# -- model-based ------------------------------------------------------------------------------


class CircuitMachine(RuleBasedStateMachine):
    """Circuit against a reference model of consecutive failures, slow calls and half-open."""

    SLOW = 5.0

    @initialize(
        failures=st.integers(1, 4),
        reset_after=st.floats(1.0, 30.0),
        half_open_calls=st.integers(1, 3),
    )
    def setup(self, failures: int, reset_after: float, half_open_calls: int) -> None:
        self.clock = FakeClock()
        self.circuit = Circuit(
            vg.Breaker(failures=failures, reset_after=reset_after,
                       half_open_calls=half_open_calls, slow_call=self.SLOW),
            vendor="v", name="v", clock=self.clock)
        self.n, self.reset_after, self.trials = failures, reset_after, half_open_calls
        self.state = "closed"
        self.fails = self.successes = 0
        self.open_until = 0.0

    # the model
    def _admit(self) -> bool:
        if self.state == "open":
            if self.clock.now < self.open_until:
                return False
            self.state, self.successes = "half_open", 0
        return True

    def _open(self, hint: float | None) -> None:
        self.state = "open"
        self.open_until = self.clock.now + max(self.reset_after, hint or 0.0)

    def _model_failure(self, hint: float | None) -> None:
        if self.state == "half_open":
            self._open(hint)
            return
        self.fails += 1
        if self.fails >= self.n:
            self._open(hint)

    def _model_success(self) -> None:
        if self.state == "half_open":
            self.successes += 1
            if self.successes >= self.trials:
                self.state, self.fails = "closed", 0
        else:
            self.fails = 0

    def _admitted(self) -> int | None:
        gen = self.circuit.admit()
        expected = self._admit()
        assert (gen != REJECT) == expected
        return gen if expected else None

    # the rules
    @rule(duration=st.floats(0.0, 10.0))
    def call_succeeds(self, duration: float) -> None:
        gen = self._admitted()
        if gen is None:
            return
        self.circuit.success(gen, duration)
        if duration >= self.SLOW:
            self._model_failure(None)
        else:
            self._model_success()

    @rule(retry_after=st.none() | st.floats(0.0, 100.0))
    def call_fails(self, retry_after: float | None) -> None:
        gen = self._admitted()
        if gen is None:
            return
        self.circuit.failure(gen, VendorDown("down"), retry_after)
        self._model_failure(retry_after)

    @rule()
    def caller_error(self) -> None:
        gen = self._admitted()
        if gen is not None:
            self.circuit.release(gen)

    @rule(seconds=st.floats(0.0, 40.0))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def same_state(self) -> None:
        assert self.circuit.state == self.state

    @invariant()
    def same_retry_after(self) -> None:
        expected = max(0.0, self.open_until - self.clock.now) if self.state == "open" else 0.0
        assert self.circuit.retry_after() == pytest.approx(expected)


CircuitMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30,
                                            deadline=None)
TestCircuitModel = CircuitMachine.TestCase


def test_observers_run_outside_the_circuit_lock(metrics: CollectorRegistry) -> None:
    """An observer reacting to a transition can use the vendor's controls without deadlock."""
    vendor = vg.Vendor("v", breaker=vg.Breaker(failures=1), retry=None, registry=metrics)
    done = threading.Event()

    def observer(event: vg.Event) -> None:
        if isinstance(event, CircuitStateChanged) and event.to_state == "open":
            worker = threading.Thread(target=lambda: (vendor.reset("auto"), done.set()),
                                      daemon=True)
            worker.start()
            worker.join(timeout=5)  # would hang here if the circuit lock were still held

    def down() -> None:
        raise ConnectionRefusedError

    vg.add_observer(observer)
    try:
        with pytest.raises(ConnectionRefusedError):
            vendor.guard("op")(down)()
    finally:
        vg.remove_observer(observer)
    assert done.is_set()
    assert vendor.circuits()["v"].state == "closed"


def test_vendor_wait_holds_the_circuit_open_no_longer_than_retries_would_wait(
        metrics: CollectorRegistry) -> None:
    """A Retry-After of a day opens the circuit for at most Retry.max_retry_after."""
    day = 86400.0

    def rate_limited(exc: Exception) -> vg.Verdict:
        return vg.Verdict(vg.Kind.TRANSIENT, retry_after=day)

    vendor = vg.Vendor("v", breaker=vg.Breaker(failures=1, reset_after=1.0),
                       retry=vg.Retry(attempts=1, max_retry_after=30.0),
                       classifier=rate_limited, registry=metrics)

    @vendor.guard("op")
    def limited() -> None:
        raise ConnectionRefusedError

    with pytest.raises(ConnectionRefusedError):
        limited()
    assert 29.0 < vendor.circuits()["v"].retry_after() <= 30.0
