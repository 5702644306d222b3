"""Policies: defaults, durations, immutability and validation that names the field and value."""

from __future__ import annotations

import dataclasses
import math
from datetime import timedelta
from typing import Any

import pytest

import vendorguard as vg

NAN = math.nan
INF = math.inf


# -- defaults ---------------------------------------------------------------------------------


def test_timeout_defaults_bound_nothing() -> None:
    """Timeout() has no attempt or total bound and reports itself unbounded."""
    t = vg.Timeout()
    assert (t.attempt, t.total, t.bounded) == (None, None, False)


def test_backoff_defaults() -> None:
    """Backoff() is 0.1 s doubling up to 2 s with full jitter."""
    b = vg.Backoff()
    assert (b.initial, b.maximum, b.multiplier, b.jitter) == (0.1, 2.0, 2.0, True)


def test_retry_budget_defaults() -> None:
    """RetryBudget() allows 20% retries plus 10 per second."""
    b = vg.RetryBudget()
    assert (b.ratio, b.floor) == (0.2, 10.0)


def test_retry_defaults() -> None:
    """Retry() makes 3 attempts with the default backoff and budget and no filters."""
    r = vg.Retry()
    assert (r.attempts, r.backoff, r.budget) == (3, vg.Backoff(), vg.RetryBudget())
    assert (r.max_retry_after, r.on, r.wait, r.stop) == (60.0, None, None, None)


def test_breaker_defaults() -> None:
    """Breaker() opens after 5 consecutive failures for 30 s, one circuit per vendor."""
    b = vg.Breaker()
    assert (b.failures, b.failure_rate, b.reset_after) == (5, None, 30.0)
    assert (b.window, b.min_calls, b.slow_call, b.half_open_calls) == (20, 10, None, 1)
    assert (b.scope, b.storage) == ("vendor", None)


def test_bulkhead_defaults() -> None:
    """Bulkhead() allows 10 concurrent calls and does not wait for a slot."""
    b = vg.Bulkhead()
    assert (b.max_concurrent, b.max_wait) == (10, 0.0)


def test_policy_defaults() -> None:
    """Policy() has no timeout bound, default retry and breaker, and no bulkhead."""
    p = vg.Policy()
    assert (p.timeout, p.retry, p.breaker, p.bulkhead) == (
        vg.Timeout(), vg.Retry(), vg.Breaker(), None)


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "read"),
    [
        (lambda d: vg.Timeout(attempt=d), lambda p: p.attempt),
        (lambda d: vg.Timeout(total=d), lambda p: p.total),
        (lambda d: vg.Backoff(initial=d, maximum=d), lambda p: p.initial),
        (lambda d: vg.Backoff(maximum=d), lambda p: p.maximum),
        (lambda d: vg.Retry(max_retry_after=d), lambda p: p.max_retry_after),
        (lambda d: vg.Breaker(reset_after=d), lambda p: p.reset_after),
        (lambda d: vg.Breaker(slow_call=d), lambda p: p.slow_call),
        (lambda d: vg.Bulkhead(max_wait=d), lambda p: p.max_wait),
    ],
    ids=["timeout.attempt", "timeout.total", "backoff.initial", "backoff.maximum",
         "retry.max_retry_after", "breaker.reset_after", "breaker.slow_call",
         "bulkhead.max_wait"],
)
def test_duration_accepts_timedelta(build: Any, read: Any) -> None:
    """A duration given as a timedelta is stored as float seconds."""
    value = read(build(timedelta(milliseconds=2500)))
    assert value == 2.5
    assert type(value) is float


def test_int_seconds_are_stored_as_float() -> None:
    """An int duration is normalised to float seconds."""
    t = vg.Timeout(attempt=2, total=6)
    assert (t.attempt, t.total) == (2.0, 6.0)
    assert type(t.attempt) is float


def test_retry_on_single_type_becomes_tuple() -> None:
    """Retry(on=SomeError) is normalised to a one-element tuple."""
    assert vg.Retry(on=ConnectionError).on == (ConnectionError,)


# -- frozen -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (vg.Timeout(), "attempt"),
        (vg.Backoff(), "initial"),
        (vg.RetryBudget(), "ratio"),
        (vg.Retry(), "attempts"),
        (vg.Breaker(), "failures"),
        (vg.Bulkhead(), "max_concurrent"),
        (vg.Policy(), "retry"),
    ],
    ids=["Timeout", "Backoff", "RetryBudget", "Retry", "Breaker", "Bulkhead", "Policy"],
)
def test_policy_is_frozen(policy: Any, field: str) -> None:
    """Assigning to a field of a policy raises and leaves the value unchanged."""
    before = getattr(policy, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, 7)
    assert getattr(policy, field) == before


@pytest.mark.parametrize(
    "kind", [vg.Timeout, vg.Backoff, vg.RetryBudget, vg.Retry, vg.Breaker, vg.Bulkhead, vg.Policy],
    ids=lambda k: k.__name__)
def test_policy_rejects_positional_arguments(kind: type) -> None:
    """Policies are keyword-only, so a positional value cannot land in the wrong field."""
    with pytest.raises(TypeError):
        kind(1)


# -- bad values -------------------------------------------------------------------------------

BAD_VALUES = [
    # (factory, field named in the message, bad value, error type)
    (lambda: vg.Timeout(attempt=-1), "Timeout.attempt", -1, ValueError),
    (lambda: vg.Timeout(attempt=0), "Timeout.attempt", 0, ValueError),
    (lambda: vg.Timeout(attempt=NAN), "Timeout.attempt", NAN, ValueError),
    (lambda: vg.Timeout(attempt=INF), "Timeout.attempt", INF, ValueError),
    (lambda: vg.Timeout(attempt="2"), "Timeout.attempt", "2", TypeError),
    (lambda: vg.Timeout(attempt=True), "Timeout.attempt", True, TypeError),
    (lambda: vg.Timeout(total=-0.5), "Timeout.total", -0.5, ValueError),
    (lambda: vg.Timeout(total=0.0), "Timeout.total", 0.0, ValueError),
    (lambda: vg.Timeout(total=-INF), "Timeout.total", -INF, ValueError),
    (lambda: vg.Timeout(total=timedelta(seconds=-3)), "Timeout.total", -3.0, ValueError),
    (lambda: vg.Backoff(initial=-0.1), "Backoff.initial", -0.1, ValueError),
    (lambda: vg.Backoff(initial=NAN), "Backoff.initial", NAN, ValueError),
    (lambda: vg.Backoff(initial=None), "Backoff.initial", None, ValueError),
    (lambda: vg.Backoff(maximum=INF), "Backoff.maximum", INF, ValueError),
    (lambda: vg.Backoff(initial=3.0, maximum=1.0), "Backoff.maximum", 1.0, ValueError),
    (lambda: vg.Backoff(multiplier=0.5), "Backoff.multiplier", 0.5, ValueError),
    (lambda: vg.Backoff(multiplier=NAN), "Backoff.multiplier", NAN, ValueError),
    (lambda: vg.Backoff(multiplier=INF), "Backoff.multiplier", INF, ValueError),
    (lambda: vg.Backoff(multiplier="2"), "Backoff.multiplier", "2", TypeError),
    (lambda: vg.Backoff(jitter="yes"), "Backoff.jitter", "yes", TypeError),
    (lambda: vg.RetryBudget(ratio=0), "RetryBudget.ratio", 0, ValueError),
    (lambda: vg.RetryBudget(ratio=1.5), "RetryBudget.ratio", 1.5, ValueError),
    (lambda: vg.RetryBudget(ratio=-0.2), "RetryBudget.ratio", -0.2, ValueError),
    (lambda: vg.RetryBudget(ratio=NAN), "RetryBudget.ratio", NAN, ValueError),
    (lambda: vg.RetryBudget(ratio=True), "RetryBudget.ratio", True, TypeError),
    (lambda: vg.RetryBudget(floor=-1), "RetryBudget.floor", -1, ValueError),
    (lambda: vg.RetryBudget(floor=INF), "RetryBudget.floor", INF, ValueError),
    (lambda: vg.RetryBudget(floor=NAN), "RetryBudget.floor", NAN, ValueError),
    (lambda: vg.RetryBudget(floor="10"), "RetryBudget.floor", "10", TypeError),
    (lambda: vg.Retry(attempts=0), "Retry.attempts", 0, ValueError),
    (lambda: vg.Retry(attempts=-3), "Retry.attempts", -3, ValueError),
    (lambda: vg.Retry(attempts=2.0), "Retry.attempts", 2.0, TypeError),
    (lambda: vg.Retry(attempts=True), "Retry.attempts", True, TypeError),
    (lambda: vg.Retry(backoff=0.2), "Retry.backoff", 0.2, TypeError),
    (lambda: vg.Retry(budget=0.2), "Retry.budget", 0.2, TypeError),
    (lambda: vg.Retry(max_retry_after=-1), "Retry.max_retry_after", -1, ValueError),
    (lambda: vg.Retry(max_retry_after=INF), "Retry.max_retry_after", INF, ValueError),
    (lambda: vg.Retry(on=(int,)), "Retry.on", int, TypeError),
    (lambda: vg.Retry(on=(KeyboardInterrupt,)), "Retry.on", KeyboardInterrupt, TypeError),
    (lambda: vg.Retry(wait=5), "Retry.wait", 5, TypeError),
    (lambda: vg.Retry(stop="never"), "Retry.stop", "never", TypeError),
    (lambda: vg.Breaker(failures=0), "Breaker.failures", 0, ValueError),
    (lambda: vg.Breaker(failures=True), "Breaker.failures", True, TypeError),
    (lambda: vg.Breaker(failures=2.5), "Breaker.failures", 2.5, TypeError),
    (lambda: vg.Breaker(failure_rate=0), "Breaker.failure_rate", 0, ValueError),
    (lambda: vg.Breaker(failure_rate=1.01), "Breaker.failure_rate", 1.01, ValueError),
    (lambda: vg.Breaker(failure_rate=NAN), "Breaker.failure_rate", NAN, ValueError),
    (lambda: vg.Breaker(failure_rate=False), "Breaker.failure_rate", False, TypeError),
    (lambda: vg.Breaker(window=0), "Breaker.window", 0, ValueError),
    (lambda: vg.Breaker(window=20, min_calls=21), "Breaker.min_calls", 21, ValueError),
    (lambda: vg.Breaker(min_calls=0), "Breaker.min_calls", 0, ValueError),
    (lambda: vg.Breaker(slow_call=0), "Breaker.slow_call", 0, ValueError),
    (lambda: vg.Breaker(slow_call=NAN), "Breaker.slow_call", NAN, ValueError),
    (lambda: vg.Breaker(reset_after=0), "Breaker.reset_after", 0, ValueError),
    (lambda: vg.Breaker(reset_after=None), "Breaker.reset_after", None, ValueError),
    (lambda: vg.Breaker(reset_after=INF), "Breaker.reset_after", INF, ValueError),
    (lambda: vg.Breaker(half_open_calls=0), "Breaker.half_open_calls", 0, ValueError),
    (lambda: vg.Breaker(scope="global"), "Breaker.scope", "global", ValueError),
    (lambda: vg.Bulkhead(max_concurrent=0), "Bulkhead.max_concurrent", 0, ValueError),
    (lambda: vg.Bulkhead(max_concurrent=True), "Bulkhead.max_concurrent", True, TypeError),
    (lambda: vg.Bulkhead(max_concurrent=1.5), "Bulkhead.max_concurrent", 1.5, TypeError),
    (lambda: vg.Bulkhead(max_wait=-0.1), "Bulkhead.max_wait", -0.1, ValueError),
    (lambda: vg.Bulkhead(max_wait=NAN), "Bulkhead.max_wait", NAN, ValueError),
    (lambda: vg.Policy(timeout=None), "Policy.timeout", None, TypeError),
    (lambda: vg.Policy(timeout=2.0), "Policy.timeout", 2.0, TypeError),
    (lambda: vg.Policy(retry=3), "Policy.retry", 3, TypeError),
    (lambda: vg.Policy(breaker="on"), "Policy.breaker", "on", TypeError),
    (lambda: vg.Policy(bulkhead=10), "Policy.bulkhead", 10, TypeError),
]
BAD_IDS = [
    "timeout.attempt-negative", "timeout.attempt-zero", "timeout.attempt-nan",
    "timeout.attempt-inf", "timeout.attempt-str", "timeout.attempt-bool",
    "timeout.total-negative", "timeout.total-zero", "timeout.total-neg-inf",
    "timeout.total-negative-timedelta",
    "backoff.initial-negative", "backoff.initial-nan", "backoff.initial-none",
    "backoff.maximum-inf", "backoff.maximum-below-initial", "backoff.multiplier-below-1",
    "backoff.multiplier-nan", "backoff.multiplier-inf", "backoff.multiplier-str",
    "backoff.jitter-str",
    "budget.ratio-zero", "budget.ratio-above-1", "budget.ratio-negative", "budget.ratio-nan",
    "budget.ratio-bool", "budget.floor-negative", "budget.floor-inf", "budget.floor-nan",
    "budget.floor-str",
    "retry.attempts-zero", "retry.attempts-negative", "retry.attempts-float",
    "retry.attempts-bool", "retry.backoff-float", "retry.budget-float",
    "retry.max_retry_after-negative", "retry.max_retry_after-inf", "retry.on-not-exception",
    "retry.on-base-exception", "retry.wait-int", "retry.stop-str",
    "breaker.failures-zero", "breaker.failures-bool", "breaker.failures-float",
    "breaker.failure_rate-zero", "breaker.failure_rate-above-1", "breaker.failure_rate-nan",
    "breaker.failure_rate-bool", "breaker.window-zero", "breaker.min_calls-above-window",
    "breaker.min_calls-zero", "breaker.slow_call-zero", "breaker.slow_call-nan",
    "breaker.reset_after-zero", "breaker.reset_after-none", "breaker.reset_after-inf",
    "breaker.half_open_calls-zero", "breaker.scope-unknown",
    "bulkhead.max_concurrent-zero", "bulkhead.max_concurrent-bool",
    "bulkhead.max_concurrent-float", "bulkhead.max_wait-negative", "bulkhead.max_wait-nan",
    "policy.timeout-none", "policy.timeout-float", "policy.retry-int", "policy.breaker-str",
    "policy.bulkhead-int",
]


@pytest.mark.parametrize(("build", "field", "value", "error"), BAD_VALUES, ids=BAD_IDS)
def test_bad_value_raises_naming_field_and_value(build: Any, field: str, value: Any,
                                                  error: type[Exception]) -> None:
    """A bad policy value raises at construction, naming the field and the value."""
    with pytest.raises(error) as info:
        build()
    assert type(info.value) is error
    message = str(info.value)
    assert field in message
    shown = value.__name__ if isinstance(value, type) else repr(value)
    assert shown in message


def test_breaker_needs_failures_or_failure_rate() -> None:
    """A breaker with neither trip condition is refused."""
    with pytest.raises(ValueError, match="failures or failure_rate"):
        vg.Breaker(failures=None, failure_rate=None)


def test_breaker_rate_only_is_accepted() -> None:
    """A breaker may trip on the failure rate alone."""
    b = vg.Breaker(failures=None, failure_rate=0.5, window=10, min_calls=10)
    assert (b.failures, b.failure_rate) == (None, 0.5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: vg.Backoff(initial=0, maximum=0),
        lambda: vg.RetryBudget(ratio=1, floor=0),
        lambda: vg.Retry(attempts=1, budget=None, max_retry_after=0),
        lambda: vg.Breaker(window=1, min_calls=1, failure_rate=1.0),
        lambda: vg.Bulkhead(max_concurrent=1, max_wait=0),
    ],
    ids=["backoff-zero", "budget-edges", "retry-edges", "breaker-edges", "bulkhead-edges"],
)
def test_boundary_values_are_accepted(build: Any) -> None:
    """Values on the inclusive edge of each range are valid."""
    assert build() == build()


# -- vendor names and fallbacks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Stripe", "send grid", "", "mail/send", "stripé", "stripe\n", 42, None],
    ids=["uppercase", "space", "empty", "slash", "non-ascii", "trailing-newline", "int",
         "none"],
)
def test_vendor_name_outside_charset_raises_naming_it(name: Any, metrics: Any) -> None:
    """A vendor name outside [a-z0-9_.-] is refused with a ValueError that names it."""
    with pytest.raises(ValueError, match="Vendor name") as info:
        vg.Vendor(name, registry=metrics)
    assert repr(name) in str(info.value)
    assert vg.vendors() == []


@pytest.mark.parametrize("name", ["stripe", "send-grid", "ld_client", "v1.api", "0"],
                         ids=["plain", "dash", "underscore", "dot", "digit"])
def test_vendor_name_in_charset_is_accepted(name: str, metrics: Any) -> None:
    """Names made of [a-z0-9_.-] are registered under that name."""
    assert vg.Vendor(name, registry=metrics).name == name


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", 2.0), ("retry", 3), ("breaker", True), ("bulkhead", 10)],
    ids=["timeout", "retry", "breaker", "bulkhead"],
)
def test_vendor_rejects_wrong_policy_type(field: str, value: Any, metrics: Any) -> None:
    """A Vendor given a raw value instead of a policy object raises TypeError naming it."""
    with pytest.raises(TypeError, match=f"Vendor.{field}"):
        vg.Vendor("acme", registry=metrics, **{field: value})


def _two_args(a: Any, b: Any) -> None: ...


def _no_args() -> None: ...


def _kw_only(*, failure: Any) -> None: ...


@pytest.mark.parametrize(
    "fallback",
    [_no_args, _two_args, _kw_only, lambda: "x"],
    ids=["no-args", "two-args", "keyword-only", "lambda-no-args"],
)
def test_fallback_with_wrong_arity_raises_at_decoration(fallback: Any, metrics: Any) -> None:
    """A fallback callable that cannot take one argument raises TypeError when guarding."""
    v = vg.Vendor("acme", registry=metrics)
    with pytest.raises(TypeError, match="one argument"):
        v.guard("op", fallback=fallback)


def test_fallback_arity_error_happens_before_any_call(metrics: Any) -> None:
    """The arity error surfaces at decoration: the function is never called."""
    v = vg.Vendor("acme", registry=metrics)
    calls: list[int] = []
    with pytest.raises(TypeError):
        @v.guard("op", fallback=_two_args)
        def fn() -> None:
            calls.append(1)
    assert calls == []


@pytest.mark.parametrize(
    "fallback",
    [lambda failure: 1, lambda *args: 1, lambda failure, extra=None: 1, print],
    ids=["one-arg", "varargs", "optional-second", "builtin"],
)
def test_fallback_taking_one_argument_is_accepted(fallback: Any, metrics: Any) -> None:
    """Callables that can be called with one positional argument are valid fallbacks."""
    v = vg.Vendor("acme", registry=metrics)
    guarded = v.guard("op", fallback=fallback)(lambda: 1)
    assert guarded() == 1


def test_lastgood_otherwise_with_wrong_arity_raises_at_construction() -> None:
    """LastGood's ``otherwise`` callable is checked for one argument when it is built."""
    with pytest.raises(TypeError, match="one argument"):
        vg.LastGood(otherwise=_two_args)
