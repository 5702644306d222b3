"""Configuration: mappings, TOML files and environment variables over the policies in code.

Everything a configuration can say is checked here against what the vendors and their guards
then do; every refused configuration is checked to name its key and origin and to change
nothing. The property-based tests generate configurations from the schema.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import vendorguard as vg
from vendorguard import audit, config
from vendorguard import registry as vg_registry
from vendorguard.timeouts import attempt_timeout

TOKEN = "control-token-0123456789abcdef"


class Boom(Exception):
    """A transient vendor failure."""


pytestmark = pytest.mark.usefixtures("no_backoff")


def write(tmp_path: Path, text: str, name: str = "vendorguard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def state(v: vg.Vendor) -> tuple[Any, ...]:
    """Everything a configuration may change on a vendor."""
    return (v.policy_in_effect, v.timeout, v.retry, v.breaker, v.bulkhead, v.critical)


def line(guard: vg.Guard, prefix: str) -> str:
    """The one line of ``guard.describe()`` starting with ``prefix``."""
    [found] = [entry for entry in guard.describe() if entry.startswith(prefix)]
    return found


# -- good configurations ------------------------------------------------------------------

FULL = """
[vendors.sendgrid]
critical = true
timeout.attempt = 2.0
timeout.total = 6.0
retry.attempts = 4
retry.max_retry_after = 10
retry.backoff.initial = 0.5
retry.backoff.maximum = 4.0
retry.backoff.multiplier = 3
retry.backoff.jitter = false
retry.budget.ratio = 0.5
retry.budget.floor = 2
breaker.failures = 7
breaker.reset_after = 12.5
breaker.half_open_calls = 2
breaker.slow_call = 1.5
breaker.window = 30
breaker.min_calls = 5
bulkhead.max_concurrent = 9
bulkhead.max_wait = 0.25

[vendors.sendgrid.operations."mail.send"]
timeout.attempt = 1.0
retry.attempts = 2
retry.backoff.initial = 0.1
"""

EXPECTED_RETRY = vg.Retry(
    attempts=4, max_retry_after=10.0,
    backoff=vg.Backoff(initial=0.5, maximum=4.0, multiplier=3.0, jitter=False),
    budget=vg.RetryBudget(ratio=0.5, floor=2.0))
EXPECTED_BREAKER = vg.Breaker(failures=7, reset_after=12.5, half_open_calls=2, slow_call=1.5,
                              window=30, min_calls=5)


@pytest.fixture(params=["mapping", "file", "pathlike"])
def full_source(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, str]:
    """FULL as a mapping, a file path (str) and a pathlib.Path, with the expected source."""
    if request.param == "mapping":
        return tomllib.loads(FULL), "mapping"
    path = write(tmp_path, FULL)
    return (str(path) if request.param == "file" else path), str(path)


def test_full_configuration_sets_vendor_and_operation_policies(
        metrics: CollectorRegistry, full_source: tuple[Any, str]) -> None:
    """Every vendor-level field and the per-operation settings reach the vendor's policies and
    each guard's pipeline, from a mapping or a TOML file alike."""
    source, expected_source = full_source
    v = vg.Vendor("sendgrid", timeout=vg.Timeout(attempt=5.0, total=20.0),
                  retry=vg.Retry(attempts=2), breaker=vg.Breaker(), registry=metrics)

    @v.guard("mail.send")
    def send() -> str:
        return "sent"

    @v.guard("contacts.get")
    def contacts() -> str:
        return "contacts"

    @v.guard("stats.get", timeout=vg.Timeout(attempt=9.0))
    def stats() -> str:
        return "stats"

    result = vg.configure(source, env=False)

    assert result.generation == 1 == config.generation()
    assert result.source == expected_source
    assert result.get("vendors", "sendgrid", "timeout", "attempt") == 2.0
    assert result.get("vendors", "sendgrid", "operations", "mail.send", "retry",
                      "attempts") == 2
    assert config.current() is result
    assert v.critical is True
    assert v.timeout == vg.Timeout(attempt=2.0, total=6.0)
    assert v.retry == EXPECTED_RETRY
    assert v.breaker == EXPECTED_BREAKER
    assert v.bulkhead == vg.Bulkhead(max_concurrent=9, max_wait=0.25)
    assert v.slots is not None
    assert v.slots.limit == 9

    g_contacts = contacts.vendorguard  # type: ignore[attr-defined]
    assert g_contacts.timeout == vg.Timeout(attempt=2.0, total=6.0)
    assert g_contacts.retry == EXPECTED_RETRY
    assert g_contacts.circuit is not None
    assert g_contacts.circuit.policy == EXPECTED_BREAKER
    assert g_contacts.describe() == [
        "observe: metrics + events",
        "fallback: none (failures are raised)",
        "total deadline: 6.0s and any enclosing vg.deadline",
        f"retry: 4 attempts, budget {EXPECTED_RETRY.budget}",
        f"breaker: sendgrid ({EXPECTED_BREAKER})",
        "bulkhead: 9 concurrent",
        "attempt timeout: 2.0s (thread)",
        "the vendor call",
    ]

    g_send = send.vendorguard  # type: ignore[attr-defined]
    assert g_send.timeout == vg.Timeout(attempt=1.0, total=6.0)  # the operation's attempt
    assert g_send.retry == dataclasses.replace(
        EXPECTED_RETRY, attempts=2, backoff=dataclasses.replace(EXPECTED_RETRY.backoff,
                                                                initial=0.1))
    assert line(g_send, "retry:") == f"retry: 2 attempts, budget {EXPECTED_RETRY.budget}"
    assert line(g_send, "attempt timeout:") == "attempt timeout: 1.0s (thread)"
    assert g_send.circuit is g_contacts.circuit  # one circuit per vendor

    # The guard's own timeout from code is more specific than the vendor's settings.
    g_stats = stats.vendorguard  # type: ignore[attr-defined]
    assert g_stats.timeout == vg.Timeout(attempt=9.0)
    assert g_stats.retry == EXPECTED_RETRY

    assert (send(), contacts(), stats()) == ("sent", "contacts", "stats")


def test_configured_retry_attempts_are_what_a_failing_call_gets(
        metrics: CollectorRegistry) -> None:
    """The configured attempts are not just reported: a failing call is tried that often,
    vendor-wide and per operation."""
    v = vg.Vendor("acme", retry=vg.Retry(attempts=2), breaker=None, registry=metrics)
    tries = {"a": 0, "b": 0}

    def failing(which: str) -> None:
        tries[which] += 1
        raise Boom(which)

    vg.configure({"vendors": {"acme": {"retry": {"attempts": 4}, "operations": {
        "b": {"retry": {"attempts": 3}}}}}}, env=False)
    for which in ("a", "b"):
        with pytest.raises(Boom):
            v.call(which, failing, which)
    assert tries == {"a": 4, "b": 3}


def test_field_level_override_keeps_the_other_fields_from_code(
        metrics: CollectorRegistry) -> None:
    """Setting timeout.attempt leaves timeout.total (and every other policy) as in code."""
    code = {"timeout": vg.Timeout(attempt=5.0, total=20.0), "retry": vg.Retry(attempts=2),
                "breaker": vg.Breaker(failures=3), "bulkhead": vg.Bulkhead(max_concurrent=4)}
    v = vg.Vendor("acme", registry=metrics, **code)  # type: ignore[arg-type]
    guarded = v.guard("op")(lambda: "ok")

    vg.configure({"vendors": {"acme": {"timeout": {"attempt": 1.5}}}}, env=False)

    assert v.timeout == vg.Timeout(attempt=1.5, total=20.0)
    assert (v.retry, v.breaker, v.bulkhead) == (code["retry"], code["breaker"],
                                                code["bulkhead"])
    assert guarded.vendorguard.timeout == vg.Timeout(attempt=1.5, total=20.0)  # type: ignore[attr-defined]
    assert v.code_policy.timeout == vg.Timeout(attempt=5.0, total=20.0)


def test_none_clears_nullable_fields(metrics: CollectorRegistry) -> None:
    """'none' sets a nullable field to None: no total bound, no consecutive-failure count,
    no slow-call threshold."""
    v = vg.Vendor("acme", timeout=vg.Timeout(attempt=5.0, total=20.0),
                  breaker=vg.Breaker(failures=3, slow_call=2.0), registry=metrics)
    guarded = v.guard("op")(lambda: "ok")
    vg.configure({"vendors": {"acme": {
        "timeout": {"total": "none"},
        "breaker": {"failures": "None", "failure_rate": 0.5, "slow_call": "none"}}}},
        env=False)

    assert v.timeout == vg.Timeout(attempt=5.0, total=None)
    assert v.breaker == vg.Breaker(failures=None, failure_rate=0.5, slow_call=None)
    g = guarded.vendorguard  # type: ignore[attr-defined]
    assert line(g, "total deadline:") == "total deadline: enclosing vg.deadline only"
    assert g.circuit.policy.failures is None


def test_none_is_refused_for_a_field_that_is_not_nullable(metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", registry=metrics)
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"acme": {"retry": {"attempts": "none"}}}}, env=False)
    assert info.value.key == "vendors.acme.retry.attempts"
    assert "'none'" in str(info.value)
    assert v.retry == vg.Retry()


def test_enabled_false_switches_layers_off(metrics: CollectorRegistry) -> None:
    """retry/breaker/bulkhead.enabled = false remove the layer: no retry, a circuit that
    counts nothing (it still carries the kill switch), no bulkhead."""
    v = vg.Vendor("acme", retry=vg.Retry(attempts=3), breaker=vg.Breaker(failures=2),
                  bulkhead=vg.Bulkhead(max_concurrent=2), registry=metrics)
    tries: list[int] = []

    @v.guard("op")
    def failing() -> None:
        tries.append(1)
        raise Boom

    vg.configure({"vendors": {"acme": {"retry": {"enabled": False},
                                       "breaker": {"enabled": False},
                                       "bulkhead": {"enabled": False}}}}, env=False)
    assert (v.retry, v.breaker, v.bulkhead, v.slots) == (None, None, None, None)
    g = failing.vendorguard  # type: ignore[attr-defined]
    assert line(g, "retry:") == "retry: none"
    assert line(g, "bulkhead:") == "bulkhead: none"
    assert g.circuit is not None
    assert not g.circuit.counting
    for _ in range(5):
        with pytest.raises(Boom):
            failing()
    assert len(tries) == 5  # one attempt per call
    assert v.state == "closed"  # five failures did not open anything


def test_enabled_true_switches_layers_on_with_defaults(metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", retry=None, breaker=None, bulkhead=None, registry=metrics)
    vg.configure({"vendors": {"acme": {"retry": {"enabled": True},
                                       "breaker": {"enabled": True},
                                       "bulkhead": {"enabled": True}}}}, env=False)
    assert (v.retry, v.breaker, v.bulkhead) == (vg.Retry(), vg.Breaker(), vg.Bulkhead())


def test_budget_enabled_false_removes_the_retry_budget(metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", retry=vg.Retry(attempts=3), registry=metrics)
    guarded = v.guard("op")(lambda: "ok")
    vg.configure({"vendors": {"acme": {"retry": {"budget": {"enabled": False}}}}}, env=False)
    assert v.retry == vg.Retry(attempts=3, budget=None)
    assert guarded.vendorguard.pipeline.bucket is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(("section", "key", "value"), [
    ("retry", ("attempts",), 2),
    ("breaker", ("failures",), 3),
    ("bulkhead", ("max_concurrent",), 4),
    ("retry.budget", ("ratio",), 0.5),
])
def test_a_field_set_next_to_enabled_false_is_refused(
        metrics: CollectorRegistry, section: str, key: tuple[str, ...], value: Any) -> None:
    v = vg.Vendor("acme", registry=metrics)
    before = state(v)
    parts = section.split(".")
    table: dict[str, Any] = {"enabled": False, key[0]: value}
    for part in reversed(parts):
        table = {part: table}
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"acme": table}}, env=False)
    assert info.value.key == f"vendors.acme.{section}.{key[0]}"
    assert info.value.origin == "mapping"
    assert "enabled = false" in info.value.problem
    assert state(v) == before
    assert config.generation() == 0


def test_retry_backoff_set_next_to_retry_enabled_false_is_refused(
        metrics: CollectorRegistry) -> None:
    """retry.backoff.* next to retry.enabled = false is refused, like retry.attempts is, and
    names the nested key (it is never silently dropped)."""
    vg.Vendor("acme", registry=metrics)
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"acme": {"retry": {"enabled": False,
                                                     "backoff": {"initial": 1.0}}}}},
                     env=False)
    assert info.value.key == "vendors.acme.retry.backoff.initial"


def test_retry_backoff_on_a_vendor_without_retry_switches_retry_on(
        metrics: CollectorRegistry) -> None:
    """On a vendor whose code says retry=None, retry.backoff.initial alone switches retry on
    with defaults for the rest, as retry.attempts alone does: a setting never goes unheard."""
    v = vg.Vendor("acme", retry=None, registry=metrics)
    vg.configure({"vendors": {"acme": {"retry": {"backoff": {"initial": 1.0}}}}}, env=False)
    assert v.retry is not None
    assert v.retry.backoff.initial == 1.0
    assert v.retry.attempts == vg.Retry().attempts


def test_operation_settings_apply_to_that_operation_only(metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", timeout=vg.Timeout(attempt=5.0), retry=vg.Retry(attempts=3),
                  registry=metrics)
    a = v.guard("op.a")(lambda: "a").vendorguard  # type: ignore[attr-defined]
    b = v.guard("op.b")(lambda: "b").vendorguard  # type: ignore[attr-defined]
    vg.configure({"vendors": {"acme": {"operations": {
        "op.a": {"timeout": {"attempt": 1.0}, "retry": {"enabled": False}}}}}}, env=False)
    assert (a.timeout, a.retry) == (vg.Timeout(attempt=1.0), None)
    assert (b.timeout, b.retry) == (vg.Timeout(attempt=5.0), vg.Retry(attempts=3))
    assert v.timeout == vg.Timeout(attempt=5.0)
    assert line(a, "retry:") == "retry: none"


def test_operation_settings_override_the_guards_own_code_policy(
        metrics: CollectorRegistry) -> None:
    """Most specific wins: operation settings > the guard's code > the vendor's settings."""
    v = vg.Vendor("acme", registry=metrics)
    own = v.guard("op", timeout=vg.Timeout(attempt=9.0, total=30.0),
                  retry=vg.Retry(attempts=5))(lambda: "ok").vendorguard  # type: ignore[attr-defined]
    vg.configure({"vendors": {"acme": {
        "timeout": {"attempt": 2.0}, "retry": {"attempts": 2},
        "operations": {"op": {"timeout": {"attempt": 1.0}}}}}}, env=False)
    assert own.timeout == vg.Timeout(attempt=1.0, total=30.0)
    assert own.retry == vg.Retry(attempts=5)  # its own retry beats the vendor's setting


def test_vendor_configured_before_it_exists_gets_the_config_at_creation(
        metrics: CollectorRegistry) -> None:
    settings_ = vg.configure({"vendors": {
        "late": {"timeout": {"attempt": 1.5}, "critical": True,
                 "operations": {"op": {"retry": {"attempts": 5}}}},
        "shorthand": {"retry": {"attempts": 6}}}}, env=False)
    assert settings_.generation == 1

    v = vg.Vendor("late", timeout=vg.Timeout(attempt=5.0, total=9.0), registry=metrics)
    assert v.timeout == vg.Timeout(attempt=1.5, total=9.0)
    assert v.critical is True
    g = v.guard("op")(lambda: "ok").vendorguard  # type: ignore[attr-defined]
    assert g.retry is not None
    assert g.retry.attempts == 5
    assert config.generation() == 1  # creating a vendor is not a new configuration

    shorthand = vg.guard("shorthand", "op")(lambda: "ok")
    assert vg.vendor("shorthand").retry == vg.Retry(attempts=6)
    assert shorthand.vendorguard.retry == vg.Retry(attempts=6)  # type: ignore[attr-defined]
    assert shorthand() == "ok"


def test_setting_for_an_unregistered_vendor_is_checked_now(tmp_path: Path) -> None:
    path = write(tmp_path, "[vendors.later]\nretry.attempts = 0\n")
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(path, env=False)
    assert (info.value.key, info.value.origin) == ("vendors.later.retry.attempts", str(path))
    assert config.generation() == 0


def test_settings_records_each_value_with_its_origin(tmp_path: Path) -> None:
    path = write(tmp_path, "[vendors.acme]\ntimeout.attempt = 3.0\nretry.attempts = 4\n")
    result = vg.configure(path, env={"VENDORGUARD_ACME__TIMEOUT__ATTEMPT": "1.5"})
    values = result.values
    assert values["vendors", "acme", "timeout", "attempt"].origin == \
        "environment variable VENDORGUARD_ACME__TIMEOUT__ATTEMPT"
    assert values["vendors", "acme", "retry", "attempts"].origin == str(path)
    assert result.get("vendors", "acme", "nothing") is None
    assert result.vendor_names() == {"acme"}


# -- precedence: code < file < environment --------------------------------------------------

PRECEDENCE_FILE = "[vendors.acme]\ntimeout.attempt = 3.0\nretry.attempts = 4\n"


def _precedence_vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return vg.Vendor("acme", timeout=vg.Timeout(attempt=5.0, total=20.0),
                     retry=vg.Retry(attempts=2), registry=metrics)


def test_precedence_with_an_env_mapping(tmp_path: Path, metrics: CollectorRegistry) -> None:
    v = _precedence_vendor(metrics)
    path = write(tmp_path, PRECEDENCE_FILE)
    vg.configure(path, env={"VENDORGUARD_ACME__TIMEOUT__ATTEMPT": "1.5"})
    assert v.timeout == vg.Timeout(attempt=1.5, total=20.0)  # env > file > code
    assert v.retry == vg.Retry(attempts=4)  # file > code


def test_precedence_with_os_environ(tmp_path: Path, metrics: CollectorRegistry,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    v = _precedence_vendor(metrics)
    path = write(tmp_path, PRECEDENCE_FILE)
    monkeypatch.setenv("VENDORGUARD_ACME__TIMEOUT__ATTEMPT", "1.5")
    vg.configure(path)
    assert v.timeout == vg.Timeout(attempt=1.5, total=20.0)
    assert v.retry == vg.Retry(attempts=4)


def test_vendorguard_config_names_the_file(tmp_path: Path, metrics: CollectorRegistry,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    v = _precedence_vendor(metrics)
    path = write(tmp_path, PRECEDENCE_FILE)
    monkeypatch.setenv("VENDORGUARD_CONFIG", str(path))
    monkeypatch.setenv("VENDORGUARD_ACME__RETRY__ATTEMPTS", "6")
    result = vg.configure()
    assert result.source == str(path)
    assert v.timeout == vg.Timeout(attempt=3.0, total=20.0)
    assert v.retry == vg.Retry(attempts=6)


def test_vendorguard_config_in_an_env_mapping(tmp_path: Path, metrics: CollectorRegistry,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An env mapping is read instead of os.environ, for the file name too."""
    v = _precedence_vendor(metrics)
    path = write(tmp_path, PRECEDENCE_FILE)
    monkeypatch.setenv("VENDORGUARD_ACME__RETRY__ATTEMPTS", "6")  # not read
    result = vg.configure(env={"VENDORGUARD_CONFIG": str(path)})
    assert result.source == str(path)
    assert v.retry == vg.Retry(attempts=4)


def test_env_false_ignores_environment_variables(tmp_path: Path, metrics: CollectorRegistry,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    v = _precedence_vendor(metrics)
    path = write(tmp_path, PRECEDENCE_FILE)
    monkeypatch.setenv("VENDORGUARD_ACME__TIMEOUT__ATTEMPT", "1.5")
    monkeypatch.setenv("VENDORGUARD_ACME__NOT_A_KEY", "x")  # would be refused if read
    vg.configure(path, env=False)
    assert v.timeout == vg.Timeout(attempt=3.0, total=20.0)


def test_no_source_and_no_file_is_code_only(metrics: CollectorRegistry,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VENDORGUARD_CONFIG", raising=False)
    v = _precedence_vendor(metrics)
    result = vg.configure(env={"VENDORGUARD_ACME__RETRY__ATTEMPTS": "3"})
    assert result.source == "code"
    assert v.retry == vg.Retry(attempts=3)
    assert v.timeout == vg.Timeout(attempt=5.0, total=20.0)


# -- environment variables --------------------------------------------------------------------

@pytest.mark.parametrize(("name", "raw", "key", "expected"), [
    *[("CRITICAL", raw, ("critical",), True) for raw in ("true", "TRUE", "1", "yes", "on")],
    *[("CRITICAL", raw, ("critical",), False) for raw in ("false", "0", "no", " Off ")],
    ("RETRY__ATTEMPTS", "4", ("retry", "attempts"), 4),
    ("RETRY__ATTEMPTS", " 7 ", ("retry", "attempts"), 7),
    ("TIMEOUT__ATTEMPT", "2.5", ("timeout", "attempt"), 2.5),
    ("TIMEOUT__ATTEMPT", "3", ("timeout", "attempt"), 3.0),
    ("TIMEOUT__TOTAL", "none", ("timeout", "total"), None),
    ("TIMEOUT__TOTAL", "None", ("timeout", "total"), None),
    ("BREAKER__FAILURE_RATE", "0.25", ("breaker", "failure_rate"), 0.25),
    ("BREAKER__SCOPE", "operation", ("breaker", "scope"), "operation"),
    ("RETRY__BACKOFF__JITTER", "off", ("retry", "backoff", "jitter"), False),
    ("RETRY__BUDGET__FLOOR", "0", ("retry", "budget", "floor"), 0.0),
    ("BULKHEAD__MAX_CONCURRENT", "12", ("bulkhead", "max_concurrent"), 12),
])
def test_env_values_are_parsed(metrics: CollectorRegistry, name: str, raw: str,
                               key: tuple[str, ...], expected: Any) -> None:
    v = vg.Vendor("acme", timeout=vg.Timeout(attempt=5.0, total=20.0), registry=metrics)
    result = vg.configure(env={f"VENDORGUARD_ACME__{name}": raw})
    value = result.get("vendors", "acme", *key)
    assert value == expected
    assert type(value) is type(expected)
    obj: Any = v
    for part in key:
        obj = getattr(obj, part)
    assert obj == expected


def test_env_settings_for_an_operation(metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", retry=vg.Retry(attempts=2), registry=metrics)
    g = v.guard("mail.send")(lambda: "ok").vendorguard  # type: ignore[attr-defined]
    vg.configure(env={"VENDORGUARD_ACME__OPERATIONS__MAIL.SEND__RETRY__ATTEMPTS": "5"})
    assert g.retry == vg.Retry(attempts=5)
    assert v.retry == vg.Retry(attempts=2)


@pytest.mark.parametrize(("name", "raw", "key"), [
    ("CRITICAL", "maybe", "vendors.acme.critical"),
    ("RETRY__ATTEMPTS", "2.5", "vendors.acme.retry.attempts"),
    ("RETRY__ATTEMPTS", "none", "vendors.acme.retry.attempts"),
    ("TIMEOUT__ATTEMPT", "two", "vendors.acme.timeout.attempt"),
    ("BREAKER__SCOPE", "global", "vendors.acme.breaker.scope"),
    ("TIMEOUT__ATTEMPT", "-1", "vendors.acme.timeout.attempt"),
])
def test_bad_env_values_are_refused(metrics: CollectorRegistry, name: str, raw: str,
                                    key: str) -> None:
    v = vg.Vendor("acme", registry=metrics)
    before = state(v)
    var = f"VENDORGUARD_ACME__{name}"
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(env={var: raw})
    assert info.value.key == key
    assert info.value.origin == f"environment variable {var}"
    assert raw.strip() in str(info.value)
    assert state(v) == before
    assert config.generation() == 0


def test_env_unknown_key_names_the_variable_and_not_its_value(
        metrics: CollectorRegistry, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A secret put in a VENDORGUARD_ variable by mistake is never echoed: not in the error,
    the log, the audit trail or the ConfigRefused event."""
    vg.Vendor("sendgrid", registry=metrics)
    secret = "SG.secret-value"
    monkeypatch.setenv("VENDORGUARD_SENDGRID__API_KEY", secret)
    seen: list[Any] = []
    vg.add_observer(seen.append)
    try:
        with caplog.at_level(logging.DEBUG, logger="vendorguard"), \
                pytest.raises(vg.ConfigError) as info:
            vg.configure()
    finally:
        vg.remove_observer(seen.append)
    exc = info.value
    assert exc.key == "vendors.sendgrid.api_key"
    assert exc.origin == "environment variable VENDORGUARD_SENDGRID__API_KEY"
    assert "unknown key" in exc.problem
    assert secret not in str(exc)
    assert secret not in exc.problem
    assert "VENDORGUARD_SENDGRID__API_KEY" in caplog.text
    assert secret not in caplog.text
    assert secret not in repr(audit.entries())
    assert secret not in repr(seen)


@pytest.mark.parametrize(("var", "key"), [
    ("VENDORGUARD_ACME__TIMEOUT", "vendors.acme.timeout"),  # a table, not a value
    ("VENDORGUARD_ACME__OPERATIONS__OP__BREAKER__FAILURES",
     "vendors.acme.operations.op.breaker.failures"),
    ("VENDORGUARD_ACME__RETRY__BACKOFF__INITAIL", "vendors.acme.retry.backoff.initail"),
    ("VENDORGUARD_CONTROL__TOKEN", "control.token"),
])
def test_env_unknown_keys_are_refused(var: str, key: str) -> None:
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(env={var: "5"})
    assert (info.value.key, info.value.origin) == (key, f"environment variable {var}")


def test_env_variables_without_a_key_path_are_ignored() -> None:
    result = vg.configure(env={"VENDORGUARD_DEBUG": "1", "VENDORGUARD_CONFIG": "",
                               "OTHER__THING": "x"})
    assert result.values == {}
    assert result.generation == 1


# -- refused files: each class of error names its key and origin and changes nothing ---------

GOOD = "[vendors.acme]\ntimeout.attempt = 2.0\nretry.attempts = 2\n"

BAD_FILES = [
    # unknown keys
    pytest.param("foo = 1\n", "foo", None, id="unknown-top-level"),
    pytest.param("[vendorz.acme]\ncritical = true\n", "vendorz", None, id="unknown-table"),
    pytest.param("[vendors.acme]\ntimeuot.attempt = 1.0\n", "vendors.acme.timeuot", None,
                 id="unknown-vendor-key"),
    pytest.param("[vendors.acme]\nretry.backoff.initail = 1.0\n",
                 "vendors.acme.retry.backoff.initail", None, id="unknown-nested"),
    pytest.param('[vendors.acme.operations."mail.send"]\nbreaker.failures = 3\n',
                 'vendors.acme.operations."mail.send".breaker', None,
                 id="operation-breaker"),
    pytest.param('[vendors.acme.operations."mail.send"]\ncritical = true\n',
                 'vendors.acme.operations."mail.send".critical', None,
                 id="operation-critical"),
    pytest.param("[control]\ntoken = 'x'\n", "control.token", None, id="unknown-control"),
    # wrong types
    pytest.param('[vendors.acme]\ntimeout.attempt = "2.0"\n', "vendors.acme.timeout.attempt",
                 "'2.0'", id="string-for-number"),
    pytest.param("[vendors.acme]\nretry.attempts = true\n", "vendors.acme.retry.attempts",
                 "True", id="bool-for-int"),
    pytest.param("[vendors.acme]\nretry.attempts = 2.5\n", "vendors.acme.retry.attempts",
                 "2.5", id="float-for-int"),
    pytest.param("[vendors.acme]\nbreaker.failure_rate = true\n",
                 "vendors.acme.breaker.failure_rate", "True", id="bool-for-number"),
    pytest.param('[vendors.acme]\ncritical = "yes"\n', "vendors.acme.critical", "'yes'",
                 id="string-for-bool"),
    pytest.param("[vendors.acme]\ntimeout.attempt = { seconds = 2 }\n",
                 "vendors.acme.timeout.attempt", "{'seconds': 2}", id="table-for-scalar"),
    pytest.param("[vendors.acme]\ntimeout = 5\n", "vendors.acme.timeout", "int",
                 id="scalar-for-table"),
    pytest.param("[vendors.acme]\noperations = 5\n", "vendors.acme.operations", None,
                 id="scalar-for-operations"),
    pytest.param('[vendors.acme]\nbreaker.scope = "global"\n', "vendors.acme.breaker.scope",
                 "'global'", id="bad-scope"),
    pytest.param("vendors = 5\n", "vendors", "int", id="scalar-for-vendors"),
    pytest.param("[audit]\nfile = 5\n", "audit.file", "5", id="int-for-path"),
    # out of range
    pytest.param("[vendors.acme]\ntimeout.attempt = -1.0\n", "vendors.acme.timeout.attempt",
                 "-1.0", id="negative-timeout"),
    pytest.param("[vendors.acme]\ntimeout.total = nan\n", "vendors.acme.timeout.total",
                 "nan", id="nan-timeout"),
    pytest.param("[vendors.acme]\nretry.attempts = 0\n", "vendors.acme.retry.attempts", "0",
                 id="zero-attempts"),
    pytest.param("[vendors.acme]\nbreaker.failure_rate = 2\n",
                 "vendors.acme.breaker.failure_rate", "2", id="failure-rate-2"),
    pytest.param("[vendors.acme]\nbreaker.min_calls = 30\n", "vendors.acme.breaker.min_calls",
                 "30", id="min-calls-over-window"),
    pytest.param("[vendors.acme]\nbulkhead.max_concurrent = 0\n",
                 "vendors.acme.bulkhead.max_concurrent", "0", id="zero-bulkhead"),
    pytest.param("[vendors.acme]\nretry.backoff.maximum = 0.05\n",
                 "vendors.acme.retry.backoff.maximum", "0.05", id="maximum-below-initial"),
    pytest.param("[vendors.acme]\nretry.backoff.multiplier = 0.5\n",
                 "vendors.acme.retry.backoff.multiplier", "0.5", id="multiplier"),
    pytest.param("[vendors.acme]\nretry.budget.ratio = 0\n", "vendors.acme.retry.budget.ratio",
                 "0", id="budget-ratio"),
    pytest.param('[vendors.acme.operations."mail.send"]\ntimeout.attempt = -2.0\n',
                 'vendors.acme.operations."mail.send".timeout.attempt', "-2.0",
                 id="operation-negative-timeout"),
    # bad vendor names
    pytest.param("[vendors.SendGrid]\ncritical = true\n", "vendors.SendGrid", None,
                 id="uppercase-vendor"),
    pytest.param('[vendors."send grid"]\ncritical = true\n', "vendors.send grid", None,
                 id="space-in-vendor"),
]


@pytest.mark.parametrize(("text", "key", "shown"), BAD_FILES)
def test_bad_file_is_refused_and_nothing_is_applied(
        tmp_path: Path, metrics: CollectorRegistry, text: str, key: str,
        shown: str | None) -> None:
    v = vg.Vendor("acme", registry=metrics)
    guarded = v.guard("mail.send")(lambda: "ok")
    good = write(tmp_path, GOOD, "good.toml")
    applied = vg.configure(good, env=False)
    before, pipeline = state(v), guarded.vendorguard.pipeline  # type: ignore[attr-defined]
    assert v.timeout == vg.Timeout(attempt=2.0)

    bad = write(tmp_path, text, "bad.toml")
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(bad, env=False)

    exc = info.value
    assert exc.key == key
    assert exc.origin == str(bad)
    assert str(exc).startswith(f"{bad}: {key}: ")
    if shown is not None:
        assert shown in exc.problem
    assert state(v) == before
    assert guarded.vendorguard.pipeline is pipeline  # type: ignore[attr-defined]
    assert config.generation() == 1
    assert config.current() is applied
    assert [e.action for e in audit.entries() if e.kind == "config"] == ["applied", "refused"]
    # The refused file did not become the source: a reload reads the good one again.
    assert vg.reload().source == str(good)
    assert v.timeout == vg.Timeout(attempt=2.0)


def test_malformed_toml_is_refused(tmp_path: Path, metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", registry=metrics)
    vg.configure({"vendors": {"acme": {"critical": True}}}, env=False)
    before = state(v)
    bad = write(tmp_path, "[vendors.acme\ncritical = true\n")
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(bad, env=False)
    assert (info.value.key, info.value.origin) == ("(file)", str(bad))
    assert "not valid TOML" in info.value.problem
    assert state(v) == before
    assert v.critical is True
    assert config.generation() == 1


def test_missing_file_is_refused(tmp_path: Path, metrics: CollectorRegistry) -> None:
    v = vg.Vendor("acme", registry=metrics)
    before = state(v)
    missing = tmp_path / "nope.toml"
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(missing, env=False)
    assert (info.value.key, info.value.origin) == ("(file)", str(missing))
    assert "cannot be read" in info.value.problem
    assert state(v) == before
    assert config.generation() == 0


def test_source_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="mapping or a file path"):
        vg.configure(5, env=False)  # type: ignore[arg-type]
    assert config.generation() == 0


def test_refused_mapping_names_mapping_as_origin(metrics: CollectorRegistry) -> None:
    vg.Vendor("acme", registry=metrics)
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"acme": {"retry": {"attempts": -3}}}}, env=False)
    assert (info.value.key, info.value.origin) == ("vendors.acme.retry.attempts", "mapping")
    assert "-3" in info.value.problem


def test_one_bad_vendor_blocks_the_whole_configuration(metrics: CollectorRegistry) -> None:
    """Everything is checked before anything changes: a good change for one vendor is not
    applied when another vendor's setting is refused (whatever the registration order)."""
    first = vg.Vendor("first", registry=metrics)
    second = vg.Vendor("second", registry=metrics)
    g = first.guard("op")(lambda: "ok").vendorguard  # type: ignore[attr-defined]
    pipeline = g.pipeline
    before = (state(first), state(second))
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"first": {"timeout": {"attempt": 1.0}},
                                  "second": {"breaker": {"min_calls": 50}}}}, env=False)
    assert info.value.key == "vendors.second.breaker.min_calls"
    assert (state(first), state(second)) == before
    assert g.pipeline is pipeline


def test_guard_policy_conflicting_with_operation_settings_names_the_full_key(
        metrics: CollectorRegistry) -> None:
    """Operation settings are checked against each guard's own policies from code; a clash
    refuses the configuration with the full key path of the operation's setting."""
    v = vg.Vendor("acme", registry=metrics)
    g = v.guard("op", retry=vg.Retry(backoff=vg.Backoff(initial=1.0, maximum=3.0)))(
        lambda: "ok").vendorguard  # type: ignore[attr-defined]
    pipeline = g.pipeline
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"acme": {"operations": {
            "op": {"retry": {"backoff": {"maximum": 0.5}}}}}}}, env=False)
    assert info.value.origin == "mapping"
    assert g.pipeline is pipeline
    assert config.generation() == 0
    assert info.value.key == "vendors.acme.operations.op.retry.backoff.maximum"


@pytest.mark.parametrize(("section", "value"), [
    ("breaker.window", 5),            # below the code's min_calls (10)
    ("retry.backoff.initial", 5.0),   # above the code's maximum (2.0)
    ("breaker.failures", "none"),     # and no failure_rate in code
])
def test_cross_field_violation_names_the_key_that_was_set(
        metrics: CollectorRegistry, section: str, value: Any) -> None:
    """When the one field set clashes with another field from code, the error names the key
    that was set, not its section or the field from code."""
    vg.Vendor("acme", registry=metrics)
    parts = section.split(".")
    table: Any = value
    for part in reversed(parts):
        table = {part: table}
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"vendors": {"acme": table}}, env=False)
    assert info.value.key == f"vendors.acme.{section}"


def test_cross_field_violation_names_the_origin_of_the_offending_value(
        tmp_path: Path, metrics: CollectorRegistry) -> None:
    """The file sets breaker.failures (fine), the environment sets breaker.window = 5 (below
    min_calls): the error names the environment variable and its key, not the file."""
    vg.Vendor("acme", registry=metrics)
    path = write(tmp_path, "[vendors.acme]\nbreaker.failures = 3\n")
    var = "VENDORGUARD_ACME__BREAKER__WINDOW"
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(path, env={var: "5"})
    assert info.value.origin == f"environment variable {var}"
    assert info.value.key == "vendors.acme.breaker.window"


# -- control token and audit file ---------------------------------------------------------

def test_control_token_is_read_from_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n", encoding="utf-8")
    assert config.control_token() is None
    vg.configure(write(tmp_path, f"[control]\ntoken_file = '{token_file}'\n"), env=False)
    assert config.control_token() == TOKEN


def test_control_token_file_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    vg.configure(env={"VENDORGUARD_CONTROL__TOKEN_FILE": str(token_file)})
    assert config.control_token() == TOKEN


@pytest.mark.parametrize("case", ["short", "missing", "empty"])
def test_bad_control_token_file_is_refused(tmp_path: Path, metrics: CollectorRegistry,
                                           case: str) -> None:
    good_file = tmp_path / "good-token"
    good_file.write_text(TOKEN, encoding="utf-8")
    v = vg.Vendor("acme", registry=metrics)
    vg.configure({"control": {"token_file": str(good_file)}}, env=False)
    before = state(v)

    token_file = tmp_path / "token"
    short = "abc123-short"
    if case == "short":
        token_file.write_text(short + "\n", encoding="utf-8")
    elif case == "empty":
        token_file.write_text("   \n", encoding="utf-8")
    path = write(tmp_path, f"[control]\ntoken_file = '{token_file}'\n"
                           "[vendors.acme]\ntimeout.attempt = 1.0\n")
    with pytest.raises(vg.ConfigError) as info:
        vg.configure(path, env=False)
    assert (info.value.key, info.value.origin) == ("control.token_file", str(path))
    assert ("cannot be read" if case == "missing" else "at least 16") in info.value.problem
    assert short not in str(info.value)
    assert config.control_token() == TOKEN  # the token in effect stays
    assert state(v) == before
    assert config.generation() == 1


def test_token_file_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(vg.ConfigError) as info:
        vg.configure({"control": {"token_file": ""}}, env=False)
    assert info.value.key == "control.token_file"
    assert config.control_token() is None


def test_audit_file_receives_json_lines(tmp_path: Path, metrics: CollectorRegistry) -> None:
    audit_file = tmp_path / "audit.jsonl"
    v = vg.Vendor("acme", registry=metrics)
    source = write(tmp_path, f"[audit]\nfile = '{audit_file}'\n"
                             "[vendors.acme]\ntimeout.attempt = 1.0\n")
    vg.configure(source, env=False)
    v.force_open(reason="incident 7", actor="ops")
    source.write_text("[vendors.acme]\nretry.attempts = 0\n", encoding="utf-8")
    with pytest.raises(vg.ConfigError):
        vg.reload(actor="deploy")

    lines = audit_file.read_text(encoding="utf-8").splitlines()
    everything = [json.loads(text) for text in lines]
    assert [e.as_dict() for e in audit.entries()] == everything
    assert ("transition", "forced_open") in [(r["kind"], r["action"]) for r in everything]
    records = [r for r in everything if r["kind"] in ("config", "control")]
    assert [(r["kind"], r["action"]) for r in records] == [
        ("config", "applied"), ("control", "force_open"), ("config", "refused")]
    applied, control, refused = records
    assert applied["after"] == {"generation": 1, "vendors": ["acme"]}
    assert applied["actor"] == "configure"
    assert applied["reason"] == str(source)
    assert (control["vendor"], control["actor"], control["reason"]) == ("acme", "ops",
                                                                       "incident 7")
    assert (refused["actor"], refused["reason"]) == ("deploy", "vendors.acme.retry.attempts")
    assert stat.S_IMODE(os.stat(audit_file).st_mode) & 0o077 == 0  # owner only


def test_audit_file_stops_when_the_configuration_drops_it(tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    source = write(tmp_path, f"[audit]\nfile = '{audit_file}'\n")
    vg.configure(source, env=False)
    source.write_text("", encoding="utf-8")
    vg.reload()
    vg.reload()
    records = [json.loads(t) for t in audit_file.read_text(encoding="utf-8").splitlines()]
    # generation 2 dropped the file: its own entry is no longer written, nor are later ones
    assert [r["after"]["generation"] for r in records] == [1]
    assert config.generation() == 3


# -- property-based: configurations generated from the schema ----------------------------------

def _seconds(lo: float = 0.001, hi: float = 100.0) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _optional(strategies: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A random subset of the given fields (possibly empty)."""
    return st.fixed_dictionaries({}, optional=strategies)


def _or_disabled(fields: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A section: switched off alone, or some fields (maybe with enabled = true)."""
    on = st.tuples(fields, st.booleans()).map(
        lambda pair: {**pair[0], "enabled": True} if pair[1] else pair[0])
    return st.one_of(st.just({"enabled": False}), on)


# Bounds long enough that a trivial call never runs out of them.
TIMEOUT = _optional({"attempt": st.one_of(_seconds(0.5), st.just("none")),
                     "total": st.one_of(_seconds(0.5), st.just("none"))})
# initial <= 2.0 <= maximum keeps any subset valid against the code's Backoff(0.1, 2.0)
BACKOFF = _optional({"initial": _seconds(0.0, 2.0), "maximum": _seconds(2.0, 10.0),
                     "multiplier": st.floats(1.0, 5.0), "jitter": st.booleans()})
BUDGET = _or_disabled(_optional({"ratio": st.floats(0.01, 1.0), "floor": st.floats(0.0, 50.0)}))
RETRY_FIELDS = _optional({"attempts": st.integers(1, 6), "max_retry_after": _seconds(0.0, 60),
                          "backoff": BACKOFF, "budget": BUDGET})
RETRY = _or_disabled(RETRY_FIELDS)


def _breaker_fields() -> st.SearchStrategy[dict[str, Any]]:
    # window >= 10 >= min_calls keeps any subset valid against the code's Breaker (20, 10);
    # failures = "none" needs a failure rate.
    base = _optional({"failures": st.integers(1, 20), "window": st.integers(10, 50),
                      "min_calls": st.integers(1, 10), "slow_call": st.one_of(
                          _seconds(1.0), st.just("none")), "reset_after": _seconds(),
                      "half_open_calls": st.integers(1, 5),
                      "scope": st.sampled_from(["vendor", "operation"]),
                      "failure_rate": st.floats(0.01, 1.0)})
    return st.one_of(base, base.map(lambda b: {**b, "failures": "none",
                                               "failure_rate": b.get("failure_rate", 0.5)}))


BREAKER = _or_disabled(_breaker_fields())
BULKHEAD = _or_disabled(_optional({"max_concurrent": st.integers(1, 50),
                                   "max_wait": _seconds(0.0, 5.0)}))
OPERATIONS = ("op.a", "op_b")
OPERATION = _optional({"timeout": TIMEOUT,
                       "retry": st.one_of(st.just({"enabled": False}),
                                          RETRY_FIELDS.map(lambda r: {**r, "attempts": r.get(
                                              "attempts", 2)}))})
VENDOR = _optional({"critical": st.booleans(), "timeout": TIMEOUT, "retry": RETRY,
                    "breaker": BREAKER, "bulkhead": BULKHEAD,
                    "operations": st.dictionaries(st.sampled_from(OPERATIONS), OPERATION,
                                                  max_size=2)})

CODE = {"timeout": vg.Timeout(attempt=5.0, total=30.0), "retry": vg.Retry(),
            "breaker": vg.Breaker(), "bulkhead": vg.Bulkhead(max_concurrent=10)}


def _fresh() -> None:
    """Hypothesis reuses function-scoped fixtures: every example cleans up itself."""
    vg_registry.clear()
    config.clear()
    audit.clear()


def _value(raw: Any) -> Any:
    return None if raw == "none" else raw


def _apply_fields(kind: type, base: Any, section: dict[str, Any] | None) -> Any:
    """The model: a section's fields over a policy (None when switched off)."""
    if section is None:
        return base
    if section.get("enabled") is False:
        return None
    fields = {k: _value(v) for k, v in section.items()
              if k != "enabled" and not isinstance(v, dict)}
    if not fields and "enabled" not in section and base is None:
        return None
    return dataclasses.replace(base if base is not None else kind(), **fields)


def _model_retry(base: vg.Retry | None, section: dict[str, Any] | None) -> vg.Retry | None:
    retry = _apply_fields(vg.Retry, base, section)
    if retry is None or section is None:
        return retry
    backoff = _apply_fields(vg.Backoff, retry.backoff, section.get("backoff"))
    budget = _apply_fields(vg.RetryBudget, retry.budget, section.get("budget"))
    return dataclasses.replace(retry, backoff=backoff, budget=budget)


def _expected_lines(timeout: vg.Timeout, retry: vg.Retry | None,
                    bulkhead: vg.Bulkhead | None) -> dict[str, str]:
    return {
        "total deadline:": (f"total deadline: {timeout.total}s and any enclosing vg.deadline"
                            if timeout.total else "total deadline: enclosing vg.deadline only"),
        "retry:": (f"retry: {retry.attempts} attempts, budget {retry.budget}"
                   if retry is not None and retry.attempts > 1 else "retry: none"),
        "bulkhead:": (f"bulkhead: {bulkhead.max_concurrent} concurrent" if bulkhead
                      else "bulkhead: none"),
        "attempt timeout:": (f"attempt timeout: {timeout.attempt}s (caller)"
                             if timeout.attempt else "attempt timeout: none"),
    }


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cfg=VENDOR, as_toml=st.booleans())
def test_generated_configurations_apply(cfg: dict[str, Any], as_toml: bool) -> None:
    _fresh()
    try:
        v = vg.Vendor("acme", registry=CollectorRegistry(), **CODE)  # type: ignore[arg-type]
        seen: dict[str, float | None] = {}

        def make(op: str) -> Callable[[int], int]:
            def fn(x: int) -> int:
                seen[op] = attempt_timeout()
                return x * 2
            return v.guard(op, timeout_mode="caller")(fn)

        guarded = {op: make(op) for op in (*OPERATIONS, "plain")}
        with tempfile.TemporaryDirectory() as tmp:
            source: Any = {"vendors": {"acme": cfg}}
            if as_toml:
                path = Path(tmp, "generated.toml")
                path.write_text(_toml(source), encoding="utf-8")
                source = path
            result = vg.configure(source, env=False)
        assert result.generation == 1
        assert result.source == (str(source) if as_toml else "mapping")

        timeout = _apply_fields(vg.Timeout, CODE["timeout"], cfg.get("timeout"))
        retry = _model_retry(CODE["retry"], cfg.get("retry"))
        breaker = _apply_fields(vg.Breaker, CODE["breaker"], cfg.get("breaker"))
        bulkhead = _apply_fields(vg.Bulkhead, CODE["bulkhead"], cfg.get("bulkhead"))
        assert v.timeout == timeout
        assert v.retry == retry
        assert v.breaker == breaker
        assert v.bulkhead == bulkhead
        assert v.critical is cfg.get("critical", False)

        for op, fn in guarded.items():
            g = fn.vendorguard  # type: ignore[attr-defined]
            op_cfg = cfg.get("operations", {}).get(op, {})
            op_timeout = _apply_fields(vg.Timeout, timeout, op_cfg.get("timeout"))
            op_retry = _model_retry(retry, op_cfg.get("retry"))
            assert (g.timeout, g.retry) == (op_timeout, op_retry), op
            for prefix, expected in _expected_lines(op_timeout, op_retry, bulkhead).items():
                assert line(g, prefix) == expected
            assert g.circuit is not None
            assert g.circuit.counting is (breaker is not None)
            if breaker is not None:
                assert g.circuit.policy == breaker
                assert g.circuit.name == (op if breaker.scope == "operation" else "acme")
            assert fn(21) == 42
            bound = seen[op]
            if op_timeout.attempt is None and op_timeout.total is None:
                assert bound is None
            else:
                assert bound is not None
                assert 0 < bound <= min(
                    t for t in (op_timeout.attempt, op_timeout.total) if t is not None)
    finally:
        _fresh()


def _toml(data: Any, prefix: tuple[str, ...] = ()) -> str:
    """A TOML document for a nested mapping of scalars (tables as [dotted."headers"])."""
    def key(part: str) -> str:
        return part if part.replace("_", "").replace("-", "").isalnum() else json.dumps(part)

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return "nan" if math.isnan(value) else repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(value)

    out: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if scalars or (prefix and not tables):
        if prefix:
            out.append("[" + ".".join(key(p) for p in prefix) + "]")
        out.extend(f"{key(k)} = {scalar(v)}" for k, v in scalars.items())
    for k, v in tables.items():
        out.append(_toml(v, (*prefix, k)))
    return "\n".join(out) + "\n"


def test_toml_helper_round_trips() -> None:
    data = {"vendors": {"acme": {"critical": True, "timeout": {"attempt": 1.5},
                                 "operations": {"op.a": {"retry": {"attempts": 2}}},
                                 "bulkhead": {}}}, "audit": {"file": "x"}}
    assert tomllib.loads(_toml(data)) == data


# -- property-based: one invalid mutation is refused with its key path ----------------------

# Every leaf of the schema: (path below vendors.acme or the top, kind).
LEAVES: list[tuple[tuple[str, ...], str]] = [
    (("critical",), "bool"),
    (("timeout", "attempt"), "seconds>0"), (("timeout", "total"), "seconds>0"),
    (("retry", "enabled"), "bool"), (("retry", "attempts"), "int>=1"),
    (("retry", "max_retry_after"), "seconds>=0"),
    (("retry", "backoff", "initial"), "seconds>=0"),
    (("retry", "backoff", "maximum"), "seconds>=0"),
    (("retry", "backoff", "multiplier"), "multiplier"),
    (("retry", "backoff", "jitter"), "bool"),
    (("retry", "budget", "enabled"), "bool"), (("retry", "budget", "ratio"), "rate"),
    (("retry", "budget", "floor"), "number>=0"),
    (("breaker", "enabled"), "bool"), (("breaker", "failures"), "int>=1"),
    (("breaker", "failure_rate"), "rate"), (("breaker", "window"), "int>=1"),
    (("breaker", "min_calls"), "int>=1"), (("breaker", "slow_call"), "seconds>0"),
    (("breaker", "reset_after"), "seconds>0"), (("breaker", "half_open_calls"), "int>=1"),
    (("breaker", "scope"), "scope"),
    (("bulkhead", "enabled"), "bool"), (("bulkhead", "max_concurrent"), "int>=1"),
    (("bulkhead", "max_wait"), "seconds>=0"),
    *[(("operations", op, *leaf), kind) for op in OPERATIONS for leaf, kind in [
        (("timeout", "attempt"), "seconds>0"), (("timeout", "total"), "seconds>0"),
        (("retry", "attempts"), "int>=1"), (("retry", "enabled"), "bool"),
        (("retry", "backoff", "multiplier"), "multiplier"),
        (("retry", "budget", "ratio"), "rate")]],
]
TOP_LEAVES = [(("control", "token_file"), "path"), (("audit", "file"), "path")]
TABLES = [(), ("timeout",), ("retry",), ("retry", "backoff"), ("retry", "budget"),
          ("breaker",), ("bulkhead",), *[(("operations", op, *t)) for op in OPERATIONS
                                         for t in [(), ("timeout",), ("retry",)]]]

WRONG_TYPE: dict[str, list[Any]] = {
    "bool": ["yes", 1, 0.0, [True], {"x": 1}],
    "int": ["3", 2.5, True, [1], {"x": 1}],
    "number": ["0.5", True, [0.5], {"x": 1}],
    "scope": ["global", 3, True, ["vendor"]],
    "path": [5, "", True, ["x"], {"x": 1}],
}
OUT_OF_RANGE: dict[str, list[Any]] = {
    "seconds>0": [0, 0.0, -1.0, -0.001, math.nan, math.inf],
    "seconds>=0": [-1, -0.5, math.nan, math.inf],
    "int>=1": [0, -1, -100],
    "rate": [0, 0.0, -0.5, 1.5, 2],
    "number>=0": [-1, -0.1, math.inf],
    "multiplier": [0.5, 0, -2.0, math.inf],
}


def _kind(kind: str) -> str:
    return {"seconds>0": "number", "seconds>=0": "number", "int>=1": "int", "rate": "number",
            "number>=0": "number", "multiplier": "number"}.get(kind, kind)


def _strip_disabled(node: dict[str, Any]) -> dict[str, Any]:
    """Drop `enabled = false` (a disabled section would refuse the mutated field for being
    set at all, which is right but not the check made here)."""
    return {k: _strip_disabled(v) if isinstance(v, dict) else v for k, v in node.items()
            if not (k == "enabled" and v is False)}


def _set(node: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(f'"{p}"' if "." in p else p for p in path)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid configuration with one invalid change, and the key path it must be refused
    with."""
    top: dict[str, Any] = {"vendors": {"acme": _strip_disabled(draw(VENDOR))}}
    how = draw(st.sampled_from(["wrong_type", "out_of_range", "unknown_key",
                                "scalar_for_table"]))
    if how == "unknown_key":
        table = draw(st.sampled_from([("top",), *TABLES]))
        name = draw(st.sampled_from(["bogus", "timeout_s", "Attempts", "retries"]))
        if table == ("top",):
            path: tuple[str, ...] = (name,)
        else:
            path = ("vendors", "acme", *table, name)
        value = draw(st.one_of(st.integers(), st.text("ab -.é", max_size=5), st.booleans()))
    elif how == "scalar_for_table":
        table = draw(st.sampled_from([t for t in TABLES if t]))
        path = ("vendors", "acme", *table)
        value = draw(st.one_of(st.integers(), st.text("ab -.é", max_size=5), st.booleans()))
    else:
        choices = [(p, k) for p, k in LEAVES + TOP_LEAVES
                   if (how == "wrong_type" or k in OUT_OF_RANGE)]
        leaf, kind = draw(st.sampled_from(choices))
        path = leaf if leaf[0] in ("control", "audit") else ("vendors", "acme", *leaf)
        pool = WRONG_TYPE[_kind(kind)] if how == "wrong_type" else OUT_OF_RANGE[kind]
        value = draw(st.sampled_from(pool))
    _set(top, path, value)
    return top, _dotted(path)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutations(), as_toml=st.booleans())
def test_generated_invalid_configurations_are_refused_with_their_key(
        case: tuple[dict[str, Any], str], as_toml: bool) -> None:
    _fresh()
    try:
        source, key = case
        v = vg.Vendor("acme", registry=CollectorRegistry(), **CODE)  # type: ignore[arg-type]
        g = v.guard("op.a")(lambda: "ok").vendorguard  # type: ignore[attr-defined]
        previous = vg.configure({"vendors": {"acme": {"timeout": {"attempt": 3.0}}}},
                                env=False)
        before, pipeline = state(v), g.pipeline
        with tempfile.TemporaryDirectory() as tmp:
            origin = "mapping"
            if as_toml:
                origin = os.path.join(tmp, "mutated.toml")
                Path(origin).write_text(_toml(source), encoding="utf-8")
            with pytest.raises(vg.ConfigError) as info:
                vg.configure(origin if as_toml else source, env=False)
        assert info.value.key == key, (source, info.value)
        assert info.value.origin == origin
        assert state(v) == before
        assert g.pipeline is pipeline
        assert config.current() is previous
        assert config.generation() == 1
    finally:
        _fresh()
