"""Fault injection (vendorguard.testing): faults act inside the guard's attempt, so that
timeouts, retries, the breaker, fallbacks, metrics and spans react as in production, for sync
and async guarded functions, across threads, nested, and only while their block lasts."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample, wait_until
from vendorguard import events, testing
from vendorguard.fallback import MISSING
from vendorguard.telemetry import tracing
from vendorguard.testing.harness import Harness

MARGIN = 2.0
"""Generous slack over a time bound, for slow CI machines (an upper bound only)."""
LONG = 5.0
"""An injected latency far beyond every attempt bound of these tests."""
FAULTS_FILE = testing.faults.__file__
ROOT = Path(__file__).resolve().parent.parent


class Boom(Exception):
    """A vendor failure the default classifier calls transient."""


class Subject:
    """A guarded sync or async function that records every time the real vendor code ran."""

    def __init__(self, vendor: vg.Vendor, flavor: str, operation: str = "op",
                 fallback: Any = MISSING, **options: Any) -> None:
        self.flavor = flavor
        self.real: list[str] = []
        real = self.real
        if flavor == "async":
            async def acall() -> str:
                real.append(operation)
                return "real"

            self.afn: Callable[[], Any] = vendor.guard(operation, fallback=fallback,
                                                       **options)(acall)
        else:
            def call() -> str:
                real.append(operation)
                return "real"

            self.fn: Callable[[], Any] = vendor.guard(operation, fallback=fallback,
                                                      **options)(call)

    def __call__(self) -> Any:
        """One guarded call, awaited on a fresh event loop for the async flavor."""
        if self.flavor == "async":
            return asyncio.run(self.afn())
        return self.fn()

    def outcomes(self, n: int) -> list[str]:
        """``n`` calls in a row: "ok", or the name of the exception each one raised."""
        def name(exc: BaseException | None) -> str:
            return "ok" if exc is None else type(exc).__name__

        if self.flavor == "async":
            async def many() -> list[str]:
                seen = []
                for _ in range(n):
                    try:
                        await self.afn()
                    except Exception as exc:
                        seen.append(name(exc))
                    else:
                        seen.append(name(None))
                return seen

            return asyncio.run(many())
        seen = []
        for _ in range(n):
            try:
                self.fn()
            except Exception as exc:
                seen.append(name(exc))
            else:
                seen.append(name(None))
        return seen


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_vendor(name: str = "v", *, attempts: int = 3, failures: int = 100,
                timeout: vg.Timeout | None = None,
                registry: CollectorRegistry | None = None) -> vg.Vendor:
    """A vendor with ``attempts`` attempts per call and a breaker opening after ``failures``
    consecutive failures (by default far away, so that it never interferes). Its idle worker
    threads (sync attempts with a bound) exit at once, so that no test leaves one behind."""
    vendor = vg.Vendor(name, retry=None if attempts == 1 else vg.Retry(attempts=attempts),
                       breaker=vg.Breaker(failures=failures, reset_after=30.0),
                       timeout=timeout, registry=registry)
    vendor.worker_pool().idle_timeout = 0.01
    return vendor


@pytest.fixture(autouse=True)
def _no_thread_left_behind() -> Iterator[None]:
    """Every worker a test started (hung ones included) is gone once the test is over."""
    before = set(threading.enumerate())

    def started() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    yield
    assert wait_until(lambda: not started()), started()


def thread_inside_fault(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked inside an injected fault's attempt right now."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_filename == FAULTS_FILE and frame.f_code.co_name == "attempt":
            return True
        frame = frame.f_back
    return False


def task_inside_fault(task: asyncio.Task[Any] | None) -> bool:
    """Whether ``task`` is suspended inside an injected fault's attempt right now."""
    coro: Any = None if task is None else task.get_coro()
    while coro is not None:
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_filename == FAULTS_FILE and code.co_name == "attempt":
            return True
        coro = getattr(coro, "cr_await", None)
    return False


# -- outage ---------------------------------------------------------------------------------


def test_outage_fails_every_attempt_without_calling_the_vendor(
        vendorguard: Harness, flavor: str) -> None:
    """An outage makes every attempt fail as 'connection refused': the call fails after all
    its attempts, the retries are counted and the real function never runs."""
    subject = Subject(make_vendor(attempts=3), flavor)
    with vendorguard.inject("v", vendorguard.outage()), pytest.raises(ConnectionRefusedError):
        subject()
    assert subject.real == []
    assert vendorguard.calls("v", "error") == 1
    assert vendorguard.calls("v") == 1
    assert vendorguard.retries("v") == 2


def test_outage_is_answered_by_the_fallback(vendorguard: Harness, flavor: str) -> None:
    """With a fallback, an outage is served the fallback's value after the retries, and the
    real function never runs."""
    subject = Subject(make_vendor(attempts=3), flavor, fallback="cached")
    with vendorguard.inject("v", vendorguard.outage()):
        assert subject() == "cached"
    assert subject.real == []
    assert vendorguard.fallbacks("v") == 1
    assert vendorguard.calls("v", "error") == 1
    assert vendorguard.retries("v") == 2


def test_outage_opens_the_breaker_and_later_calls_are_rejected(
        vendorguard: Harness, flavor: str) -> None:
    """The breaker counts injected failures: it opens at its threshold, later calls are
    rejected without any attempt, and after its reset time a call reaches the vendor."""
    subject = Subject(make_vendor(attempts=1, failures=3), flavor)
    with vendorguard.inject("v", vendorguard.outage()):
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                subject()
        assert vendorguard.state("v") == "open"
        with pytest.raises(vg.CircuitOpenError):
            subject()
    assert vendorguard.calls("v", "error") == 3
    assert vendorguard.calls("v", "rejected") == 1
    with pytest.raises(vg.CircuitOpenError):
        subject()  # the injection is over, but the circuit is still open
    assert subject.real == []
    vendorguard.advance(30.0)
    assert subject() == "real"
    assert subject.real == ["op"]
    assert vendorguard.state("v") == "closed"


# -- latency ----------------------------------------------------------------------------------


def test_latency_slows_calls_that_still_succeed(vendorguard: Harness, flavor: str) -> None:
    """Latency within every bound delays the attempt, which then reaches the vendor."""
    subject = Subject(make_vendor(), flavor)
    with vendorguard.inject("v", vendorguard.latency(0.2)):
        started = time.monotonic()
        assert subject() == "real"
        elapsed = time.monotonic() - started
    assert elapsed >= 0.2
    assert subject.real == ["op"]
    assert vendorguard.calls("v", "success") == 1
    assert vendorguard.retries("v") == 0


BOUNDED = [("sync", "thread"), ("sync", "caller"), ("async", "thread")]
BOUNDED_IDS = ["sync-thread", "sync-caller", "async"]


@pytest.mark.parametrize(("flavor_", "mode"), BOUNDED, ids=BOUNDED_IDS)
def test_latency_beyond_the_attempt_timeout_times_out(
        vendorguard: Harness, flavor_: str, mode: str) -> None:
    """Latency longer than the attempt timeout ends the attempt at its bound: outcome
    timeout, without waiting for the latency (thread mode, caller mode and async)."""
    subject = Subject(make_vendor(attempts=1, timeout=vg.Timeout(attempt=0.1)), flavor_,
                      timeout_mode=mode)
    with vendorguard.inject("v", vendorguard.latency(LONG)):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            subject()
        elapsed = time.monotonic() - started
        assert subject.real == []
    assert elapsed < 0.1 + MARGIN
    assert vendorguard.calls("v", "timeout") == 1
    assert vendorguard.calls("v") == 1


# -- hang -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flavor_", "mode"), BOUNDED, ids=BOUNDED_IDS)
def test_hang_is_bounded_by_the_attempt_timeout(
        vendorguard: Harness, flavor_: str, mode: str) -> None:
    """A hang never answers: the attempt timeout ends it, outcome timeout, no vendor call. In
    thread mode the abandoned worker stays hung until the injection ends, as it would on a
    hung vendor."""
    vendor = make_vendor(attempts=1, timeout=vg.Timeout(attempt=0.1))
    subject = Subject(vendor, flavor_, timeout_mode=mode)
    abandoned = flavor_ == "sync" and mode == "thread"
    with vendorguard.inject("v", vendorguard.hang()):
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            subject()
        assert time.monotonic() - started < 0.1 + MARGIN
        assert vendor.abandoned == (1 if abandoned else 0)
    assert wait_until(lambda: vendor.abandoned == 0)
    assert subject.real == []
    assert vendorguard.calls("v", "timeout") == 1


def test_hang_is_bounded_by_a_deadline(vendorguard: Harness, flavor: str) -> None:
    """Without an attempt timeout, an enclosing ``vg.deadline`` bounds a hang."""
    subject = Subject(make_vendor(attempts=1), flavor)

    async def bounded_async() -> Any:
        async with vg.deadline(0.2):
            return await subject.afn()

    def bounded() -> Any:
        if flavor == "async":
            return asyncio.run(bounded_async())
        with vg.deadline(0.2):
            return subject()

    started = time.monotonic()
    with vendorguard.inject("v", vendorguard.hang()), pytest.raises(TimeoutError):
        bounded()
    assert time.monotonic() - started < 0.2 + MARGIN
    assert subject.real == []
    assert vendorguard.calls("v", "timeout") == 1


def test_unbounded_hang_ends_when_the_injection_ends(vendorguard: Harness, flavor: str) -> None:
    """A hang nothing bounds blocks until its injection is lifted; then the call ends (as a
    timeout) and the next call reaches the vendor."""
    subject = Subject(make_vendor(attempts=1), flavor)
    errors: list[BaseException] = []
    tasks: list[asyncio.Task[Any]] = []

    def run() -> None:
        try:
            if flavor == "async":
                async def main() -> Any:
                    task = asyncio.ensure_future(subject.afn())
                    tasks.append(task)
                    return await task

                asyncio.run(main())
            else:
                subject()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    with vendorguard.inject("v", vendorguard.hang()):
        thread.start()
        if flavor == "async":
            assert wait_until(lambda: task_inside_fault(next(iter(tasks), None)))
        else:
            assert wait_until(lambda: thread_inside_fault(thread))
        assert thread.is_alive()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], TimeoutError)
    assert subject.real == []
    assert vendorguard.calls("v", "timeout") == 1
    assert subject() == "real"
    assert subject.real == ["op"]


# -- errors -----------------------------------------------------------------------------------


def test_seeded_errors_are_reproducible(vendorguard: Harness, flavor: str) -> None:
    """``errors(0.5, seed=7)`` fails the same calls on every run, about half of them."""
    subject = Subject(make_vendor(attempts=1, failures=10_000), flavor)
    runs = []
    for seed in (7, 7, 8):
        with vendorguard.inject("v", vendorguard.errors(0.5, seed=seed)):
            runs.append(subject.outcomes(200))
    first, again, other = runs
    assert first == again
    assert first != other
    assert set(first) == {"ok", "ConnectionRefusedError"}
    failed = first.count("ConnectionRefusedError")
    assert 60 <= failed <= 140
    assert len(subject.real) == sum(run.count("ok") for run in runs)
    assert vendorguard.calls("v", "error") == 600 - len(subject.real)


EXCEPTIONS: list[tuple[str, Any]] = [
    ("class", Boom),
    ("instance", Boom("the instance")),
    ("factory", lambda: Boom("made by the factory")),
]


@pytest.mark.parametrize(("kind", "exc"), EXCEPTIONS, ids=[k for k, _ in EXCEPTIONS])
def test_errors_raise_the_given_exception(vendorguard: Harness, flavor: str, kind: str,
                                          exc: Any) -> None:
    """A custom exception (class, instance or factory) is raised as is, and classified like
    the vendor's own failure (transient: retried)."""
    subject = Subject(make_vendor(attempts=3), flavor)
    with vendorguard.inject("v", vendorguard.errors(1.0, exc=exc)), \
            pytest.raises(Boom) as info:
        subject()
    if kind == "instance":
        assert info.value is exc
    elif kind == "factory":
        assert str(info.value) == "made by the factory"
    assert type(info.value) is Boom
    assert subject.real == []
    assert vendorguard.retries("v") == 2
    assert vendorguard.calls("v", "error") == 1


def test_injected_caller_errors_are_not_retried(vendorguard: Harness, flavor: str) -> None:
    """An injected caller error (TypeError) is raised at once: no retry, no breaker count,
    no fallback."""
    subject = Subject(make_vendor(attempts=3, failures=1), flavor, fallback="cached")
    bad = TypeError("wrong arguments")
    with vendorguard.inject("v", vendorguard.errors(1.0, exc=bad)), \
            pytest.raises(TypeError) as info:
        subject()
    assert info.value is bad
    assert vendorguard.calls("v", "caller_error") == 1
    assert vendorguard.retries("v") == 0
    assert vendorguard.fallbacks("v") == 0
    assert vendorguard.state("v") == "closed"


# -- status and flapping ----------------------------------------------------------------------


def test_status_on_a_plain_function_raises_injected_status(
        vendorguard: Harness, flavor: str) -> None:
    """Without an integration, an injected HTTP status is ``InjectedStatus`` carrying the
    status code and Retry-After."""
    subject = Subject(make_vendor(attempts=1), flavor)
    with vendorguard.inject("v", vendorguard.status(503, retry_after=2.5)), \
            pytest.raises(testing.InjectedStatus) as info:
        subject()
    assert info.value.status_code == 503
    assert info.value.retry_after == 2.5
    assert "503" in str(info.value)
    assert subject.real == []
    assert vendorguard.calls("v", "error") == 1


def test_flapping_follows_its_pattern(vendorguard: Harness, flavor: str) -> None:
    """``flapping("ok,ok,fail")`` lets two attempts through and fails the third, in a cycle."""
    subject = Subject(make_vendor(attempts=1), flavor)
    with vendorguard.inject("v", vendorguard.flapping("ok,ok,fail")):
        seen = subject.outcomes(6)
    fail = "ConnectionRefusedError"
    assert seen == ["ok", "ok", fail, "ok", "ok", fail]
    assert subject.real == ["op"] * 4
    assert vendorguard.calls("v", "success") == 4
    assert vendorguard.calls("v", "error") == 2


def test_flapping_accepts_booleans(vendorguard: Harness) -> None:
    """A flapping pattern may be booleans (True = ok)."""
    subject = Subject(make_vendor(attempts=1), "sync")
    with vendorguard.inject("v", vendorguard.flapping([False, True])):
        assert subject.outcomes(4) == ["ConnectionRefusedError", "ok"] * 2


# -- scope: operations, nesting, threads, the end of the block -------------------------------


def test_operation_filter_affects_only_that_operation(vendorguard: Harness, flavor: str) -> None:
    """An injection for one operation leaves the vendor's other operations alone."""
    vendor = make_vendor(attempts=1)
    send = Subject(vendor, flavor, "mail.send")
    lookup = Subject(vendor, flavor, "mail.lookup")
    with vendorguard.inject("v", vendorguard.outage(), "mail.send"):
        with pytest.raises(ConnectionRefusedError):
            send()
        assert lookup() == "real"
    assert send.real == []
    assert lookup.real == ["mail.lookup"]
    assert vendorguard.calls("v", "error", operation="mail.send") == 1
    assert vendorguard.calls("v", "success", operation="mail.lookup") == 1


def test_other_vendors_are_not_affected(vendorguard: Harness) -> None:
    """An injection names its vendor: another vendor's calls go through."""
    down = Subject(make_vendor("down", attempts=1), "sync")
    up = Subject(make_vendor("up", attempts=1), "sync")
    with vendorguard.inject("down", vendorguard.outage()):
        with pytest.raises(ConnectionRefusedError):
            down()
        assert up() == "real"


def test_innermost_injection_wins_and_the_outer_resumes(
        vendorguard: Harness, flavor: str) -> None:
    """Nested injections: the innermost matching one applies; when it ends, the outer one
    applies again; an inner one for another operation leaves the outer in force elsewhere."""
    vendor = make_vendor(attempts=1)
    a = Subject(vendor, flavor, "a")
    b = Subject(vendor, flavor, "b")
    with vendorguard.inject("v", vendorguard.outage()):
        with pytest.raises(ConnectionRefusedError):
            a()
        with vendorguard.inject("v", vendorguard.status(503), "a"):
            with pytest.raises(testing.InjectedStatus):
                a()
            with pytest.raises(ConnectionRefusedError):
                b()
            with vendorguard.inject("v", vendorguard.latency(0)):
                assert a() == "real"
                assert b() == "real"
            with pytest.raises(testing.InjectedStatus):
                a()
        with pytest.raises(ConnectionRefusedError):
            a()
    assert a() == "real"
    assert a.real == ["a", "a"]
    assert b.real == ["b"]


def test_injection_reaches_calls_from_other_threads(vendorguard: Harness, flavor: str) -> None:
    """While active, an injection applies to calls made on any thread."""
    subject = Subject(make_vendor(attempts=1), flavor)

    def attempt() -> str:
        try:
            return str(subject())
        except ConnectionRefusedError:
            return "refused"

    with ThreadPoolExecutor(max_workers=4) as pool:
        with vendorguard.inject("v", vendorguard.outage()):
            during = list(pool.map(lambda _: attempt(), range(8)))
        after = list(pool.map(lambda _: attempt(), range(4)))
    assert during == ["refused"] * 8
    assert after == ["real"] * 4
    assert len(subject.real) == 4


def test_after_the_block_calls_reach_the_vendor_again(vendorguard: Harness, flavor: str) -> None:
    """When the block ends (normally or by an exception) the hook is gone and calls reach the
    real function again."""
    subject = Subject(make_vendor(attempts=1), flavor)
    assert events.attempt_hook is None
    with vendorguard.inject("v", vendorguard.outage()):
        assert events.attempt_hook is not None
        with pytest.raises(ConnectionRefusedError):
            subject()
    assert events.attempt_hook is None
    assert subject() == "real"
    with pytest.raises(KeyError), vendorguard.inject("v", vendorguard.outage()):
        raise KeyError("the test's own failure")
    assert events.attempt_hook is None
    assert subject() == "real"
    assert subject.real == ["op", "op"]


def test_async_with_injects_too(vendorguard: Harness) -> None:
    """``async with inject(...)`` works like ``with`` and yields the fault."""
    subject = Subject(make_vendor(attempts=1), "async")
    fault = vendorguard.outage()

    async def main() -> list[str]:
        seen = []
        async with testing.inject("v", fault) as active:
            assert active is fault
            try:
                await subject.afn()
            except ConnectionRefusedError:
                seen.append("refused")
        seen.append(await subject.afn())
        return seen

    assert asyncio.run(main()) == ["refused", "real"]
    assert events.attempt_hook is None


# -- the switch and validation ----------------------------------------------------------------


def test_injection_is_refused_when_disabled(vendorguard: Harness) -> None:
    """Outside tests injection is off: ``inject`` raises a RuntimeError that says how to turn
    it on, and nothing is injected."""
    subject = Subject(make_vendor(attempts=1), "sync")
    assert testing.enabled()
    testing.disable()
    try:
        assert not testing.enabled()
        with pytest.raises(RuntimeError, match=r"enable\(\)"), \
                testing.inject("v", testing.outage()):
            pass  # pragma: no cover - never entered
        assert events.attempt_hook is None
        assert subject() == "real"
    finally:
        testing.enable()
    assert testing.enabled()


OUTSIDE_PYTEST = """
from vendorguard import testing
try:
    with testing.inject("v", testing.outage()):
        pass
except RuntimeError as exc:
    print("refused", "enable()" in str(exc), testing.enabled())
else:
    print("injected", testing.enabled())
"""


@pytest.mark.parametrize(("env", "expected"), [(None, "refused True False"),
                                               ("1", "injected True")],
                         ids=["unset", "VENDORGUARD_FAULTS=1"])
def test_injection_is_off_outside_tests_unless_turned_on(env: str | None, expected: str) -> None:
    """In a process that is not a test run, injection is off, unless VENDORGUARD_FAULTS=1."""
    environ = {k: v for k, v in os.environ.items() if k != "VENDORGUARD_FAULTS"}
    if env is not None:
        environ["VENDORGUARD_FAULTS"] = env
    done = subprocess.run([sys.executable, "-c", OUTSIDE_PYTEST], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().splitlines()[-1] == expected


def test_disable_lets_injections_in_progress_finish(vendorguard: Harness) -> None:
    """Disabling refuses new injections; one already active runs to the end of its block."""
    subject = Subject(make_vendor(attempts=1), "sync")
    try:
        with testing.inject("v", testing.outage()):
            testing.disable()
            with pytest.raises(ConnectionRefusedError):
                subject()
    finally:
        testing.enable()
    assert subject() == "real"


INVALID_FAULTS: list[tuple[str, Callable[[], Any], str]] = [
    ("rate above 1", lambda: testing.errors(1.5), "rate"),
    ("negative rate", lambda: testing.errors(-0.1), "rate"),
    ("rate not a number", lambda: testing.errors("half"), "rate"),
    ("rate NaN", lambda: testing.errors(float("nan")), "rate"),
    ("status 200", lambda: testing.status(200), "status code"),
    ("status 600", lambda: testing.status(600), "status code"),
    ("status as text", lambda: testing.status("503"), "status code"),  # type: ignore[arg-type]
    ("negative retry_after", lambda: testing.status(429, retry_after=-1), "retry_after"),
    ("unknown flapping step", lambda: testing.flapping("ok,maybe"), "flapping"),
    ("empty flapping", lambda: testing.flapping(""), "flapping"),
    ("empty flapping list", lambda: testing.flapping([]), "flapping"),
    ("negative latency", lambda: testing.latency(-1), "latency"),
    # Durations are finite everywhere in vendorguard; an infinite latency is accepted today
    # and then fails every unbounded attempt with OverflowError (a "vendor failure").
    ("infinite latency", lambda: testing.latency(float("inf")), "latency"),
]


@pytest.mark.parametrize(("build", "words"), [(b, w) for _, b, w in INVALID_FAULTS],
                         ids=[i for i, _, _ in INVALID_FAULTS])
def test_invalid_faults_are_value_errors(build: Callable[[], Any], words: str) -> None:
    """A fault built with a bad value fails at once with a ValueError naming the value."""
    with pytest.raises(ValueError, match=words):
        build()


def test_inject_needs_a_fault(vendorguard: Harness) -> None:
    """Anything but a fault built by vendorguard.testing is a TypeError."""
    with pytest.raises(TypeError, match=r"fault must be built by vendorguard\.testing"), \
            testing.inject("v", "outage"):  # type: ignore[arg-type]
        pass  # pragma: no cover - never entered
    assert events.attempt_hook is None


@pytest.mark.parametrize("vendor", ["", None, 42], ids=["empty", "none", "int"])
def test_inject_needs_a_vendor_name(vendorguard: Harness, vendor: Any) -> None:
    """An empty (or missing) vendor name is a ValueError."""
    with pytest.raises(ValueError, match="vendor must be a vendor name"), \
            testing.inject(vendor, testing.outage()):
        pass  # pragma: no cover - never entered
    assert events.attempt_hook is None


def test_inject_needs_an_operation_name_or_none(vendorguard: Harness) -> None:
    """An empty operation name is a ValueError (None means every operation)."""
    with pytest.raises(ValueError, match="operation must be"), \
            testing.inject("v", testing.outage(), ""):
        pass  # pragma: no cover - never entered
    assert events.attempt_hook is None


# -- logs, metrics and spans ------------------------------------------------------------------


def test_entering_and_leaving_an_injection_is_logged(
        vendorguard: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Every injection is logged at WARNING on "vendorguard" when it starts and when it ends,
    naming the vendor and the kind of fault."""
    caplog.set_level(logging.WARNING, logger="vendorguard")
    with vendorguard.inject("sendgrid", vendorguard.latency(0), "mail.send"):
        started = [r for r in caplog.records if "inject" in r.getMessage()]
        assert len(started) == 1
    records = [r for r in caplog.records if "inject" in r.getMessage()]
    assert len(records) == 2
    for record in records:
        assert record.name == "vendorguard"
        assert record.levelno == logging.WARNING
        assert "sendgrid" in record.getMessage()
        assert "latency" in record.getMessage()
    assert "mail.send" in records[0].getMessage()
    assert "ended" in records[1].getMessage()


def test_outage_metrics_are_those_of_a_real_outage(
        metrics: CollectorRegistry, no_backoff: None) -> None:
    """An outage answered by a fallback counts an error call, its retries and the fallback,
    exactly as a real outage would."""
    subject = Subject(make_vendor(attempts=3, registry=metrics), "sync", "mail.send",
                      fallback=None)
    with testing.inject("v", testing.outage()):
        assert subject() is None
    labels = {"vendor": "v", "operation": "mail.send"}
    assert sample(metrics, "vendorguard_calls_total", **labels, outcome="error") == 1
    assert sample(metrics, "vendorguard_calls_total", **labels, outcome="success") == 0
    assert sample(metrics, "vendorguard_fallbacks_total", **labels, reason="error") == 1
    assert sample(metrics, "vendorguard_retries_total", **labels, reason="transient") == 2
    assert sample(metrics, "vendorguard_call_duration_seconds_count", **labels,
                  outcome="error") == 1
    assert subject.real == []


def test_timeout_metrics_of_an_injected_hang(metrics: CollectorRegistry) -> None:
    """A hang bounded by the attempt timeout is counted as a timeout call."""
    subject = Subject(make_vendor(attempts=1, timeout=vg.Timeout(attempt=0.05),
                                  registry=metrics), "async")
    with testing.inject("v", testing.hang()), pytest.raises(vg.VendorTimeoutError):
        subject()
    assert sample(metrics, "vendorguard_calls_total", vendor="v", operation="op",
                  outcome="timeout") == 1


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.follow()
        provider.shutdown()


def test_outage_spans_are_those_of_a_real_outage(
        vendorguard: Harness, spans: InMemorySpanExporter, flavor: str) -> None:
    """The call span of an injected outage says error, all attempts, fallback served, with a
    failed child span per attempt, as for a real outage."""
    subject = Subject(make_vendor(attempts=3), flavor, "mail.send", fallback="cached")
    with vendorguard.inject("v", vendorguard.outage()):
        assert subject() == "cached"
    finished = list(spans.get_finished_spans())
    calls = [s for s in finished if s.name == "v mail.send"]
    assert len(calls) == 1
    attributes = dict(calls[0].attributes or {})
    assert attributes["vendorguard.outcome"] == "error"
    assert attributes["vendorguard.attempts"] == 3
    assert attributes["vendorguard.fallback"] is True
    assert attributes["error.type"] == "ConnectionRefusedError"
    attempts = [s for s in finished if s.name == "v mail.send attempt"]
    assert sorted((s.attributes or {})["vendorguard.attempt"] for s in attempts) == [1, 2, 3]
    for attempt in attempts:
        assert (attempt.attributes or {})["error.type"] == "ConnectionRefusedError"
        assert attempt.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize(("code", "attempts", "outcome"), [
    (400, 1, "caller_error"), (404, 1, "caller_error"), (500, 1, "error"),
    (503, 3, "error"), (429, 3, "error")])
def test_plain_status_is_classified_like_an_http_answer(
        vendorguard: Harness, code: int, attempts: int, outcome: str) -> None:
    """On a plain function an injected status is judged as the answer would be: 4xx are the
    caller's errors (no retry), other 5xx ambiguous (no retry), 429 and 503 retried."""
    vendor = make_vendor("plain")
    calls = []

    @vendor.guard("op")
    def op() -> str:
        calls.append(1)
        return "ok"

    with vendorguard.inject("plain", vendorguard.status(code)), \
            pytest.raises(testing.InjectedStatus):
        op()
    assert vendorguard.calls("plain", outcome) == 1
    assert vendorguard.retries("plain") == attempts - 1
    assert calls == []


def test_plain_status_retry_after_is_honoured(metrics: CollectorRegistry) -> None:
    """An injected 429's Retry-After delays the retry (outside testing mode) at least that
    long, as a real rate limit would."""
    vendor = make_vendor("paced", attempts=2, registry=metrics)

    @vendor.guard("op")
    def op() -> str:
        return "ok"

    started = time.monotonic()
    with testing.inject("paced", testing.status(429, retry_after=0.2)), \
            pytest.raises(testing.InjectedStatus):
        op()
    assert time.monotonic() - started >= 0.2
    assert sample(metrics, "vendorguard_retries_total", vendor="paced", operation="op",
                  reason="rate_limited") == 1
