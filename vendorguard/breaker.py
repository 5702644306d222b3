"""Circuit breaker on pybreaker, with admission outside pybreaker's lock.

pybreaker's ``CircuitBreaker.call`` holds a re-entrant lock for the whole protected call, which
serialises every call through one breaker. Here the vendor call runs outside any lock:

1. *admit*: read the mirrored state (one attribute); closed admits at once. Open turns
   half-open here once its time is up; half-open admits a bounded number of trials.
2. the guard makes the call;
3. *record*: the outcome updates pybreaker's storage (its failure and success counters, the
   state), and transitions go through ``CircuitBreaker.open/close/half_open``, so pybreaker's
   storage stays the source of truth (shared state such as Redis keeps working) and its
   listeners see every transition. Recording takes this circuit's lock for a microsecond; a
   success while closed with no failures pending records nothing at all.

Every admission carries the circuit's *generation*, bumped on each transition: the outcome of a
call admitted in an earlier generation is dropped, so a late success cannot close a circuit
whose trial is still running.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if "redis" in sys.modules:
    import pybreaker
else:
    # pybreaker imports redis (and with it, OpenTelemetry) eagerly whenever it is installed;
    # the core must not pay for optional dependencies it does not use.
    sys.modules["redis"] = None  # type: ignore[assignment]
    try:
        import pybreaker
    finally:
        del sys.modules["redis"]

from .events import CircuitStateChanged, emit
from .policy import Breaker

if TYPE_CHECKING:
    from .shared import Shared, Snapshot

__all__ = ["Circuit", "SlowCallError"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
FORCED_OPEN, DISABLED = "forced_open", "disabled"
_FROM_PYBREAKER = {pybreaker.STATE_CLOSED: CLOSED, pybreaker.STATE_OPEN: OPEN,
                   pybreaker.STATE_HALF_OPEN: HALF_OPEN}
_CONTROL_ONLY = Breaker(failures=2**62)
REJECT = -1
"""The generation returned by :meth:`Circuit.admit` for a rejected call."""


class SlowCallError(Exception):
    """Stands in for a call slower than ``Breaker.slow_call`` when it is counted as a failure."""


class _TransitionLock:
    """The circuit's lock. Transitions update metrics under it, but their events and logs are
    announced after it is released, so a slow observer never holds up the breaker."""

    __slots__ = ("_circuit", "_lock")

    def __init__(self, circuit: Circuit) -> None:
        self._circuit = circuit
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self._circuit._announcements:
            self._circuit._announce()


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.circuit._mirror(_FROM_PYBREAKER[new_state.name])


STATE_ORDER = {CLOSED: 0, DISABLED: 1, HALF_OPEN: 2, OPEN: 3, FORCED_OPEN: 4}
"""States from best to worst (a vendor with several circuits is as bad as its worst)."""

clock: Callable[[], float] = time.monotonic
"""The time source of circuits built without their own (``vendorguard.testing`` fakes it)."""


def _now() -> float:
    return clock()


def _nothing() -> None:
    pass


class Circuit:
    """One circuit (per vendor, or per operation), its state mirrored for lock-free reads."""

    def __init__(self, policy: Breaker | None, *, vendor: str, name: str,
                 clock: Callable[[], float] = _now,
                 on_transition: Callable[[str, str], None] | None = None,
                 on_announce: Callable[[str, str], None] | None = None,
                 on_shared_error: Callable[[], None] | None = None) -> None:
        # Without a policy the circuit only carries runtime control (force_open, disable).
        self.counting = policy is not None
        policy = policy or _CONTROL_ONLY
        self.policy = policy
        self.vendor = vendor
        self.name = name
        self._clock = clock
        self._on_transition = on_transition
        self._on_announce = on_announce
        self._announcements: list[tuple[str, str, float]] = []
        self.history: collections.deque[tuple[str, str, float]] = collections.deque(maxlen=10)
        """The last transitions as (from, to, unix time), newest last."""
        self._lock = _TransitionLock(self)
        self.state = CLOSED
        self.gen = 0
        self._pending = False  # failures recorded since the last success replay
        self.open_until = 0.0
        self._retry_after_hint = 0.0
        self._trials = 0
        self._override: str | None = None
        self.track_successes = self.counting and (
            policy.failure_rate is not None or policy.slow_call is not None)
        # Read by the guard's fast path: a success while closed must be recorded.
        self.dirty = self.track_successes
        self._ring: list[bool] = [False] * policy.window
        self._ring_pos = 0
        self._ring_len = 0
        self._ring_failures = 0
        self.count_shared_error: Callable[[], None] = on_shared_error or _nothing
        shared_storage = policy.storage if hasattr(policy.storage, "link") else None
        storage = (None if shared_storage else policy.storage) or \
            pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._storage = storage
        self._cb = pybreaker.CircuitBreaker(
            fail_max=policy.failures if policy.failures is not None else 2**62,
            reset_timeout=policy.reset_after,
            success_threshold=policy.half_open_calls,
            state_storage=storage,
            listeners=[_Listener(self)],
            name=f"{vendor}:{name}",
            throw_new_error_on_trip=False,
        )
        initial = _FROM_PYBREAKER[self._cb.current_state]
        if initial != CLOSED:
            with self._lock:
                self._mirror(initial)
        self.shared: Shared | None = None
        """The link to state shared with other processes (vendorguard.RedisStorage)."""
        self._shared_version = 0
        if shared_storage is not None:
            self.shared = shared_storage.link(self)
            first = self.shared.run("read")
            if first is not None:
                self.adopt(first)

    # -- state ------------------------------------------------------------------------------

    def _mirror(self, new: str) -> None:
        """Adopt a new state (called under pybreaker's lock by its listener, or by control)."""
        old = self.state
        if self._override is not None and new in (CLOSED, OPEN, HALF_OPEN):
            return  # a forced/disabled circuit keeps its override until released
        self.gen += 1
        self.state = new
        self._trials = 0
        self._clear_window()
        if new == OPEN:
            self.open_until = self._clock() + max(self.policy.reset_after,
                                                  self._retry_after_hint)
            self._retry_after_hint = 0.0
        elif new == CLOSED:
            self._pending = False
            self.dirty = self.track_successes
        if old != new:
            self._transition(old, new)

    def _transition(self, old: str, new: str) -> None:
        if self._on_transition is not None:
            self._on_transition(old, new)
        entry = (old, new, time.time())
        self.history.append(entry)
        self._announcements.append(entry)

    def _announce(self) -> None:
        """Emit the transitions recorded under the lock, in order, outside it."""
        while self._announcements:
            try:
                old, new, when = self._announcements.pop(0)
            except IndexError:  # another thread announced it
                return
            if self._on_announce is not None:
                self._on_announce(old, new)
            emit(CircuitStateChanged(self.vendor, self.name, old, new, when))

    def _clear_window(self) -> None:
        self._ring_pos = self._ring_len = self._ring_failures = 0

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when unknown)."""
        if self.state == OPEN:
            return max(0.0, self.open_until - self._clock())
        return 0.0

    # -- admission --------------------------------------------------------------------------

    def admit(self) -> int:
        """Return the generation a call is admitted in, or :data:`REJECT`."""
        state = self.state
        if state in (CLOSED, DISABLED):
            return self.gen
        if state == FORCED_OPEN or (state == OPEN and self._clock() < self.open_until):
            return REJECT
        with self._lock:
            if self.state == OPEN and self._clock() < self.open_until:
                return REJECT
            if self.shared is not None and self.state in (OPEN, HALF_OPEN):
                gen = self._admit_shared()
                if gen is not None:
                    return gen
            if self.state == OPEN:
                self._cb.half_open()  # listener -> _mirror(HALF_OPEN)
            if self.state == HALF_OPEN:
                if self._trials >= self.policy.half_open_calls:
                    return REJECT
                self._trials += 1
                return self.gen
            if self.state == FORCED_OPEN:
                return REJECT
            return self.gen

    def _admit_shared(self) -> int | None:
        """A trial slot from the shared state (under the lock); None when Redis is away."""
        assert self.shared is not None
        snap = self.shared.run("trial", self.policy.half_open_calls,
                               int(max(self.policy.reset_after, 1.0) * 1000))
        if snap is None:
            return None
        self._shared_version = max(self._shared_version, snap[5])
        verdict = snap[4]
        if verdict == "trial":
            if self.state != HALF_OPEN:
                self._cb.half_open()
            self._trials += 1
            return self.gen
        if verdict == "closed":
            self._cb.close()
            return self.gen
        # Open, or half-open with every trial taken: ask again after a while (a trial this
        # process holds keeps running).
        if self.state == HALF_OPEN and self._trials > 0 and snap[0] == HALF_OPEN:
            return REJECT
        if self.state != OPEN:
            self._cb.open()
        self.open_until = self._clock() + max(snap[1], self.shared.storage.refresh)
        return REJECT

    def rejecting(self) -> bool:
        """Whether :meth:`admit` would reject now (a read-only check, no trial slot taken)."""
        state = self.state
        return state == FORCED_OPEN or (state == OPEN and self._clock() < self.open_until)

    def release(self, gen: int) -> None:
        """End an admitted call that recorded no outcome (cancelled, abandoned, caller error,
        bulkhead full), so a half-open trial slot is never held forever."""
        if self.state == HALF_OPEN:
            with self._lock:
                if self.gen == gen and self.state == HALF_OPEN and self._trials > 0:
                    self._trials -= 1
                    self._tell("release")

    # -- recording --------------------------------------------------------------------------

    def success(self, gen: int, duration: float) -> None:
        """Record a successful attempt admitted in generation ``gen``."""
        if self.track_successes:
            slow = self.policy.slow_call
            if slow is not None and duration >= slow:
                self.failure(gen, SlowCallError(), None)
                return
        state = self.state
        if state == CLOSED:
            if self.track_successes:
                with self._lock:
                    if self.gen == gen:
                        self._push(False)
            if not self._pending:
                return
        elif state != HALF_OPEN:
            return
        with self._lock:
            if self.gen != gen:
                return
            self._pending = False
            self.dirty = self.track_successes
            storage = self._storage
            storage.reset_counter()
            if self.state == HALF_OPEN:
                self._trials = max(0, self._trials - 1)
                storage.increment_success_counter()
                if self.shared is not None:
                    snap = self.shared.run("success", self.policy.half_open_calls)
                    if snap is not None:
                        self._adopt(snap)
                        return
                if storage.success_counter >= self.policy.half_open_calls:
                    self._cb.close()  # listener -> _mirror(CLOSED)
            elif self.shared is not None:
                snap = self.shared.run("success", self.policy.half_open_calls)
                if snap is not None:
                    self._adopt(snap)

    def failure(self, gen: int, exc: BaseException, retry_after: float | None) -> None:
        """Record a failed attempt admitted in generation ``gen`` (never a caller error)."""
        state = self.state
        if (state != CLOSED and state != HALF_OPEN) or not self.counting:
            return
        policy = self.policy
        with self._lock:
            if self.gen != gen:
                return
            self._pending = self.dirty = True
            storage = self._storage
            storage.increment_counter()
            trip = rated = self.state == HALF_OPEN
            if not trip and policy.failure_rate is not None:
                trip = rated = self._push(True)
            if not trip and policy.failures is not None:
                trip = storage.counter >= policy.failures
            if self.shared is not None:
                limit = policy.failures or 0
                snap = self.shared.run("failure", limit, int(policy.reset_after * 1000),
                                       int((retry_after or 0.0) * 1000),
                                       int(rated))
                if snap is not None:
                    self._adopt(snap)
                    return
            if trip:
                self._retry_after_hint = retry_after or 0.0
                self._cb.open()  # listener -> _mirror(OPEN)
                self._retry_after_hint = 0.0

    def _push(self, failed: bool) -> bool:
        """Add an outcome to the sliding window; True when the failure rate trips it."""
        ring, size = self._ring, len(self._ring)
        if self._ring_len == size:
            self._ring_failures -= ring[self._ring_pos]
        else:
            self._ring_len += 1
        ring[self._ring_pos] = failed
        self._ring_failures += failed
        self._ring_pos = (self._ring_pos + 1) % size
        rate = self.policy.failure_rate
        return (rate is not None and self._ring_len >= self.policy.min_calls
                and self._ring_failures >= rate * self._ring_len)

    # -- control ----------------------------------------------------------------------------

    def force_open(self) -> None:
        self._set_override(FORCED_OPEN)

    def disable(self) -> None:
        self._set_override(DISABLED)

    def close(self) -> None:
        """Release any override and close the circuit, forgetting counted failures."""
        with self._lock:
            self._override = None
            self._cb.close()  # pybreaker always notifies: the listener mirrors CLOSED
            self._tell("control", "")

    def _set_override(self, state: str) -> None:
        with self._lock:
            self._override = None
            self._mirror(state)
            self._override = state
            self._tell("control", state)

    # -- shared state -----------------------------------------------------------------------

    def _tell(self, script: str, *args: Any) -> None:
        """Run a script on the shared state and take on its answer (under the lock)."""
        if self.shared is not None:
            snap = self.shared.run(script, *args)
            if snap is not None:
                self._adopt(snap)

    def adopt(self, snap: Snapshot) -> None:
        """Take on the shared state read from Redis."""
        with self._lock:
            self._adopt(snap)

    def _adopt(self, snap: Snapshot) -> None:
        state, wait, failures, override, _, version = snap
        if version < self._shared_version:
            return  # read before a change this circuit has already taken on
        self._shared_version = version
        if override != (self._override or ""):
            self._override = None
            if override in (FORCED_OPEN, DISABLED):
                self._mirror(override)
                self._override = override
            else:
                self._cb.close()
            return
        if override:
            return
        local = self.state
        if state == OPEN:
            if local != OPEN:
                self._cb.open()
            self.open_until = self._clock() + wait
        elif state == CLOSED:
            if local != CLOSED:
                self._cb.close()
            if failures > 0:
                self._pending = self.dirty = True  # the next success resets the shared count
        elif state == HALF_OPEN and local != HALF_OPEN:
            if local != OPEN:
                self._cb.open()
            self.open_until = self._clock()  # the next call asks for a trial slot

    def diverged(self, snap: Snapshot) -> bool:
        """Whether this circuit changed on its own while Redis was away (it opened, or an
        operator acted) and the shared state has not."""
        return (snap[0] == CLOSED and not snap[3]
                and (self.state in (OPEN, FORCED_OPEN, DISABLED) or self._override is not None))

    def publish(self) -> Snapshot | None:
        """Write this circuit's state to the shared state (after Redis came back)."""
        assert self.shared is not None
        with self._lock:
            override = self._override or ""
            state = OPEN if self.state == FORCED_OPEN else self.state
            if state == DISABLED:
                state = CLOSED
            wait = max(0.0, self.open_until - self._clock()) if state == OPEN else 0.0
        return self.shared.run("publish", state, int(wait * 1000), override)
