"""Logs on the "vendorguard" logger: transitions, control, rate-limited fallbacks, no secrets."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import FakeClock, sample
from vendorguard.telemetry import logs
from vendorguard.telemetry.logs import FallbackLog

SECRETS = ("sk_live_secret", "user@example.com")


class Boom(Exception):
    """A vendor failure (transient for the default classifier)."""




pytestmark = pytest.mark.usefixtures("no_backoff")



@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every vendorguard record, DEBUG and up."""
    caplog.set_level(logging.DEBUG, logger="vendorguard")
    return caplog


def _vendor(metrics: CollectorRegistry, **kwargs: Any) -> vg.Vendor:
    kwargs.setdefault("retry", None)
    return vg.Vendor("acme", registry=metrics, **kwargs)


def _boom(*args: object, **kwargs: object) -> str:
    raise Boom("vendor down")


def _ok(*args: object, **kwargs: object) -> str:
    return "ok"


def _records(caplog: pytest.LogCaptureFixture, contains: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "vendorguard" and contains in r.getMessage()]


def _transitions(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "vendorguard"
            and re.search(r"\bcircuit\b.*->", r.getMessage())]


# -- breaker transitions ----------------------------------------------------------------------


def _trip(vendor: vg.Vendor, clock: FakeClock) -> None:
    vendor.guard("op", fallback="fb")(_boom)()


def _recover(vendor: vg.Vendor, clock: FakeClock) -> None:
    _trip(vendor, clock)
    clock.advance(11.0)
    vendor.guard("op2", fallback="fb")(_ok)()


def _force(vendor: vg.Vendor, clock: FakeClock) -> None:
    vendor.force_open("kill")


def _disable(vendor: vg.Vendor, clock: FakeClock) -> None:
    vendor.disable("noisy")


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        (_trip, [("closed", "open")]),
        (_recover, [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]),
        (_force, [("closed", "forced_open")]),
        (_disable, [("closed", "disabled")]),
    ],
    ids=["trip", "recover", "force-open", "disable"])
def test_breaker_transitions_logged_at_warning(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry, act: Any,
        expected: list[tuple[str, str]]) -> None:
    """Every transition is one WARNING record naming vendor, circuit, from and to."""
    clock = FakeClock()
    vendor = _vendor(metrics, breaker=vg.Breaker(failures=1, reset_after=10.0))
    vendor.circuit_for("op")._clock = clock
    log.clear()
    act(vendor, clock)
    records = _transitions(log)
    assert len(records) == len(expected)
    for record, (old, new) in zip(records, expected, strict=True):
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert re.search(rf"\bacme circuit acme\b.*\b{old}\b.*\b{new}\b", message), message


def test_per_operation_transition_names_its_circuit(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry) -> None:
    """With a circuit per operation, the transition record names the operation's circuit."""
    vendor = _vendor(metrics, breaker=vg.Breaker(failures=1, scope="operation"))
    vendor.guard("mail.send", fallback="fb")(_boom)()
    [record] = _transitions(log)
    assert record.levelno == logging.WARNING
    assert re.search(r"\bacme\b.*\bmail\.send\b.*\bclosed\b.*\bopen\b", record.getMessage())


# -- control actions --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["force_open", "force_close", "disable", "reset"])
def test_control_action_logged_at_warning_with_reason(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry, action: str) -> None:
    """A control action is a WARNING naming the vendor, the action and its reason."""
    vendor = _vendor(metrics)
    log.clear()
    getattr(vendor, action)("incident 42")
    records = [r for r in _records(log, action) if r not in _transitions(log)]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "acme" in records[0].getMessage()
    assert "incident 42" in records[0].getMessage()


def test_control_action_without_reason_is_logged(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry) -> None:
    """A control action without a reason is still logged at WARNING."""
    vendor = _vendor(metrics)
    log.clear()
    vendor.force_open()
    [record] = [r for r in _records(log, "force_open") if r not in _transitions(log)]
    assert record.levelno == logging.WARNING


# -- fallbacks --------------------------------------------------------------------------------


def test_fallback_logged_at_info(log: pytest.LogCaptureFixture,
                                 metrics: CollectorRegistry) -> None:
    """A served fallback is an INFO record naming vendor, operation and the outcome."""
    _vendor(metrics, breaker=None).guard("mail.send", fallback="fb")(_boom)()
    [record] = _records(log, "fallback")
    assert record.levelno == logging.INFO
    assert re.search(r"\bacme\b.*\bmail\.send\b.*\berror\b", record.getMessage())


def test_fallback_burst_logs_once(log: pytest.LogCaptureFixture,
                                  metrics: CollectorRegistry) -> None:
    """100 fallbacks in a burst produce a single record."""
    guarded = _vendor(metrics, breaker=None).guard("op", fallback="fb")(_boom)
    for _ in range(100):
        assert guarded() == "fb"
    assert len(_records(log, "fallback")) == 1
    assert sample(metrics, "vendorguard_fallbacks_total", vendor="acme", operation="op",
                  reason="error") == 100


@pytest.mark.parametrize("fallback", ["fb", lambda failure: "fb"], ids=["value", "callable"])
def test_fallback_from_open_breaker_is_logged_once(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry, fallback: Any) -> None:
    """Fallbacks served while the circuit is open are logged too, once per burst."""
    vendor = _vendor(metrics)
    guarded = vendor.guard("op", fallback=fallback)(_ok)
    vendor.force_open("kill")
    for _ in range(100):
        assert guarded() == "fb"
    records = _records(log, "fallback")
    assert len(records) == 1
    assert "rejected" in records[0].getMessage()


def test_async_fallback_logged(log: pytest.LogCaptureFixture,
                               metrics: CollectorRegistry) -> None:
    """An async guard's fallbacks are logged at INFO and rate-limited the same way."""
    @_vendor(metrics, breaker=None).guard("op", fallback="fb")
    async def op() -> str:
        raise Boom("down")

    async def burst() -> None:
        for _ in range(20):
            assert await op() == "fb"

    asyncio.run(burst())
    records = _records(log, "fallback")
    assert len(records) == 1
    assert records[0].levelno == logging.INFO


def test_fallback_rate_limit_is_per_operation(log: pytest.LogCaptureFixture,
                                              metrics: CollectorRegistry) -> None:
    """Each operation has its own rate limit."""
    vendor = _vendor(metrics, breaker=None)
    a, b = (vendor.guard(op, fallback="fb")(_boom) for op in ("op.a", "op.b"))
    for _ in range(10):
        a()
        b()
    messages = [r.getMessage() for r in _records(log, "fallback")]
    assert len(messages) == 2
    assert any("op.a" in m for m in messages)
    assert any("op.b" in m for m in messages)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake time.monotonic as seen by vendorguard.telemetry.logs."""
    fake = FakeClock()
    monkeypatch.setattr(logs.time, "monotonic", fake)
    return fake


def test_fallback_log_reports_suppressed_count(log: pytest.LogCaptureFixture,
                                               clock: FakeClock) -> None:
    """After the interval, the next record says how many fallbacks were not logged."""
    flog = FallbackLog("acme", "op", interval=10.0)
    for _ in range(100):
        flog.hit("error")
    clock.advance(10.0)
    flog.hit("timeout")
    records = _records(log, "fallback")
    assert len(records) == 2
    assert "99" not in records[0].getMessage()
    assert "timeout" in records[1].getMessage()
    assert re.search(r"\b99\b", records[1].getMessage())


def test_fallback_log_quiet_until_interval_passes(log: pytest.LogCaptureFixture,
                                                  clock: FakeClock) -> None:
    """Within the interval nothing more is logged; just after it, one record."""
    flog = FallbackLog("acme", "op", interval=10.0)
    flog.hit("error")
    clock.advance(9.9)
    flog.hit("error")
    assert len(_records(log, "fallback")) == 1
    clock.advance(0.1)
    flog.hit("error")
    assert len(_records(log, "fallback")) == 2


def test_fallback_log_without_suppressed_has_no_count(log: pytest.LogCaptureFixture,
                                                      clock: FakeClock) -> None:
    """A record after a quiet interval does not claim any were suppressed."""
    flog = FallbackLog("acme", "op", interval=10.0)
    flog.hit("error")
    clock.advance(60.0)
    flog.hit("error")
    second = _records(log, "fallback")[1].getMessage()
    assert "more" not in second
    assert not re.search(r"\d+ more", second)


def test_fallback_log_respects_level(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    """With the logger above INFO, fallbacks are not logged."""
    caplog.set_level(logging.WARNING, logger="vendorguard")
    FallbackLog("acme", "op").hit("error")
    assert _records(caplog, "fallback") == []


# -- secrets ----------------------------------------------------------------------------------


def test_no_record_contains_arguments_or_exception_messages(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry) -> None:
    """Across retries, fallbacks, trips, rejections and caller errors, no record (message,
    arguments or traceback) holds call arguments or exception messages."""
    def broken_classifier(exc: Exception) -> vg.Kind:
        raise ValueError(f"classifier saw {exc}")

    vendor = _vendor(metrics, retry=vg.Retry(attempts=3, budget=None),
                     breaker=vg.Breaker(failures=3))

    @vendor.guard("charge", fallback=lambda failure: "queued")
    def charge(api_key: str, email: str) -> str:
        raise Boom(f"declined for {email} with {api_key}")

    @vendor.guard("lookup", retry=None)
    def lookup(api_key: str) -> str:
        raise TypeError(f"bad key {api_key} for user@example.com")

    @vendor.guard("classify", fallback="fb", classifier=broken_classifier, retry=None)
    def classify(api_key: str) -> str:
        raise Boom(f"{api_key} user@example.com")

    @vendor.guard("notify", fallback="fb", retry=None)
    async def notify(email: str) -> str:
        raise Boom(f"cannot reach {email} sk_live_secret")

    with pytest.raises(TypeError):
        lookup("sk_live_secret")
    assert classify("sk_live_secret") == "fb"
    assert asyncio.run(notify("user@example.com")) == "fb"
    for _ in range(3):  # trips the breaker, then is rejected
        assert charge("sk_live_secret", email="user@example.com") == "queued"
    vendor.reset("incident over")

    assert _transitions(log)  # the scenario did log something
    assert _records(log, "fallback")
    for record in log.records:
        text = f"{logging.Formatter().format(record)} {record.args!r}"
        for secret in SECRETS:
            assert secret not in text, text


# -- observers --------------------------------------------------------------------------------


@pytest.fixture
def broken_observer() -> Iterator[list[str]]:
    """An observer that raises on every event (removed afterwards)."""
    seen: list[str] = []

    def observer(event: vg.Event) -> None:
        seen.append(type(event).__name__)
        raise RuntimeError("observer bug")

    vg.add_observer(observer)
    try:
        yield seen
    finally:
        vg.remove_observer(observer)


@pytest.mark.parametrize(("fn", "expected"), [(_ok, "ok"), (_boom, "fb")],
                         ids=["success", "fallback"])
def test_failing_observer_is_logged_and_call_succeeds(
        log: pytest.LogCaptureFixture, metrics: CollectorRegistry,
        broken_observer: list[str], fn: Any, expected: str) -> None:
    """An observer that raises is logged with its failure; the call's result is unaffected."""
    guarded = _vendor(metrics).guard("op", fallback="fb")(fn)
    assert guarded() == expected
    assert "CallEnded" in broken_observer
    records = _records(log, "observer")
    assert len(records) == len(broken_observer)
    for record in records:
        assert record.levelno >= logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
    outcome = "success" if expected == "ok" else "error"
    assert sample(metrics, "vendorguard_calls_total", vendor="acme", operation="op",
                  outcome=outcome) == 1
