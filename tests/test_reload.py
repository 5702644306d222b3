"""Live reload: vendorguard.reload(), config.watch(), SIGHUP; what survives, what is swapped,
what a refused reload leaves alone, and calls in flight and under load while it happens."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import vendorguard as vg
from vendorguard import audit, config, events
from vendorguard.events import ConfigApplied, ConfigRefused
from vendorguard.timeouts import attempt_timeout

pytestmark = pytest.mark.usefixtures("no_backoff")


class Boom(Exception):
    """A transient vendor failure."""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write(tmp_path / "vendorguard.toml", "[vendors.acme]\ntimeout.attempt = 2.0\n")


@pytest.fixture
def seen() -> Iterator[list[Any]]:
    """The events emitted during the test."""
    found: list[Any] = []
    vg.add_observer(found.append)
    try:
        yield found
    finally:
        vg.remove_observer(found.append)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an observable condition (for work done on another thread) within a deadline."""
    end = time.monotonic() + timeout
    pause = threading.Event()
    while not (value := predicate()) and time.monotonic() < end:
        pause.wait(0.01)
    return value


def gauge(reg: CollectorRegistry) -> str:
    [found] = [ln for ln in generate_latest(reg).decode().splitlines()
               if ln.startswith("vendorguard_config_generation ")]
    return found


def state(v: vg.Vendor) -> tuple[Any, ...]:
    return (v.policy_in_effect, v.timeout, v.retry, v.breaker, v.bulkhead, v.critical)


# -- reload picks up changes --------------------------------------------------------------------

def test_reload_picks_up_an_edited_file(source: Path, metrics: CollectorRegistry,
                                        seen: list[Any]) -> None:
    other_registry = CollectorRegistry()
    acme = vg.Vendor("acme", registry=metrics)
    beta = vg.Vendor("beta", registry=other_registry)
    guarded = acme.guard("op")(lambda: "ok")
    g = guarded.vendorguard  # type: ignore[attr-defined]

    assert vg.configure(source, env=False).generation == 1
    assert gauge(metrics) == "vendorguard_config_generation 1.0"
    assert acme.timeout == vg.Timeout(attempt=2.0)
    first = g.pipeline

    write(source, "[vendors.acme]\ntimeout.attempt = 3.0\nretry.attempts = 5\n")
    result = vg.reload(actor="ops")

    assert result.generation == 2 == config.generation()
    assert config.current() is result
    assert acme.timeout == vg.Timeout(attempt=3.0)
    assert acme.retry == vg.Retry(attempts=5)
    assert g.pipeline is not first
    assert (g.timeout, g.retry) == (vg.Timeout(attempt=3.0), vg.Retry(attempts=5))
    assert guarded() == "ok"
    assert gauge(metrics) == "vendorguard_config_generation 2.0"
    assert gauge(other_registry) == "vendorguard_config_generation 2.0"  # every registry
    applied = [e for e in seen if isinstance(e, ConfigApplied)]
    assert [(e.generation, e.vendors) for e in applied] == [(1, ("acme",)), (2, ("acme",))]
    assert abs(applied[-1].time - time.time()) < 60
    entries = [e for e in audit.entries() if e.kind == "config"]
    assert [(e.action, e.actor, e.before, e.after) for e in entries] == [
        ("applied", "configure", 0, {"generation": 1, "vendors": ["acme"]}),
        ("applied", "ops", 1, {"generation": 2, "vendors": ["acme"]})]
    assert beta.policy_in_effect == beta.code_policy


def test_event_names_only_the_vendors_that_changed(
        source: Path, metrics: CollectorRegistry, seen: list[Any]) -> None:
    vg.Vendor("acme", registry=metrics)
    vg.Vendor("beta", registry=metrics)
    vg.Vendor("gamma", registry=metrics)
    write(source, "[vendors.acme]\ncritical = true\n[vendors.beta]\ncritical = true\n")
    vg.configure(source, env=False)
    write(source, "[vendors.acme]\ncritical = true\n[vendors.beta]\ncritical = false\n"
                  "[vendors.gamma]\nretry.attempts = 2\n")
    vg.reload()
    applied = [e for e in seen if isinstance(e, ConfigApplied)]
    assert applied[-1].generation == 2
    assert sorted(applied[-1].vendors) == ["beta", "gamma"]
    assert vg.vendor("beta").critical is False
    assert vg.vendor("gamma").retry == vg.Retry(attempts=2)


def test_unchanged_reload_counts_a_generation_and_keeps_every_pipeline(
        source: Path, metrics: CollectorRegistry, seen: list[Any]) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    guarded = acme.guard("op")(lambda: "ok")
    proxy = acme.wrap(type("Client", (), {"send": lambda self: "sent"})(), ["send"])
    acme.call("one-off", lambda: None)
    vg.configure(source, env=False)
    guards = [guarded.vendorguard, acme._guards["one-off"]]  # type: ignore[attr-defined]
    before = [g.pipeline for g in guards]
    policy = acme.policy_in_effect

    result = vg.reload()

    assert result.generation == 2
    assert [g.pipeline for g in guards] == before
    assert all(g.pipeline is p for g, p in zip(guards, before, strict=True))
    assert acme.policy_in_effect is policy
    assert proxy.send() == "sent"
    applied = [e for e in seen if isinstance(e, ConfigApplied)]
    assert [(e.generation, e.vendors) for e in applied] == [(1, ("acme",)), (2, ())]
    assert audit.entries()[-1].after == {"generation": 2, "vendors": []}
    assert gauge(metrics) == "vendorguard_config_generation 2.0"


def test_reload_changing_only_critical_keeps_the_pipelines(
        source: Path, metrics: CollectorRegistry, seen: list[Any]) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    g = acme.guard("op")(lambda: "ok").vendorguard  # type: ignore[attr-defined]
    vg.configure(source, env=False)
    before = g.pipeline
    write(source, "[vendors.acme]\ntimeout.attempt = 2.0\ncritical = true\n")
    vg.reload()
    assert acme.critical is True
    assert g.pipeline is before
    applied = [e for e in seen if isinstance(e, ConfigApplied)]
    assert applied[-1].vendors == ("acme",)


def test_reload_rereads_the_environment(source: Path, metrics: CollectorRegistry,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    vg.configure(source)
    monkeypatch.setenv("VENDORGUARD_ACME__TIMEOUT__ATTEMPT", "7.5")
    vg.reload()
    assert acme.timeout == vg.Timeout(attempt=7.5)
    monkeypatch.delenv("VENDORGUARD_ACME__TIMEOUT__ATTEMPT")
    vg.reload()
    assert acme.timeout == vg.Timeout(attempt=2.0)


def test_reload_of_a_mapping_reads_it_again(metrics: CollectorRegistry) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    mapping: dict[str, Any] = {"vendors": {"acme": {"critical": True}}}
    vg.configure(mapping, env=False)
    mapping["vendors"]["acme"]["critical"] = False
    assert vg.reload().source == "mapping"
    assert acme.critical is False


def test_a_new_vendor_after_a_reload_gets_the_reloaded_settings(source: Path) -> None:
    vg.configure(source, env=False)
    write(source, "[vendors.later]\nretry.attempts = 4\n")
    vg.reload()
    later = vg.Vendor("later", registry=CollectorRegistry())
    assert later.retry == vg.Retry(attempts=4)


# -- breaker state across reloads --------------------------------------------------------------

BREAKER_FILE = "[vendors.acme]\ntimeout.attempt = {attempt}\nbreaker.failures = {failures}\n"


def _open_breaker(tmp_path: Path, metrics: CollectorRegistry,
                  ) -> tuple[vg.Vendor, Callable[[], Any], list[int], Path]:
    path = write(tmp_path / "breaker.toml", BREAKER_FILE.format(attempt=2.0, failures=2))
    acme = vg.Vendor("acme", retry=None, breaker=vg.Breaker(reset_after=600.0),
                     registry=metrics)
    calls: list[int] = []

    @acme.guard("op", timeout_mode="caller")
    def failing() -> None:
        calls.append(1)
        raise Boom

    vg.configure(path, env=False)
    for _ in range(2):
        with pytest.raises(Boom):
            failing()
    assert acme.state == "open"
    return acme, failing, calls, path


def test_breaker_state_survives_a_timeout_only_reload(tmp_path: Path,
                                                      metrics: CollectorRegistry) -> None:
    acme, failing, calls, path = _open_breaker(tmp_path, metrics)
    circuit = acme.circuits()["acme"]
    g = failing.vendorguard  # type: ignore[attr-defined]
    old_pipeline = g.pipeline

    write(path, BREAKER_FILE.format(attempt=4.0, failures=2))
    vg.reload()

    assert g.pipeline is not old_pipeline
    assert g.timeout == vg.Timeout(attempt=4.0)
    assert acme.circuits()["acme"] is circuit
    assert g.circuit is circuit
    assert acme.state == "open"
    with pytest.raises(vg.CircuitOpenError):
        failing()
    assert len(calls) == 2  # rejected without calling the vendor


def test_breaker_policy_change_gives_a_new_closed_circuit(tmp_path: Path,
                                                          metrics: CollectorRegistry) -> None:
    acme, failing, calls, path = _open_breaker(tmp_path, metrics)
    circuit = acme.circuits()["acme"]

    write(path, BREAKER_FILE.format(attempt=2.0, failures=3))
    vg.reload()

    fresh = acme.circuits()["acme"]
    assert fresh is not circuit
    assert failing.vendorguard.circuit is fresh  # type: ignore[attr-defined]
    assert fresh.state == "closed" == acme.state
    assert fresh.policy.failures == 3
    assert metrics.get_sample_value("vendorguard_circuit_state", {
        "vendor": "acme", "circuit": "acme", "state": "closed"}) == 1.0
    for _ in range(2):
        with pytest.raises(Boom):
            failing()
    assert acme.state == "closed"  # three failures now, not two
    with pytest.raises(Boom):
        failing()
    assert acme.state == "open"
    assert len(calls) == 5


def test_kill_switch_survives_a_breaker_policy_change(tmp_path: Path,
                                                      metrics: CollectorRegistry) -> None:
    path = write(tmp_path / "breaker.toml", BREAKER_FILE.format(attempt=2.0, failures=2))
    acme = vg.Vendor("acme", retry=None, registry=metrics)
    calls: list[int] = []
    guarded = acme.guard("op", fallback="fallback")(lambda: calls.append(1) or "vendor")
    vg.configure(path, env=False)
    acme.force_open(reason="incident")
    circuit = acme.circuits()["acme"]

    write(path, BREAKER_FILE.format(attempt=2.0, failures=9))
    vg.reload()

    assert acme.circuits()["acme"] is not circuit
    assert acme.state == "forced_open"
    assert guarded() == "fallback"
    assert calls == []
    acme.force_close()
    assert guarded() == "vendor"
    assert calls == [1]


def test_kill_switch_survives_a_switch_to_operation_scope(tmp_path: Path,
                                                          metrics: CollectorRegistry) -> None:
    path = write(tmp_path / "breaker.toml", "[vendors.acme]\ncritical = true\n")
    acme = vg.Vendor("acme", retry=None, registry=metrics)
    guarded = acme.guard("op", fallback="fallback")(lambda: "vendor")
    vg.configure(path, env=False)
    acme.force_open()
    write(path, "[vendors.acme]\nbreaker.scope = 'operation'\n")
    vg.reload()
    assert guarded.vendorguard.circuit.name == "op"  # type: ignore[attr-defined]
    assert guarded() == "fallback"
    assert acme.state == "forced_open"


# -- refused reloads ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key"), [
    ("[vendors.acme]\ntimeout.attempt = -5.0\n", "vendors.acme.timeout.attempt"),
    ("[vendors.acme]\nbreaker.failures = 'x'\n", "vendors.acme.breaker.failures"),
    ("[vendors.acme]\nretries = 2\n", "vendors.acme.retries"),
    ("[vendors.acme\n", "(file)"),
])
def test_bad_reload_changes_nothing_and_is_reported(
        source: Path, metrics: CollectorRegistry, seen: list[Any],
        caplog: pytest.LogCaptureFixture, text: str, key: str) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    g = acme.guard("op")(lambda: "ok").vendorguard  # type: ignore[attr-defined]
    applied = vg.configure(source, env=False)
    before, pipeline = state(acme), g.pipeline

    write(source, text)
    with caplog.at_level(logging.ERROR, logger="vendorguard"), \
            pytest.raises(vg.ConfigError) as info:
        vg.reload(actor="deploy-42")

    assert info.value.key == key
    assert info.value.origin == str(source)
    assert state(acme) == before
    assert g.pipeline is pipeline
    assert config.generation() == 1
    assert config.current() is applied
    assert gauge(metrics) == "vendorguard_config_generation 1.0"
    last = audit.entries()[-1]
    assert (last.kind, last.action, last.actor, last.reason, last.before, last.after) == (
        "config", "refused", "deploy-42", key, 1, 1)
    refused = [e for e in seen if isinstance(e, ConfigRefused)]
    assert [(e.key, e.error, e.generation) for e in refused] == [(key, info.value.problem, 1)]
    assert not [e for e in seen if isinstance(e, ConfigApplied) and e.generation > 1]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert key in errors[0].getMessage()
    assert "generation 1 stays in effect" in errors[0].getMessage()

    # Fixed again, the next reload applies.
    write(source, "[vendors.acme]\ntimeout.attempt = 2.5\n")
    assert vg.reload().generation == 2
    assert acme.timeout == vg.Timeout(attempt=2.5)


def test_reload_of_a_deleted_file_is_refused(source: Path, metrics: CollectorRegistry) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    vg.configure(source, env=False)
    before = state(acme)
    source.unlink()
    with pytest.raises(vg.ConfigError) as info:
        vg.reload()
    assert (info.value.key, info.value.origin) == ("(file)", str(source))
    assert state(acme) == before
    assert config.generation() == 1


def test_reload_refused_for_a_token_file_keeps_the_old_token(
        tmp_path: Path, metrics: CollectorRegistry) -> None:
    token = tmp_path / "token"
    write(token, "0123456789abcdef-token")
    path = write(tmp_path / "c.toml", f"[control]\ntoken_file = '{token}'\n")
    vg.configure(path, env=False)
    write(token, "short")
    with pytest.raises(vg.ConfigError) as info:
        vg.reload()
    assert info.value.key == "control.token_file"
    assert config.control_token() == "0123456789abcdef-token"
    write(token, "fedcba9876543210-token")
    vg.reload()
    assert config.control_token() == "fedcba9876543210-token"


# -- calls in flight finish under the policies they started with ------------------------------

IN_FLIGHT = "[vendors.acme]\ntimeout.attempt = {attempt}\nretry.attempts = {attempts}\n"


def test_call_in_flight_finishes_under_the_old_pipeline(tmp_path: Path,
                                                        metrics: CollectorRegistry) -> None:
    path = write(tmp_path / "c.toml", IN_FLIGHT.format(attempt=30.0, attempts=3))
    acme = vg.Vendor("acme", retry=vg.Retry(budget=None), breaker=None, registry=metrics)
    inside, release = threading.Event(), threading.Event()

    @acme.guard("op", timeout_mode="caller")
    def call(block: bool, bounds: list[float | None]) -> None:
        bounds.append(attempt_timeout())
        if block and len(bounds) == 1:
            inside.set()
            assert release.wait(10)
        raise Boom

    vg.configure(path, env=False)
    g = call.vendorguard  # type: ignore[attr-defined]
    old = g.pipeline
    old_bounds: list[float | None] = []
    outcome: list[BaseException] = []

    def in_flight() -> None:
        try:
            call(True, old_bounds)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=in_flight)
    thread.start()
    try:
        assert inside.wait(10)
        write(path, IN_FLIGHT.format(attempt=40.0, attempts=1))
        assert vg.reload().generation == 2
        assert g.pipeline is not old
        assert (g.timeout.attempt, g.retry.attempts) == (40.0, 1)

        new_bounds: list[float | None] = []
        with pytest.raises(Boom):
            call(False, new_bounds)
        assert new_bounds == [40.0]  # one attempt, the new bound
    finally:
        release.set()
        thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], Boom)
    assert old_bounds == [30.0, 30.0, 30.0]  # three attempts, the old bound


def test_async_call_in_flight_finishes_under_the_old_pipeline(
        tmp_path: Path, metrics: CollectorRegistry) -> None:
    path = write(tmp_path / "c.toml", IN_FLIGHT.format(attempt=30.0, attempts=3))
    acme = vg.Vendor("acme", retry=vg.Retry(budget=None), breaker=None, registry=metrics)

    async def scenario() -> None:
        inside, release = asyncio.Event(), asyncio.Event()

        @acme.guard("op")
        async def call(block: bool, bounds: list[float | None]) -> None:
            bounds.append(attempt_timeout())
            if block and len(bounds) == 1:
                inside.set()
                await release.wait()
            raise Boom

        vg.configure(path, env=False)
        old_bounds: list[float | None] = []
        task = asyncio.create_task(call(True, old_bounds))
        await asyncio.wait_for(inside.wait(), 10)
        write(path, IN_FLIGHT.format(attempt=40.0, attempts=1))
        vg.reload()
        new_bounds: list[float | None] = []
        with pytest.raises(Boom):
            await call(False, new_bounds)
        assert new_bounds == [40.0]
        release.set()
        with pytest.raises(Boom):
            await asyncio.wait_for(task, 10)
        assert old_bounds == [30.0, 30.0, 30.0]

    asyncio.run(scenario())


# -- reload under load ----------------------------------------------------------------------------

# Two configurations that pair an attempt bound with a retry count and a bulkhead size: a call
# that sees one field from each was run by a half-built guard.
LOAD = ("[vendors.acme]\ntimeout.attempt = {attempt}\nretry.attempts = {attempts}\n"
        "bulkhead.max_concurrent = {slots}\nbulkhead.max_wait = 5.0\n")
PAIRS = {10.0: (2, 8), 20.0: (3, 16)}
CONFIGS = [LOAD.format(attempt=a, attempts=n, slots=s) for a, (n, s) in PAIRS.items()]
BAD = "[vendors.acme]\nretry.attempts = 0\ntimeout.attempt = 10.0\n"
RELOADS = 200
WORKERS = 8
_running: contextvars.ContextVar[Any] = contextvars.ContextVar("running_pipeline")


class Load:
    """Shared bookkeeping for the load tests: calls counted with a condition, so the main
    thread can interleave each reload with calls, and every problem recorded."""

    def __init__(self) -> None:
        self.done = 0
        self.cond = threading.Condition()
        self.problems: list[str] = []
        self.bounds: set[float] = set()
        self.slots: dict[int, Any] = {}
        self.stop = threading.Event()

    def hook(self, pipeline: Any, fn: Any, is_async: bool) -> Any:
        _running.set(pipeline)
        return fn

    def check_attempt(self) -> float:
        """Inside an attempt: the pipeline running it is one configuration, whole."""
        bound = attempt_timeout()
        g = _running.get()
        if bound not in PAIRS:
            self.problems.append(f"attempt bound {bound}")
            return -1.0
        attempts, slots = PAIRS[bound]
        if (g.timeout.attempt, g.retry.attempts, g.slots.limit) != (bound, attempts, slots):
            self.problems.append(f"half-built pipeline: {g.timeout} {g.retry} {g.slots.limit}")
        self.slots[id(g.slots)] = g.slots
        return bound

    def check_result(self, x: int, result: Any, bounds: list[float]) -> None:
        self.bounds.update(bounds)
        if x % 2:
            if (result, len(bounds)) != (x * 3, 1):
                self.problems.append(f"call {x}: {result!r} after {bounds}")
        else:
            expected_attempts = PAIRS.get(bounds[0], (0, 0))[0] if bounds else 0
            if result != ("fallback", x * 3, expected_attempts) or len(set(bounds)) != 1 \
                    or len(bounds) != expected_attempts:
                self.problems.append(f"call {x}: {result!r} after attempts at {bounds}")
        with self.cond:
            self.done += 1
            self.cond.notify_all()

    def wait_for_calls(self, after: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.done > after, timeout=10), "no progress"


def _fallback(failure: vg.Failure) -> Any:
    return ("fallback", failure.args[0] * 3, failure.attempts)


def _reload_many(path: Path, load: Load, acme: vg.Vendor,
                 before_each: Callable[[], None] = lambda: None) -> None:
    """RELOADS good reloads alternating CONFIGS, each after at least one more call; a bad
    reload every 10th, which must change nothing."""
    start = config.generation()
    for i in range(RELOADS):
        mark = load.done
        before_each()
        load.wait_for_calls(mark)
        write(path, CONFIGS[i % 2])
        vg.reload()
        if i % 10 == 9:
            policy, gen = acme.policy_in_effect, config.generation()
            write(path, BAD)
            with pytest.raises(vg.ConfigError) as info:
                vg.reload()
            assert info.value.key == "vendors.acme.retry.attempts"
            assert acme.policy_in_effect is policy
            assert config.generation() == gen
    assert config.generation() == start + RELOADS


def test_reload_under_load_sync(tmp_path: Path, metrics: CollectorRegistry) -> None:
    path = write(tmp_path / "load.toml", CONFIGS[1])
    acme = vg.Vendor("acme", retry=vg.Retry(budget=None), breaker=None, registry=metrics)
    load = Load()

    @acme.guard("op", fallback=_fallback, timeout_mode="caller")
    def call(x: int, bounds: list[float]) -> Any:
        bounds.append(load.check_attempt())
        if x % 2 == 0:
            raise ConnectionRefusedError("try again")  # transient: retried
        return x * 3

    def worker(n: int) -> None:
        x = n
        while not load.stop.is_set():
            bounds: list[float] = []
            try:
                result = call(x, bounds)
            except BaseException as exc:
                load.problems.append(f"call {x} raised {exc!r}")
                result = None
            load.check_result(x, result, bounds)
            x += WORKERS

    vg.configure(path, env=False)
    events.add_attempt_hook(load.hook)
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(WORKERS)]
    try:
        for t in threads:
            t.start()
        _reload_many(path, load, acme)
    finally:
        load.stop.set()
        for t in threads:
            t.join(10)
        events.remove_attempt_hook(load.hook)
    assert not [t for t in threads if t.is_alive()]
    assert load.problems == []
    assert load.done >= RELOADS
    assert load.bounds == set(PAIRS)  # calls ran under both configurations
    assert len(load.slots) > 2  # and under pipelines of many generations
    assert [s.active for s in load.slots.values()] == [0] * len(load.slots)  # none leaked
    assert acme.in_flight == 0


def test_reload_under_load_async(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """The same with WORKERS tasks on one event loop. The loop would hold the GIL for long
    stretches and starve the reloading thread, so the tasks call in rounds: before each reload
    the main thread grants a round of calls, which then run while it reloads."""
    path = write(tmp_path / "load.toml", CONFIGS[1])
    acme = vg.Vendor("acme", retry=vg.Retry(budget=None), breaker=None, registry=metrics)
    load = Load()
    started = threading.Event()
    loop_parts: dict[str, Any] = {}

    @acme.guard("op", fallback=_fallback)
    async def call(x: int, bounds: list[float]) -> Any:
        bounds.append(load.check_attempt())
        await asyncio.sleep(0)  # let the other tasks in while holding a slot
        if x % 2 == 0:
            raise ConnectionRefusedError("try again")
        return x * 3

    async def worker(n: int, permits: asyncio.Semaphore) -> None:
        x = n
        while True:
            await permits.acquire()
            if load.stop.is_set():
                return
            bounds: list[float] = []
            try:
                result = await call(x, bounds)
            except BaseException as exc:
                load.problems.append(f"call {x} raised {exc!r}")
                result = None
            load.check_result(x, result, bounds)
            x += WORKERS

    async def all_workers() -> None:
        permits = asyncio.Semaphore(0)
        loop_parts.update(loop=asyncio.get_running_loop(), permits=permits)
        started.set()
        await asyncio.gather(*(worker(n, permits) for n in range(WORKERS)))

    def grant(calls: int) -> None:
        def release() -> None:
            for _ in range(calls):
                loop_parts["permits"].release()
        loop_parts["loop"].call_soon_threadsafe(release)

    vg.configure(path, env=False)
    events.add_attempt_hook(load.hook)
    loop_thread = threading.Thread(target=asyncio.run, args=(all_workers(),), daemon=True)
    try:
        loop_thread.start()
        assert started.wait(10)
        _reload_many(path, load, acme, lambda: grant(2 * WORKERS))
    finally:
        load.stop.set()
        if started.is_set():
            grant(10 * WORKERS)
        loop_thread.join(10)
        events.remove_attempt_hook(load.hook)
    assert not loop_thread.is_alive()
    assert load.problems == []
    assert load.done >= RELOADS
    assert load.bounds == set(PAIRS)
    assert len(load.slots) > 2
    assert [s.active for s in load.slots.values()] == [0] * len(load.slots)
    assert acme.in_flight == 0


# -- watching the file, and SIGHUP ---------------------------------------------------------------

def _watchers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "vendorguard-config-watch"}


def test_watch_reloads_on_a_file_change_and_stops(
        source: Path, metrics: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    vg.configure(source, env=False)
    watched = _WatchedStat()
    monkeypatch.setattr(config, "os", watched)
    before = _watchers()
    stop = config.watch(interval=0.05)
    [thread] = _watchers() - before
    try:
        assert watched.looked.wait(5)  # its baseline is the file before the edit
        write(source, "[vendors.acme]\ntimeout.attempt = 3.0\n# now longer\n")
        assert wait_for(lambda: config.generation() >= 2), "the change was not picked up"
        assert acme.timeout == vg.Timeout(attempt=3.0)
        assert audit.entries()[-1].actor == "file watch"

        # a bad edit is refused (and audited), a fixed one applies
        write(source, "[vendors.acme]\ntimeout.attempt = -1.0\n")
        assert wait_for(lambda: audit.entries()[-1].action == "refused")
        assert config.generation() == 2
        assert acme.timeout == vg.Timeout(attempt=3.0)
        write(source, "[vendors.acme]\ntimeout.attempt = 4.0\n")
        assert wait_for(lambda: config.generation() >= 3)
        assert acme.timeout == vg.Timeout(attempt=4.0)
    finally:
        stop()
    thread.join(5)
    assert not thread.is_alive()
    assert config.generation() == 3


def test_watch_refuses_a_bad_interval() -> None:
    for interval in (0, -1.0):
        with pytest.raises(ValueError, match="interval"):
            config.watch(interval)


class _WatchedStat:
    """``os`` for vendorguard.config that tells when the watcher first looks at the file
    (``looked``), and can hold that first look until ``hold`` is set."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.looked = threading.Event()
        self._hold = hold

    def stat(self, path: Any) -> os.stat_result:
        if not self.looked.is_set() and self._hold is not None:
            self._hold.wait(5)
        try:
            return os.stat(path)
        finally:
            self.looked.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_watch_sees_an_edit_made_before_its_thread_first_looks(
        source: Path, metrics: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline is the file as it was when watch() was called: an edit made after it
    returned, before the watcher thread first looks, is reloaded."""
    acme = vg.Vendor("acme", registry=metrics)
    vg.configure(source, env=False)
    edited = threading.Event()
    monkeypatch.setattr(config, "os", _WatchedStat(hold=edited))
    before = _watchers()
    stop = config.watch(interval=0.02)
    [thread] = _watchers() - before
    try:
        write(source, "[vendors.acme]\ntimeout.attempt = 3.0\n# edited\n")
        edited.set()
        wait_for(lambda: config.generation() >= 2, timeout=1.0)
    finally:
        stop()
        thread.join(5)
    assert config.generation() == 2
    assert acme.timeout == vg.Timeout(attempt=3.0)


def test_reload_on_sighup(source: Path, metrics: CollectorRegistry) -> None:
    acme = vg.Vendor("acme", registry=metrics)
    vg.configure(source, env=False)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        config.reload_on_sighup()
        assert signal.getsignal(signal.SIGHUP) is not previous
        write(source, "[vendors.acme]\ntimeout.attempt = 6.0\n")
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: config.generation() >= 2), "SIGHUP did not reload"
        assert acme.timeout == vg.Timeout(attempt=6.0)
        assert audit.entries()[-1].actor == "SIGHUP"

        write(source, "[vendors.acme]\ntimeout.attempt = 'x'\n")  # refused, quietly
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: audit.entries()[-1].action == "refused")
        assert config.generation() == 2
        assert acme.timeout == vg.Timeout(attempt=6.0)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert signal.getsignal(signal.SIGHUP) is previous
