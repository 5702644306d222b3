"""Vendor, the process-wide registry, and runtime control (force_open, disable, ...)."""

from __future__ import annotations

import functools
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prometheus_client import CollectorRegistry

from . import audit, config
from .breaker import STATE_ORDER, Circuit
from .classify import Classifier
from .config import VendorPolicy
from .decorate import decorate
from .events import ControlApplied, emit
from .fallback import MISSING
from .pipeline import Guard, TimeoutMode, is_async_callable
from .policy import Breaker, Bulkhead, Policy, Retry, RetryBudget, Timeout
from .retry import TokenBucket
from .telemetry.metrics import (
    CIRCUIT_STATES,
    OperationMetrics,
    circuit_children,
    families,
    multiprocess,
)
from .telemetry.window import HealthWindow
from .timeouts import WorkerPool

if TYPE_CHECKING:
    from .proxy import VendorProxy

__all__ = ["Vendor", "guard", "vendor", "vendors"]

P = ParamSpec("P")
HealthCheck = Callable[[], "tuple[str, str | None, dict[str, Any]] | None"]
R = TypeVar("R")
_NAME = re.compile(r"[a-z0-9_.-]+")
_log = logging.getLogger("vendorguard")
_registry: dict[str, Vendor] = {}
_registry_lock = threading.Lock()
DEFAULT_POOL_SIZE = 32
"""Worker threads for sync timeouts of a vendor without a bulkhead."""

_DEFAULT_RETRY = Retry()
_DEFAULT_BREAKER = Breaker()


class Vendor:
    """A third-party vendor and its policies; every guard of the vendor shares its circuit,
    bulkhead, retry budget and metrics.

    Args:
        name: ``[a-z0-9_.-]+``, unique in the process; becomes the ``vendor`` metric label.
        timeout: default time bounds (none unless given).
        retry: default retry policy; ``None`` never retries.
        breaker: circuit breaker policy; ``None`` has no breaker.
        bulkhead: concurrency limit; ``None`` has none.
        critical: whether this vendor being down makes the application unhealthy.
        classifier: default failure classifier for the vendor's guards.
        registry: the Prometheus registry (default: the global one).
        judge_error_rate: whether a high recent error rate makes the vendor degraded in
            ``health()`` (flag vendors are judged by their data source instead).
    """

    def __init__(self, name: str, *, timeout: Timeout | None = None,
                 retry: Retry | None = _DEFAULT_RETRY, breaker: Breaker | None = _DEFAULT_BREAKER,
                 bulkhead: Bulkhead | None = None, critical: bool = False,
                 classifier: Classifier | None = None,
                 registry: CollectorRegistry | None = None,
                 judge_error_rate: bool = True) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"Vendor name must match [a-z0-9_.-]+, got {name!r}")
        _check("timeout", timeout, Timeout)
        _check("retry", retry, Retry)
        _check("breaker", breaker, Breaker)
        _check("bulkhead", bulkhead, Bulkhead)
        if classifier is not None and not callable(classifier):
            raise TypeError(f"Vendor.classifier must be callable, got {classifier!r}")
        with _registry_lock:
            if name in _registry:
                raise ValueError(f"a vendor named {name!r} is already registered; "
                                 f"use vendorguard.vendor({name!r}) to get it")
            _registry[name] = self  # claimed before any metric is bound to this vendor
        try:
            self._setup(name, timeout, retry, breaker, bulkhead, critical, classifier,
                        registry)
            self.judge_error_rate = bool(judge_error_rate)
        except BaseException:
            with _registry_lock:
                del _registry[name]
            raise

    def _setup(self, name: str, timeout: Timeout | None, retry: Retry | None,
               breaker: Breaker | None, bulkhead: Bulkhead | None, critical: bool,
               classifier: Classifier | None, registry: CollectorRegistry | None) -> None:
        self.name = name
        self.code_policy = VendorPolicy(timeout=timeout or Timeout(), retry=retry,
                                        breaker=breaker, bulkhead=bulkhead,
                                        critical=bool(critical))
        """The policies given in code (a configuration overrides them field by field)."""
        self.classifier = classifier
        self.families = families(registry)
        self.inflight: list[None] | GaugeCount = in_flight(self.families.in_flight.labels(name))
        self._abandoned = self.families.abandoned.labels(name)
        self._abandoned.set(0)
        self._lock = threading.Lock()
        self._policy_lock = threading.RLock()
        self._circuits: dict[str, Circuit] = {}
        self._buckets: dict[RetryBudget, TokenBucket] = {}
        self._pool: WorkerPool | None = None
        self._guards: dict[str, Guard] = {}
        self._handles: weakref.WeakSet[Guard] = weakref.WeakSet()
        self.operations: dict[str, OperationMetrics] = {}
        """The metric children of every operation guarded so far (read by health())."""
        self.last_failure: tuple[float, str, str] | None = None
        """(unix time, exception type name, outcome) of the latest failed call."""
        self.reported: tuple[str, str | None] | None = None
        self.health_checks: list[HealthCheck] = []
        self.window = HealthWindow()
        self._override: Callable[[Circuit], None] | None = None
        with config.LOCK:
            self._adopt_policy(config.policy_for(name, self.code_policy), None)

    def _adopt_policy(self, policy: VendorPolicy, old: VendorPolicy | None) -> None:
        """Make ``policy`` the vendor's; circuits are rebuilt only when the breaker policy
        changed (their state survives otherwise), and slots when the bulkhead did."""
        self.policy_in_effect = policy
        self.timeout, self.retry, self.critical = policy.timeout, policy.retry, policy.critical
        if old is None or policy.bulkhead != old.bulkhead:
            self.bulkhead = policy.bulkhead
            self.slots = None
            if policy.bulkhead is not None:
                from .bulkhead import Slots
                self.slots = Slots(policy.bulkhead.max_concurrent)
            if self._pool is not None:
                self._pool.max_workers = (policy.bulkhead.max_concurrent if policy.bulkhead
                                          else DEFAULT_POOL_SIZE)
        if old is None or policy.breaker != old.breaker:
            self.breaker = policy.breaker
            with self._lock:
                self._circuits = {}
            if self.breaker is None or self.breaker.scope == "vendor":
                self.circuit_for(self.name)  # its state is reported (and graphed) from the start

    def adopt(self, guard: Guard) -> None:
        """Compile ``guard`` under the policies in effect, and again whenever they change."""
        with self._policy_lock:
            guard.rebuild(*self.policy_in_effect.for_operation(self.name, guard.operation,
                                                                    *guard.own))
            self._handles.add(guard)

    def plan(self, policy: VendorPolicy) -> list[tuple[Guard, Timeout, Retry | None]]:
        """The policies each of the vendor's guards would have under ``policy`` (raises
        :class:`~vendorguard.config.ConfigError` if one is refused)."""
        with self._policy_lock:
            guards = list(self._handles)
        return [(g, *policy.for_operation(self.name, g.operation, *g.own)) for g in guards]

    def apply(self, policy: VendorPolicy, plan: list[tuple[Guard, Timeout, Retry | None]],
              ) -> bool:
        """Adopt a checked ``policy`` and recompile the guards it changes; False if it is the
        one in effect."""
        with self._policy_lock:
            old = self.policy_in_effect
            if policy == old:
                return False
            self._adopt_policy(policy, old)
            layers = policy.breaker != old.breaker or policy.bulkhead != old.bulkhead
            planned = set()
            for guard, timeout, retry in plan:
                planned.add(id(guard))
                if layers or (timeout, retry) != (guard.timeout, guard.retry):
                    guard.rebuild(timeout, retry)
            for guard in list(self._handles):  # built while the plan was made
                if id(guard) not in planned:
                    try:
                        guard.rebuild(*policy.for_operation(self.name, guard.operation, *guard.own))
                    except ValueError as exc:
                        _log.error("vendorguard: %s %s keeps its policies: %s", self.name,
                                   guard.operation, exc)
        return True

    def __repr__(self) -> str:
        return f"<Vendor {self.name!r}>"

    # -- shared parts -------------------------------------------------------------------------

    def circuit_for(self, operation: str) -> Circuit:
        """The circuit guarding ``operation`` (one per vendor unless scoped per operation).

        A vendor without a breaker policy still has a circuit: it never trips on its own but
        carries runtime control, so the kill switch works on every vendor."""
        scoped = self.breaker is not None and self.breaker.scope == "operation"
        key = operation if scoped else self.name
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None:
                children = circuit_children(self.families, self.name, key)
                transitions = self.families.circuit_transitions

                made: list[Circuit] = []

                def on_transition(old: str, new: str) -> None:
                    # A circuit replaced by a reload may still see its last calls end: the
                    # state gauge belongs to the one in use.
                    if not made or self._circuits.get(key) is made[0]:
                        for s in CIRCUIT_STATES:
                            children[s].set(1 if s == new else 0)
                    transitions.labels(self.name, key, old, new).inc()

                def on_announce(old: str, new: str) -> None:
                    _log.warning("vendorguard: %s circuit %s: %s -> %s",
                                 self.name, key, old, new)
                    audit.record("transition", new, vendor=self.name, before=old, after=new,
                                 reason=None if key == self.name else f"circuit {key}",
                                 log=False)

                circuit = Circuit(self.breaker, vendor=self.name, name=key,
                                  on_transition=on_transition, on_announce=on_announce,
                                  on_shared_error=self.families.shared_errors.labels(
                                      self.name).inc)
                made.append(circuit)
                for s in CIRCUIT_STATES:
                    children[s].set(1 if s == circuit.state else 0)
                if self._override is not None:
                    self._override(circuit)  # a kill switch covers circuits made later too
                self._circuits[key] = circuit
            return circuit

    def circuits(self) -> dict[str, Circuit]:
        """The circuits created so far, by circuit name."""
        with self._lock:
            return dict(self._circuits)

    def report(self, status: str | None, detail: str | None = None) -> None:
        """Let an integration say how the vendor is doing beyond what the breaker sees (for
        example stale feature flags): ``"ok"``, ``"degraded"`` or ``"down"``; ``None`` clears
        it. ``detail`` must come from code, never from data (it is served by /vendors)."""
        if status is not None and status not in ("ok", "degraded", "down"):
            raise ValueError(f"status must be 'ok', 'degraded', 'down' or None, got {status!r}")
        self.reported = None if status is None else (status, detail)

    def add_health_check(self, check: HealthCheck) -> None:
        """Add a check that ``vendorguard.health()`` runs when it is read: it returns ``None``
        (nothing to say) or ``(status, detail, extra)``, where status is ``"ok"``,
        ``"degraded"`` or ``"down"``, detail a short text from code, and extra a dict of
        JSON-ready fields added to the vendor's entry (for example the data source's state).
        A check that raises is logged and ignored."""
        if not callable(check):
            raise TypeError(f"health check must be callable, got {check!r}")
        self.health_checks.append(check)

    def bucket_for(self, budget: RetryBudget) -> TokenBucket:
        with self._lock:
            bucket = self._buckets.get(budget)
            if bucket is None:
                bucket = self._buckets[budget] = TokenBucket(budget)
            return bucket

    def worker_pool(self) -> WorkerPool:
        with self._lock:
            if self._pool is None:
                size = self.bulkhead.max_concurrent if self.bulkhead else DEFAULT_POOL_SIZE
                self._pool = WorkerPool(self.name, size, on_abandon=self._abandoned.inc,
                                        on_abandoned_end=self._abandoned.dec)
            return self._pool

    @property
    def policy(self) -> Policy:
        """The vendor's policies as one :class:`~vendorguard.Policy`."""
        return Policy(timeout=self.timeout, retry=self.retry, breaker=self.breaker,
                      bulkhead=self.bulkhead)

    @property
    def abandoned(self) -> int:
        """Sync attempts abandoned at their timeout whose threads are still running."""
        return self._pool.abandoned if self._pool is not None else 0

    @property
    def in_flight(self) -> int:
        return len(self.inflight)

    # -- guarding -----------------------------------------------------------------------------

    def _guard(self, operation: str, fallback: Any, timeout: Timeout | None,
               retry: Retry | Any | None, classifier: Classifier | None, idempotent: bool,
               timeout_mode: TimeoutMode) -> Guard:
        return Guard(self, operation, fallback=fallback, timeout=timeout, retry=retry,
                     classifier=classifier or self.classifier, idempotent=idempotent,
                     timeout_mode=timeout_mode)

    def guard(self, operation: str, *, fallback: Any = MISSING, timeout: Timeout | None = None,
              retry: Retry | Any | None = MISSING, classifier: Classifier | None = None,
              idempotent: bool = False, timeout_mode: TimeoutMode = "thread",
              ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator guarding a sync or async function (or method) as ``operation``.

        Args:
            operation: the operation name (a metric label: name it in code, e.g. "mail.send").
            fallback: served instead of a failure: a value, a callable taking a
                :class:`~vendorguard.Failure`, a :class:`~vendorguard.LastGood`; absent, the
                failure is raised (``None`` is a value).
            timeout, retry: override the vendor's policies for this operation.
            classifier: overrides the vendor's classifier.
            idempotent: whether ambiguous failures (the vendor may have acted) may be retried.
            timeout_mode: ``"thread"`` bounds sync calls on the vendor's worker pool;
                ``"caller"`` leaves it to the callable, which reads
                :func:`vendorguard.timeouts.attempt_timeout`.
        """
        compiled = self._guard(operation, fallback, timeout, retry, classifier, idempotent,
                               timeout_mode)
        return functools.partial(decorate, compiled)  # type: ignore[return-value]

    def call(self, operation: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Call ``fn(*args, **kwargs)`` once through this vendor's guard for ``operation``.

        For a coroutine function, returns an awaitable.
        """
        compiled = self._guards.get(operation)
        if compiled is None:
            compiled = self._guards.setdefault(
                operation, self._guard(operation, MISSING, None, MISSING, None, False, "thread"))
        if is_async_callable(fn):
            return compiled.run_async(fn, args, kwargs)  # type: ignore[return-value]
        return compiled.run_sync(fn, args, kwargs)  # type: ignore[no-any-return]

    def wrap(self, obj: Any, operations: Mapping[str, str] | Iterable[str], *,
             fallback: Any = MISSING, timeout: Timeout | None = None,
             retry: Retry | Any | None = MISSING, classifier: Classifier | None = None,
             idempotent: bool = False, timeout_mode: TimeoutMode = "thread") -> VendorProxy:
        """A proxy of ``obj`` whose listed methods are guarded.

        ``operations`` maps attribute paths to operation names (``{"send": "mail.send",
        "v1.charges.create": "charges.create"}``) or lists attribute paths used as names.
        Everything else passes through untouched; ``isinstance`` and ``repr`` see ``obj``.
        """
        from .proxy import VendorProxy, build_operations

        ops = build_operations(operations)
        guards = {path: self._guard(op, fallback, timeout, retry, classifier, idempotent,
                                    timeout_mode) for path, op in ops.items()}
        return VendorProxy(obj, guards, "")

    # -- runtime control ----------------------------------------------------------------------

    def _control(self, action: str, reason: str | None, actor: str | None,
                 apply: Callable[[Circuit], None], override: bool) -> audit.Entry:
        reason, actor = audit.clean(reason, "reason"), audit.clean(actor, "actor")
        before = self.state
        per_operation = self.breaker is not None and self.breaker.scope == "operation"
        if not per_operation:
            self.circuit_for(self.name)
        with self._lock:
            self._override = apply if override else None
            circuits = list(self._circuits.values())
        for circuit in circuits:
            apply(circuit)
        entry = audit.record("control", action, vendor=self.name, actor=actor, reason=reason,
                             before=before, after=self.state)
        emit(ControlApplied(self.name, action, reason, entry.time, actor))
        return entry

    @property
    def state(self) -> str:
        """The worst state among the vendor's circuits (``closed`` when it has none)."""
        states = [c.state for c in self.circuits().values()]
        return max(states, key=STATE_ORDER.__getitem__, default="closed")

    def force_open(self, reason: str | None = None, *, actor: str | None = None) -> audit.Entry:
        """Kill switch: reject every call (served by fallbacks) until force_close/reset."""
        return self._control("force_open", reason, actor, Circuit.force_open, True)

    def force_close(self, reason: str | None = None, *, actor: str | None = None) -> audit.Entry:
        """Close the circuit now, releasing a force_open or disable."""
        return self._control("force_close", reason, actor, Circuit.close, False)

    def disable(self, reason: str | None = None, *, actor: str | None = None) -> audit.Entry:
        """Metrics only: observe every call but never reject one."""
        return self._control("disable", reason, actor, Circuit.disable, True)

    def reset(self, reason: str | None = None, *, actor: str | None = None) -> audit.Entry:
        """Back to a closed circuit with no failures counted."""
        return self._control("reset", reason, actor, Circuit.close, False)

    def unregister(self) -> None:
        """Remove this vendor from the registry (its metrics stay registered)."""
        with _registry_lock:
            if _registry.get(self.name) is self:
                del _registry[self.name]


class GaugeCount:
    """Calls in flight kept in the gauge itself, for prometheus-client's multiprocess mode
    (which does not export gauges computed at scrape time): ``append``/``pop`` like a list."""

    __slots__ = ("_child", "append", "pop")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.append: Callable[[None], None] = lambda _: child.inc()
        self.pop: Callable[[], None] = child.dec

    def __len__(self) -> int:
        return max(0, int(self._child._value.get()))


def in_flight(child: Any) -> list[None] | GaugeCount:
    """The in-flight count of a vendor. In one process: the length of a list that calls
    append to and pop from (atomic, and far cheaper than a gauge inc/dec pair), read by the
    gauge at scrape time; in multiprocess mode, the gauge's own value."""
    if multiprocess():
        child.set(0)
        return GaugeCount(child)
    calls: list[None] = []
    child.set_function(calls.__len__)
    return calls


def _check(field: str, value: Any, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"Vendor.{field} must be a vendorguard.{kind.__name__} or None, "
                        f"got {value!r}")


def vendor(name: str) -> Vendor:
    """The registered vendor called ``name`` (``KeyError`` if there is none)."""
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"no vendor named {name!r} is registered") from None


def vendors() -> list[Vendor]:
    """The registered vendors, in registration order."""
    with _registry_lock:
        return list(_registry.values())


def get_or_create(name: str, **options: Any) -> Vendor:
    """The vendor called ``name``; if it does not exist, created as ``Vendor(name, **options)``
    (integrations pass their vendor's default policy; a vendor the application registered
    first keeps its own)."""
    with _registry_lock:
        found = _registry.get(name)
    if found is not None:
        return found
    try:
        return Vendor(name, **options)
    except ValueError:
        with _registry_lock:
            found = _registry.get(name)
        if found is None:
            raise
        return found


def guard(vendor: str, operation: str, *, fallback: Any = MISSING,
          timeout: Timeout | None = None, retry: Retry | Any | None = MISSING,
          classifier: Classifier | None = None, idempotent: bool = False,
          timeout_mode: TimeoutMode = "thread") -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Shorthand: ``vg.guard("sendgrid", "mail.send")`` guards with the vendor of that name,
    creating it with default policies if it is not registered yet."""
    return get_or_create(vendor).guard(
        operation, fallback=fallback, timeout=timeout, retry=retry, classifier=classifier,
        idempotent=idempotent, timeout_mode=timeout_mode)


def clear() -> None:
    """Forget every registered vendor (for tests; metrics stay in their registries)."""
    with _registry_lock:
        _registry.clear()
