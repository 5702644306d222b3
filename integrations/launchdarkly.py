"""LaunchDarkly drop-in: flag evaluations that never raise, never block, and show staleness.

Change one import line::

    from vendorguard.integrations.launchdarkly import LDClient   # was: from ldclient import ...

    client = LDClient(Config("sdk-key"))          # start_wait defaults to 1 s, not 5 s
    client.variation("new-checkout", context, False)

or wrap a client you already have (the ``ldclient.get()`` singleton included)::

    client = vendorguard.integrations.launchdarkly.wrap(ldclient.get())

Evaluation happens in memory, so there is no breaker, retry, timeout thread or span per call:
only a count of every evaluation by outcome (``vendorguard_calls_total{vendor="launchdarkly",
operation="variation"}``) and, when the caller's default is served, *why*
(``vendorguard_fallbacks_total{reason=...}``: ``not_ready``, ``flag_not_found``,
``bad_context``, ``wrong_type``, ``malformed_flag``, ``exception``, ``error``; with
``last_good=True`` the last value this process saw for that flag and context is served instead,
and the reason ends in ``_last_good``). Evaluation never raises: a context that is not a
``Context``, an exception inside the SDK, or a value of the wrong type all give the default.

Health comes from the SDK's data source status, through its listener: the vendor is
``degraded`` while the client has never initialised (after ``start_wait``), or when its data
has been interrupted for longer than ``stale_after`` seconds; ``vendorguard_flag_data_age_seconds``
shows how old the flags in memory may be. ``track``, ``identify`` and ``flush`` enqueue only;
they never raise and are counted. Supported: launchdarkly-server-sdk 9.x.

In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), which does not export
values computed at scrape time, the data age is written on every status change and every
``AGE_REFRESH`` seconds by a daemon thread that stops when the client is closed. Create the
client in each worker, not in a pre-loading server's master: the SDK's threads, and this
thread, do not survive a fork.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

try:
    import ldclient
    from ldclient import Context
    from ldclient.evaluation import EvaluationDetail, FeatureFlagsState
    from ldclient.interfaces import DataSourceState, DataSourceStatus
except ImportError as exc:  # pragma: no cover - exercised only without the SDK
    raise ImportError("vendorguard.integrations.launchdarkly needs the LaunchDarkly SDK: "
                      "pip install 'vendorguard[launchdarkly]'") from exc

import wrapt
from prometheus_client import CollectorRegistry

from vendorguard import events
from vendorguard.registry import Vendor, get_or_create
from vendorguard.telemetry.metrics import (
    OUTCOMES,
    OperationMetrics,
    fast_inc,
    fast_observe,
    multiprocess,
)

from ._ld_sdk import ERRORS, REASONS, SDK_LOGGERS, Evaluation, HookResult, not_ready_filter

__all__ = ["AGE_REFRESH", "DEFAULT_START_WAIT", "FlagGuard", "LDClient", "wrap"]

DEFAULT_START_WAIT = 1.0
"""Seconds the drop-in waits for flags at start (the SDK's 5 s blocks a whole process start
when LaunchDarkly is unreachable; after this, defaults are served until the data arrives)."""
STALE_AFTER = 60.0
AGE_REFRESH = 1.0
"""Seconds between writes of ``vendorguard_flag_data_age_seconds`` in prometheus-client's
multiprocess mode (elsewhere the age is computed at each scrape)."""

_log = logging.getLogger("vendorguard")
_perf = time.perf_counter

_OPERATIONS = ("variation", "variation_detail", "all_flags_state", "track", "identify", "flush")


def _vendor(name: str, registry: CollectorRegistry | None) -> Vendor:
    """The vendor called ``name``, created for in-memory evaluation if it does not exist: no
    breaker or retry, and health that follows the data source (defaults served while flags
    load are expected, not an error rate to judge)."""
    return get_or_create(name, retry=None, breaker=None, registry=registry,
                         judge_error_rate=False)


class FlagGuard:
    """The evaluation guard and data-source health of one LaunchDarkly client.

    Args:
        vendor: the vendorguard vendor name (get-or-create; created without breaker or retry).
        last_good: serve the last value seen for a flag and context instead of the default.
        last_good_entries: at most this many (flag, context) values are remembered.
        stale_after: seconds of interrupted data after which the vendor is degraded.
        spans: a span per evaluation while tracing is on (off: evaluations are cheap and many).
        registry: Prometheus registry for a vendor created here.
    """

    def __init__(self, *, vendor: str = "launchdarkly", last_good: bool = False,
                 last_good_entries: int = 10_000, stale_after: float = STALE_AFTER,
                 spans: bool = False, registry: CollectorRegistry | None = None) -> None:
        if not (stale_after > 0):
            raise ValueError(f"stale_after must be > 0 seconds, got {stale_after!r}")
        if isinstance(last_good_entries, bool) or not isinstance(last_good_entries, int) \
                or last_good_entries < 1:
            raise ValueError(f"last_good_entries must be an int >= 1, got {last_good_entries!r}")
        self.vendor = _vendor(vendor, registry)
        self.last_good = bool(last_good)
        self.stale_after = float(stale_after)
        self.spans = bool(spans)
        self._max_entries = last_good_entries
        self._seen: dict[tuple[str, str], Any] = {}
        self._seen_lock = threading.Lock()
        fam = self.vendor.families
        name = self.vendor.name
        self._calls = {op: {o: fast_inc(fam.calls.labels(name, op, o)) for o in OUTCOMES}
                       for op in _OPERATIONS}
        self._observe = {op: fast_observe(fam.duration.labels(name, op, "success"))
                         for op in ("variation", "variation_detail")}
        self._fallbacks = {
            (op, r): fast_inc(fam.fallbacks.labels(name, op, r))
            for op in ("variation", "variation_detail", "all_flags_state")
            for r in (*REASONS, *(f"{x}_last_good" for x in REASONS))}
        for op in _OPERATIONS:  # so health() and dashboards see the operations at once
            self.vendor.operations.setdefault(op, OperationMetrics(fam, name, op))
        self._client: Any = None
        self._evaluation: Evaluation
        self.variation: Callable[[str, Any, Any], Any]
        self._started = time.time()
        self._status: tuple[DataSourceState, float, str | None] = (
            DataSourceState.INITIALIZING, self._started, None)
        self.vendor.add_health_check(self._health)
        self._age = fam.flag_data_age.labels(name)
        self._age_stop: threading.Event | None = None
        self._age_thread: threading.Thread | None = None
        self._age_lock = threading.Lock()
        self._age_written = multiprocess()  # decided once, like the value class of the gauge
        if self._age_written:
            self._age.set(0.0)
        else:
            self._age.set_function(self.data_age)

    # -- data source ----------------------------------------------------------------------------

    def attach(self, client: Any, start_wait: float | None = None) -> None:
        """Follow ``client``'s data source through its status listener."""
        self._client = client
        self._evaluation = Evaluation(client)
        self.variation = self.compile_variation()
        provider = client.data_source_status_provider
        provider.add_listener(self._on_status)
        self._on_status(provider.status)
        if self._age_written:
            self._start_age_refresh()
        for name in SDK_LOGGERS:  # a logger's filters do not see its children's records
            logging.getLogger(name).addFilter(not_ready_filter)
        offline = getattr(getattr(client, "_config", None), "offline", False)
        if not offline and not client.is_initialized():
            waited = "" if start_wait is None else f" after {start_wait:g} s"
            _log.warning("vendorguard: %s: LaunchDarkly client not initialised%s; serving "
                         "defaults until its data source connects", self.vendor.name, waited)

    def _on_status(self, status: DataSourceStatus) -> None:
        error = status.error
        text = None
        if error is not None:
            kind = getattr(error.kind, "name", str(error.kind)).lower()
            text = f"{kind} {error.status_code}" if error.status_code else kind
        self._status = (status.state, float(status.since), text)
        if self._age_written:
            self._write_age()

    def detach(self) -> None:
        """Stop following the client (it was closed): its health no longer speaks for the
        vendor, so a client that replaces it is judged on its own."""
        client, self._client = self._client, None
        with contextlib.suppress(ValueError):
            self.vendor.health_checks.remove(self._health)
        if client is not None:
            try:
                client.data_source_status_provider.remove_listener(self._on_status)
            except Exception:  # a client half torn down: nothing left to listen to
                _log.debug("vendorguard: launchdarkly status listener already gone")
        self._status = (DataSourceState.OFF, time.time(), None)
        if self._age_written:
            self._stop_age_refresh()
            self._write_age()  # 0 now: the flags of a closed client are not served

    # -- the age gauge in multiprocess mode -----------------------------------------------------

    def _start_age_refresh(self) -> None:
        """Write the data age every AGE_REFRESH seconds from a daemon thread until detach: the
        age grows while the data source is down, with no status change to announce it."""
        self._stop_age_refresh()
        stop = self._age_stop = threading.Event()
        guard = weakref.ref(self)

        def refresh() -> None:
            while not stop.wait(AGE_REFRESH):
                alive = guard()
                if alive is None:
                    return
                alive._write_age()
                del alive

        self._age_thread = threading.Thread(
            target=refresh, name=f"vendorguard-{self.vendor.name}-flag-age", daemon=True)
        self._age_thread.start()

    def _stop_age_refresh(self) -> None:
        """Stop the refresh thread and wait for it, so no write of it lands after ours."""
        stop, thread = self._age_stop, self._age_thread
        self._age_stop = self._age_thread = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _write_age(self) -> None:
        # Serialised, so a status change seen as the client closes cannot land after the 0.
        with self._age_lock:
            try:
                self._age.set(self.data_age())
            except Exception:  # the gauge is an observer: it never breaks the client
                _log.debug("vendorguard: %s: flag data age not written", self.vendor.name,
                           exc_info=True)

    def data_age(self) -> float:
        """Seconds since the flags in memory were last known current: 0 while the data source
        is valid (or, for sources that report no status, such as TestData, once initialised),
        and 0 for a client that was closed."""
        if self._client is None:
            return 0.0
        state, since, _ = self._status
        if state == DataSourceState.VALID or (
                state == DataSourceState.INITIALIZING and self._initialized()):
            return 0.0
        return max(0.0, time.time() - since)

    def _initialized(self) -> bool:
        try:
            return self._client is not None and bool(self._client.is_initialized())
        except Exception:  # a client being closed
            return False

    def _health(self) -> tuple[str, str | None, dict[str, Any]]:
        state, since, error = self._status
        initialized = self._initialized()
        extra = {"data_source": {"state": state.value, "since": since, "error": error,
                                 "initialized": initialized, "age_seconds": self.data_age()}}
        if state == DataSourceState.VALID:
            return "ok", None, extra
        if not initialized:
            return "degraded", "flags not loaded yet: serving defaults", extra
        if state == DataSourceState.OFF:
            return "degraded", "data source off: serving the last flags received", extra
        if state == DataSourceState.INTERRUPTED and time.time() - since > self.stale_after:
            return "degraded", f"flag data stale for over {self.stale_after:g} s", extra
        return "ok", None, extra

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, method: str, key: str, context: Any, default: Any) -> EvaluationDetail:
        """Evaluate through the SDK; never raises. Returns the detail the caller gets."""
        start = _perf()
        tracer = events.tracer if self.spans else None
        span = tracer.tracer.start_span(f"{self.vendor.name} {method}") if tracer else None
        try:
            if method == "variation":
                detail = self._evaluation(key, context, default)
            else:
                detail = self._evaluation.detail(key, context, default)
        except Exception as exc:
            return self._raised(method, key, context, default, exc, span)
        return self._judge(method, key, context, default, detail, start, span)

    def _raised(self, method: str, key: str, context: Any, default: Any, exc: Exception,
                span: Any) -> EvaluationDetail:
        reason = "bad_context" if not isinstance(context, Context) else "exception"
        outcome = "caller_error" if reason == "bad_context" else "error"
        _log.debug("vendorguard: launchdarkly %s failed with %s", method, type(exc).__name__)
        return self._default(method, key, context, default, outcome, reason, span)

    def _judge(self, method: str, key: str, context: Any, default: Any,
               detail: EvaluationDetail, start: float, span: Any) -> EvaluationDetail:
        """Count an evaluation the SDK answered: a served default (and why), or a success."""
        value = detail.value
        if detail.variation_index is None:
            reason_info = detail.reason or {}
            if reason_info.get("kind") == "ERROR":
                outcome, why = ERRORS.get(reason_info.get("errorKind", ""), ("error", "error"))
                return self._default(method, key, context, default, outcome, why, span, detail)
        elif default is not None and not _same_type(value, default):
            return self._default(method, key, context, default, "caller_error", "wrong_type",
                                 span)
        if self.last_good:
            self._remember(key, context, value)
        self._calls[method]["success"](1)
        self._observe[method](_perf() - start)
        if span is not None:
            span.set_attribute("vendorguard.outcome", "success")
            span.end()
        return detail

    def compile_variation(self) -> Callable[[str, Any, Any], Any]:
        """``variation`` with everything pre-bound: a success of the caller's type costs one
        counter, one histogram observation and two clock reads over the SDK's own call."""
        evaluation = self._evaluation
        with_hooks, internal, factory = (evaluation.with_hooks, evaluation.internal,
                                         evaluation.factory)
        slow = self.evaluate
        if with_hooks is None or self.spans or self.last_good:
            return lambda key, context, default: slow("variation", key, context, default).value
        ok, observe = self._calls["variation"]["success"], self._observe["variation"]
        judge, raised, result_type = self._judge, self._raised, HookResult
        perf = _perf

        def variation(key: str, context: Any, default: Any) -> Any:
            start = perf()

            def block() -> Any:
                return result_type(evaluation_detail=internal(key, context, default, factory)[0])

            try:
                detail = with_hooks(key=key, context=context, default_value=default,
                                    method="variation", block=block).evaluation_detail
            except Exception as exc:
                return raised("variation", key, context, default, exc, None).value
            value = detail.value
            if detail.variation_index is None or (
                    type(value) is not type(default) and default is not None):
                return judge("variation", key, context, default, detail, start, None).value
            ok(1)
            observe(perf() - start)
            return value

        return variation

    def _default(self, method: str, key: str, context: Any, default: Any, outcome: str,
                 reason: str, span: Any, detail: EvaluationDetail | None = None
                 ) -> EvaluationDetail:
        value = default
        if self.last_good:
            seen = self._recall(key, context)
            if seen is not _NOTHING:
                value, reason = seen, f"{reason}_last_good"
        self._calls[method][outcome](1)
        self._fallbacks[method, reason](1)
        if span is not None:
            span.set_attributes({"vendorguard.outcome": outcome, "vendorguard.fallback": True,
                                 "vendorguard.fallback.reason": reason})
            span.end()
        if detail is not None and value is detail.value:
            return detail
        return EvaluationDetail(value, None, {"kind": "ERROR", "errorKind": reason.upper()}
                                if detail is None else detail.reason)

    def _remember(self, key: str, context: Any, value: Any) -> None:
        slot = (key, context.fully_qualified_key)
        with self._seen_lock:
            seen = self._seen
            if slot not in seen and len(seen) >= self._max_entries:
                seen.pop(next(iter(seen)))
            seen[slot] = value

    def _recall(self, key: str, context: Any) -> Any:
        if not isinstance(context, Context):
            return _NOTHING
        with self._seen_lock:
            return self._seen.get((key, context.fully_qualified_key), _NOTHING)

    def all_flags_state(self, context: Any, **kwargs: Any) -> FeatureFlagsState:
        try:
            state = ldclient.LDClient.all_flags_state(self._client, context, **kwargs)
        except Exception as exc:
            _log.debug("vendorguard: launchdarkly all_flags_state failed with %s",
                       type(exc).__name__)
            state = None
        if state is None or not state.valid:
            if not isinstance(context, Context) or not context.valid:
                reason = "bad_context"
            elif not self._initialized():
                reason = "not_ready"
            else:
                reason = "exception"
            self._calls["all_flags_state"][
                "caller_error" if reason == "bad_context" else "error"](1)
            self._fallbacks["all_flags_state", reason](1)
            return state if state is not None else FeatureFlagsState(False)
        self._calls["all_flags_state"]["success"](1)
        return state

    def event(self, method: str, *args: Any, **kwargs: Any) -> None:
        """``track``, ``identify`` or ``flush``: enqueue, count, never raise."""
        try:
            getattr(ldclient.LDClient, method)(self._client, *args, **kwargs)
        except Exception as exc:
            outcome = "caller_error" if isinstance(exc, (TypeError, AttributeError)) \
                else "error"
            _log.debug("vendorguard: launchdarkly %s failed with %s", method,
                       type(exc).__name__)
            self._calls[method][outcome](1)
            return
        self._calls[method]["success"](1)


_NOTHING = object()


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


class _Guarded:
    """The guarded methods, shared by the drop-in class and the wrapper of an existing client."""

    @property
    def vendorguard(self) -> FlagGuard:
        raise NotImplementedError

    def variation(self, key: str, context: Any, default: Any) -> Any:
        return self.vendorguard.variation(key, context, default)

    def variation_detail(self, key: str, context: Any, default: Any) -> EvaluationDetail:
        return self.vendorguard.evaluate("variation_detail", key, context, default)

    def all_flags_state(self, context: Any, **kwargs: Any) -> FeatureFlagsState:
        return self.vendorguard.all_flags_state(context, **kwargs)

    def track(self, event_name: str, context: Any, data: Any = None,
              metric_value: Any = None) -> None:
        self.vendorguard.event("track", event_name, context, data, metric_value)

    def identify(self, context: Any) -> None:
        self.vendorguard.event("identify", context)

    def flush(self) -> None:
        self.vendorguard.event("flush")

    def close(self) -> None:
        """Close the client (flushing its events, as the SDK does) and stop following it."""
        try:
            self._close_client()
        finally:
            self.vendorguard.detach()

    def _close_client(self) -> None:
        raise NotImplementedError


class LDClient(_Guarded, ldclient.LDClient):  # type: ignore[misc]
    """``ldclient.LDClient`` whose evaluations never raise and are counted (a drop-in)."""

    def __init__(self, config: Any, start_wait: float = DEFAULT_START_WAIT, *,
                 vendor: str = "launchdarkly", last_good: bool = False,
                 stale_after: float = STALE_AFTER, spans: bool = False,
                 registry: CollectorRegistry | None = None) -> None:
        self._vg = FlagGuard(vendor=vendor, last_good=last_good, stale_after=stale_after,
                             spans=spans, registry=registry)
        super().__init__(config, start_wait)
        self._vg.attach(self, start_wait)

    @property
    def vendorguard(self) -> FlagGuard:
        return self._vg

    def _close_client(self) -> None:
        ldclient.LDClient.close(self)


class _Wrapped(_Guarded, wrapt.BaseObjectProxy):  # type: ignore[type-arg]
    """An existing client with guarded evaluations; everything else is the client's own."""

    def __init__(self, client: Any, guard: FlagGuard) -> None:
        super().__init__(client)
        self._self_guard = guard

    @property
    def vendorguard(self) -> FlagGuard:
        return self._self_guard

    def _close_client(self) -> None:
        self.__wrapped__.close()

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


def wrap(client: Any, **options: Any) -> Any:
    """Guard an existing ``ldclient.LDClient`` (for example ``ldclient.get()``); ``options``
    are those of :class:`FlagGuard`. ``isinstance(wrapped, ldclient.LDClient)`` holds."""
    guard = FlagGuard(**options)
    guard.attach(client)
    return _Wrapped(client, guard)
