#!/usr/bin/env python3
"""vendorguard per-call overhead against a bare call and against its peers, in one process.

What it measures
    A no-op target ``def f(x): return x`` (and ``async def af(x): return x``), called bare,
    through vendorguard guards, and through peer libraries (pybreaker, tenacity, stamina,
    circuitbreaker, pyresilience, a naive tenacity + pybreaker + Prometheus composition).
    Every case is a ``timeit`` statement (sync) or an equivalent generated ``async`` loop run
    inside one event loop (async). The cases are timed in *rounds*: each round times every
    case once for ~20 ms, in a freshly shuffled order, so drift on a noisy machine hits all
    cases alike. Each row reports the median time per call over the rounds, the added time
    over its reference measured in the same rounds, and the ratio to that reference:

    - sync rows against bare ``f(1)``;
    - async rows against bare ``await af(1)``;
    - "one retry" rows against the bare attempts: the flaky target (fails with
      ConnectionRefusedError on every other call) called twice unguarded, each call in a
      try/except.

    GC stays enabled while timing. Metrics go to a private ``CollectorRegistry`` per vendor;
    no observers and no tracing SDK are configured.

    Rows that hand the call to another thread (sync timeouts) are measured twice, with the
    threads placed explicitly (Linux ``sched_setaffinity``): all on one CPU, and the caller
    on one CPU with the workers on another. Waking a thread on another, idle CPU costs tens
    of µs on a VM, and the scheduler's own choice can change from run to run.

    A second section measures throughput of a call that sleeps 1 ms (I/O-like: releases the
    GIL) with 1 thread and with 8 threads through one guard (same total number of calls) and
    reports the scaling ratio, next to pybreaker (which holds its lock during the call).

    The DESIGN.md section 6 targets are printed next to the rows they apply to, with PASS or
    MISS, and summarised at the end.

Usage (from the repository root):
    .venv/bin/python benchmarks/overhead.py              # full run (about a minute on 2 cores)
    .venv/bin/python benchmarks/overhead.py --quick      # smoke run (a few seconds)
    .venv/bin/python benchmarks/overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata as md
import itertools
import json
import logging
import os
import platform
import queue
import random
import re
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import circuitbreaker
import prometheus_client as prom
import pybreaker
import tenacity
from prometheus_client import CollectorRegistry

import vendorguard as vg

try:
    import stamina
except ImportError:  # pragma: no cover - optional peer
    stamina = None
try:
    import pyresilience
except ImportError:  # pragma: no cover - optional peer
    pyresilience = None

PACKAGES = [
    "vendorguard", "pybreaker", "tenacity", "stamina", "circuitbreaker", "pyresilience",
    "prometheus-client", "opentelemetry-api", "opentelemetry-sdk", "launchdarkly-server-sdk",
]

# Loggers written to on some measured paths (force_open logs once at setup; stamina and
# pyresilience may log on retries). A NullHandler keeps stderr clean; records are still built.
for _name in ("vendorguard", "stamina", "pyresilience"):
    logging.getLogger(_name).addHandler(logging.NullHandler())

SKIPPED: list[str] = []  # notes about peers that are not installed


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def f(x):
    return x


async def af(x):
    return x


_FLAKY = [0]


def flaky(x):
    """Fails on every other call: a retrying wrapper sees one failure, then a success."""
    _FLAKY[0] ^= 1
    if _FLAKY[0]:
        raise ConnectionRefusedError(111, "Connection refused")
    return x


def _reset_flaky():
    _FLAKY[0] = 0  # the next call fails


def _io_target(x):
    time.sleep(0.001)
    return x


FALLBACK = object()  # the fallback value served by guards and by the naive composition


# --------------------------------------------------------------------------------------------
# case registry
# --------------------------------------------------------------------------------------------
class Case:
    __slots__ = ("after", "base", "before", "group", "kind", "name", "ns", "number",
                 "runner", "samples", "stmt", "target")

    def __init__(self, kind, group, name, stmt, ns, base, target, before, after):
        self.kind = kind          # "sync" | "async"
        self.group = group
        self.name = name
        self.stmt = stmt
        self.ns = ns
        self.base = base          # reference key: "sync" | "async" | "attempts"
        self.target = target      # (label, max added µs) or None
        self.before = before      # untimed hook before each timed batch
        self.after = after        # untimed hook after each timed batch
        self.runner = None
        self.number = 0
        self.samples: list[float] = []  # seconds per call, one per round


CASES: list[Case] = []
BASE_NAMES = {
    "sync": "bare call f(1)",
    "async": "bare await af(1)",
    "attempts": "bare attempts: flaky(1) twice, each in try/except",
    "span": "SDK span alone: start (2 attrs) + make current + 3 result attrs + end",
    "ld": "raw SDK: ldclient.LDClient(TestData).variation('f', ctx, False)",
}
BASE_LABELS = {"sync": "bare f(1)", "async": "bare await af(1)", "attempts": "bare attempts",
               "span": "SDK span alone", "ld": "raw LD variation"}


def case(group, name, stmt, *, kind="sync", base=None, target=None, before=None, after=None,
         **ns):
    CASES.append(Case(kind, group, name, stmt, ns, base or kind, target, before, after))


def _vendor(name, **kw):
    """A vendor with a private registry; ``retry`` defaults to 3 attempts, zero backoff."""
    kw.setdefault("retry", vg.Retry(attempts=3, backoff=vg.Backoff(initial=0.0, maximum=0.0)))
    kw.setdefault("breaker", vg.Breaker())
    return vg.Vendor(name, registry=CollectorRegistry(), **kw)


NO_BUDGET_RETRY = vg.Retry(attempts=3, backoff=vg.Backoff(initial=0.0, maximum=0.0),
                           budget=None)
TRY_CATCH = "try:\n    g(1)\nexcept E:\n    pass"

# --------------------------------------------------------------------------------------------
# 1. reference rows
# --------------------------------------------------------------------------------------------
case("reference", BASE_NAMES["sync"], "f(1)", f=f)
case("reference", BASE_NAMES["async"], "await af(1)", kind="async", af=af)
case("reference", BASE_NAMES["attempts"],
     "try:\n    g(1)\nexcept E:\n    pass\ntry:\n    g(1)\nexcept E:\n    pass",
     base="attempts", before=_reset_flaky, g=flaky, E=ConnectionRefusedError)

# --------------------------------------------------------------------------------------------
# 2. vendorguard sync success: breaker + retry (3 attempts) + fallback value, metrics on
# --------------------------------------------------------------------------------------------
V_OK = _vendor("bench-success")
vg_ok = V_OK.guard("op", fallback=FALLBACK)(f)
V_OK_NB = _vendor("bench-success-nobudget", retry=NO_BUDGET_RETRY)
vg_ok_nb = V_OK_NB.guard("op", fallback=FALLBACK)(f)
V_OK_BARE = _vendor("bench-success-nothing", retry=None, breaker=None)
vg_ok_bare = V_OK_BARE.guard("op")(f)

T_SUCCESS = ("sync success, breaker + retry + fallback, metrics", 2.5)
case("vendorguard", "sync success: breaker + Retry(attempts=3) + fallback value + metrics",
     "g(1)", target=T_SUCCESS, g=vg_ok)
case("vendorguard", "  variant: same, Retry(budget=None) (no retry budget)", "g(1)", g=vg_ok_nb)
case("vendorguard", "  variant: retry=None, breaker=None, no fallback (metrics only)", "g(1)",
     g=vg_ok_bare)

# --------------------------------------------------------------------------------------------
# 3. open breaker served by a fallback value
# --------------------------------------------------------------------------------------------
V_OPEN = _vendor("bench-open")
vg_open = V_OPEN.guard("op", fallback=FALLBACK)(f)
V_OPEN.force_open("benchmark")
assert vg_open(1) is FALLBACK

V_TRIP = _vendor("bench-tripped", breaker=vg.Breaker(failures=1, reset_after=3600))
vg_trip = V_TRIP.guard("op", fallback=FALLBACK)(f)
_vg_trip_fail = V_TRIP.guard("fail", retry=None)(flaky)
_reset_flaky()
with contextlib.suppress(ConnectionRefusedError):
    _vg_trip_fail(1)  # one failure trips the vendor's circuit for an hour
assert V_TRIP.circuits()["bench-tripped"].state == "open"
assert vg_trip(1) is FALLBACK

V_OPEN_RAISE = _vendor("bench-open-raise")
vg_open_raise = V_OPEN_RAISE.guard("op")(f)
V_OPEN_RAISE.force_open("benchmark")

T_OPEN = ("open breaker served by a fallback value", 1.0)
case("vendorguard", "open breaker (force_open) served by a fallback value", "g(1)",
     target=T_OPEN, g=vg_open)
case("vendorguard", "  variant: breaker tripped open by failures, fallback value", "g(1)",
     g=vg_trip)
case("vendorguard", "  variant: force_open, no fallback (catch CircuitOpenError)", TRY_CATCH,
     g=vg_open_raise, E=vg.CircuitOpenError)

# --------------------------------------------------------------------------------------------
# 4. one retry after a failure, zero backoff (against the bare attempts)
# --------------------------------------------------------------------------------------------
_NO_TRIP = vg.Breaker(failures=1_000_000)
V_RETRY = _vendor("bench-retry", retry=NO_BUDGET_RETRY, breaker=_NO_TRIP)
vg_retry = V_RETRY.guard("op", fallback=FALLBACK)(flaky)
V_RETRY_B = _vendor("bench-retry-budget", breaker=_NO_TRIP, retry=vg.Retry(
    attempts=3, backoff=vg.Backoff(initial=0.0, maximum=0.0),
    budget=vg.RetryBudget(ratio=1.0, floor=1e12)))
vg_retry_b = V_RETRY_B.guard("op", fallback=FALLBACK)(flaky)
V_RETRY_NB = _vendor("bench-retry-nobreaker", retry=NO_BUDGET_RETRY, breaker=None)
vg_retry_nb = V_RETRY_NB.guard("op", fallback=FALLBACK)(flaky)
for _g in (vg_retry, vg_retry_b, vg_retry_nb):
    _reset_flaky()
    assert _g(1) == 1  # fails once, succeeds on the retry (not the fallback)

T_RETRY = ("one retry after a failure, zero backoff", 10.0)
case("vendorguard", "one retry, zero backoff, Retry(budget=None), breaker armed", "g(1)",
     base="attempts", target=T_RETRY, before=_reset_flaky, g=vg_retry)
case("vendorguard", "  variant: same with a RetryBudget that never runs out", "g(1)",
     base="attempts", before=_reset_flaky, g=vg_retry_b)
case("vendorguard", "  variant: same, breaker=None (no pybreaker replays)",
     "g(1)", base="attempts", before=_reset_flaky, g=vg_retry_nb)

# --------------------------------------------------------------------------------------------
# 6. sync generic callable with a worker-pool timeout (+ references)
# --------------------------------------------------------------------------------------------
V_TPOOL = _vendor("bench-thread-timeout", timeout=vg.Timeout(attempt=1.0))
vg_tpool = V_TPOOL.guard("op", fallback=FALLBACK)(f)
assert vg_tpool(1) == 1
V_TCALLER = _vendor("bench-caller-timeout", timeout=vg.Timeout(attempt=1.0))
vg_tcaller = V_TCALLER.guard("op", fallback=FALLBACK, timeout_mode="caller")(f)
assert vg_tcaller(1) == 1


class _Handoff:
    """The floor for any run-on-another-thread timeout: one idle worker, a queue, a lock."""

    def __init__(self):
        self.q = queue.SimpleQueue()
        threading.Thread(target=self._work, name="bench-handoff", daemon=True).start()

    def _work(self):
        get = self.q.get
        while True:
            fn, x, box, done = get()
            box.append(fn(x))
            done.release()

    def call(self, fn, x):
        done = threading.Lock()
        done.acquire()
        box = []
        self.q.put((fn, x, box, done))
        if not done.acquire(timeout=1.0):
            raise TimeoutError
        return box[0]


HANDOFF = _Handoff()
POOL1 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-tpe")

# A handoff to another thread costs what waking that thread costs, and that depends on where
# the scheduler put the two threads: on one CPU a wake-up is a context switch; across CPUs the
# idle CPU must be woken first (tens of µs on a VM). The scheduler's choice can differ from run
# to run, so the threaded rows are measured with explicit placements: every thread on one CPU,
# and the calling thread on one CPU with all other threads on another.
_ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
CAN_PIN = len(_ALL_CPUS) >= 2


def _pin(main_cpu, other_cpu):
    me = threading.get_native_id()
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        with contextlib.suppress(OSError):
            os.sched_setaffinity(t.native_id, {main_cpu if t.native_id == me else other_cpu})


def _unpin():
    for t in threading.enumerate():
        if t.native_id is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(t.native_id, _ALL_CPUS)


if CAN_PIN:
    PLACEMENTS = [
        ("[threads on 1 CPU]", "1 CPU", lambda: _pin(_ALL_CPUS[0], _ALL_CPUS[0])),
        ("[caller, worker on 2 CPUs]", "2 CPUs", lambda: _pin(_ALL_CPUS[0], _ALL_CPUS[1])),
    ]
else:  # pragma: no cover - one CPU, or no sched_setaffinity (not Linux)
    PLACEMENTS = [("", "", None)]
    SKIPPED.append("thread placement not controllable here: threaded rows are unpinned")


def threaded_case(group, name, stmt, target=None, **ns):
    for suffix, short, pin in PLACEMENTS:
        tgt = None
        if target is not None:
            tgt = (f"{target[0]}, {short}" if short else target[0], target[1])
        case(group, f"{name} {suffix}".rstrip(), stmt, target=tgt, before=pin,
             after=_unpin if pin else None, **ns)


T_TPOOL = ("sync callable, worker-pool timeout", 40.0)
threaded_case("vendorguard (sync timeout)", "vendorguard Timeout(attempt=1.0), worker pool", "g(1)",
              target=T_TPOOL, g=vg_tpool)
case("vendorguard (sync timeout)", "  variant: timeout_mode='caller' (no thread)", "g(1)",
     g=vg_tcaller)
threaded_case("vendorguard (sync timeout)", "reference: bare thread handoff (queue + lock)",
              "h(f, 1)", h=HANDOFF.call, f=f)
threaded_case("vendorguard (sync timeout)", "reference: ThreadPoolExecutor(1) submit+result",
              "p.submit(f, 1).result(timeout=1.0)", p=POOL1, f=f)

# --------------------------------------------------------------------------------------------
# 8. peers on the same no-op function (sync)
# --------------------------------------------------------------------------------------------
PB = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, name="bench-pb")
pb_f = PB(f)
PB_OPEN = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600, name="bench-pb-open")
pb_open_f = PB_OPEN(f)
PB_OPEN.open()


def _pb_keep_open():
    if PB_OPEN.current_state != pybreaker.STATE_OPEN:
        PB_OPEN.open()


case("peers", "pybreaker decorator, closed", "g(1)", g=pb_f)
case("peers", "pybreaker OPEN fail-fast (catch CircuitBreakerError)", TRY_CATCH,
     before=_pb_keep_open, g=pb_open_f, E=pybreaker.CircuitBreakerError)

cb_f = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60,
                                     name="bench-cb")(f)
case("peers", "circuitbreaker decorator, closed", "g(1)", g=cb_f)

ten_f = tenacity.retry(stop=tenacity.stop_after_attempt(3))(f)
case("peers", "tenacity @retry(stop=stop_after_attempt(3))", "g(1)", g=ten_f)

if stamina is not None:
    sta_f = stamina.retry(on=Exception, attempts=3)(f)
    case("peers", "stamina @retry(on=Exception, attempts=3)", "g(1)", g=sta_f)
else:
    SKIPPED.append("stamina not installed: its row is skipped")

if pyresilience is not None:
    from pyresilience import CircuitBreakerConfig, RetryConfig, TimeoutConfig

    _pr_retry = RetryConfig(max_attempts=3, delay=0.0, jitter=False)
    pr_f = pyresilience.resilient(retry=_pr_retry, circuit_breaker=CircuitBreakerConfig())(f)
    pr_to_f = pyresilience.resilient(retry=_pr_retry, circuit_breaker=CircuitBreakerConfig(),
                                     timeout=TimeoutConfig(seconds=1.0))(f)
    case("peers", "pyresilience @resilient(retry, circuit_breaker)", "g(1)", g=pr_f)
    threaded_case("peers", "pyresilience @resilient(retry, breaker, timeout=1.0)", "g(1)",
                  g=pr_to_f)
else:
    SKIPPED.append("pyresilience not installed: its rows are skipped")

NAIVE_REG = CollectorRegistry()
NAIVE_CALLS = prom.Counter("naive_calls", "calls", ["vendor", "outcome"], registry=NAIVE_REG)
NAIVE_LAT = prom.Histogram("naive_call_seconds", "latency", ["vendor"], registry=NAIVE_REG)
NAIVE_BREAKER = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, name="bench-naive")


@tenacity.retry(stop=tenacity.stop_after_attempt(3),
                wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=2),
                retry=tenacity.retry_if_exception_type(OSError), reraise=True)
def _naive_attempt(x):
    t0 = time.perf_counter()
    try:
        r = NAIVE_BREAKER.call(f, x)
    except Exception:
        NAIVE_CALLS.labels(vendor="acme", outcome="error").inc()
        raise
    NAIVE_LAT.labels(vendor="acme").observe(time.perf_counter() - t0)
    NAIVE_CALLS.labels(vendor="acme", outcome="ok").inc()
    return r


def naive(x):
    try:
        return _naive_attempt(x)
    except Exception:
        return FALLBACK


case("peers", "NAIVE: tenacity + pybreaker + prometheus labels() + try/except fallback",
     "g(1)", g=naive)

ten_fl = tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(),
                        retry=tenacity.retry_if_exception_type(OSError), reraise=True)(flaky)
_reset_flaky()
assert ten_fl(1) == 1
case("peers", "tenacity one retry, wait_none() (flaky target)", "g(1)", base="attempts",
     before=_reset_flaky, g=ten_fl)


# --------------------------------------------------------------------------------------------
# 9. LaunchDarkly: the drop-in's variation against the raw SDK call (flags in memory, TestData)
# --------------------------------------------------------------------------------------------
T_LD = ("LaunchDarkly variation through the drop-in, over raw SDK", 2.0)
LD_CLIENTS: list[Any] = []
try:
    import ldclient
    from ldclient.integrations.test_data import TestData
    from vendorguard.integrations import launchdarkly as vg_ld
except ImportError:  # pragma: no cover - optional vendor SDK
    ldclient = None
    SKIPPED.append("launchdarkly-server-sdk not installed: its rows are skipped")
    del BASE_NAMES["ld"]

if ldclient is not None:
    _LD_DATA = TestData.data_source()
    _LD_DATA.update(_LD_DATA.flag("f").variation_for_all(True))
    _LD_CTX = ldclient.Context.create("bench-user")

    def _ld_config():
        return ldclient.Config("sdk-bench", update_processor_class=_LD_DATA, send_events=False,
                               diagnostic_opt_out=True)

    LD_RAW = ldclient.LDClient(_ld_config(), start_wait=1)
    LD_DROP = vg_ld.LDClient(_ld_config(), vendor="bench-launchdarkly",
                             registry=CollectorRegistry())
    LD_LAST = vg_ld.LDClient(_ld_config(), vendor="bench-launchdarkly-last-good",
                             last_good=True, registry=CollectorRegistry())
    LD_CLIENTS += [LD_RAW, LD_DROP, LD_LAST]
    for _c in LD_CLIENTS:
        assert _c.variation("f", _LD_CTX, False) is True

    case("launchdarkly", BASE_NAMES["ld"], "c.variation('f', ctx, False)", base="ld",
         c=LD_RAW, ctx=_LD_CTX)
    case("launchdarkly", "LaunchDarkly drop-in variation('f', ctx, False), metrics",
         "c.variation('f', ctx, False)", base="ld", target=T_LD, c=LD_DROP, ctx=_LD_CTX)
    case("launchdarkly", "  variant: LaunchDarkly drop-in, last_good=True",
         "c.variation('f', ctx, False)", base="ld", c=LD_LAST, ctx=_LD_CTX)


# --------------------------------------------------------------------------------------------
# 5. async success with a timeout and metrics (built inside the event loop)
# --------------------------------------------------------------------------------------------
T_ASYNC = ("async success, Timeout(attempt) + metrics", 10.0)


async def _build_async_cases():
    v = _vendor("bench-async-timeout", timeout=vg.Timeout(attempt=1.0))
    g = v.guard("op", fallback=FALLBACK)(af)
    v2 = _vendor("bench-async-notimeout")
    g2 = v2.guard("op", fallback=FALLBACK)(af)
    assert await g(1) == 1
    assert await g2(1) == 1
    case("vendorguard (async)", "async success: Timeout(attempt=1.0) + breaker + retry + "
         "fallback + metrics", "await g(1)", kind="async", target=T_ASYNC, g=g)
    case("vendorguard (async)", "  variant: same without a timeout", "await g(1)",
         kind="async", g=g2)
    case("vendorguard (async)", "  reference: async with asyncio.timeout(1.0): await af(1)",
         "async with timeout(1.0):\n    await af(1)", kind="async", timeout=asyncio.timeout,
         af=af)


# --------------------------------------------------------------------------------------------
# timing engine (the approach of research/peers-bench/peers.py)
# --------------------------------------------------------------------------------------------
_ASYNC_TEMPLATE = """
async def _bench(_it, _timer):
    _t0 = _timer()
    for _i in _it:
{body}
    _t1 = _timer()
    return _t1 - _t0
"""


def _prepare(c: Case, loop):
    if c.kind == "sync":
        timer = timeit.Timer(c.stmt, setup="import gc as _gc; _gc.enable()", globals=dict(c.ns))
        c.runner = timer.timeit
    else:
        src = _ASYNC_TEMPLATE.format(body=textwrap.indent(c.stmt, " " * 8))
        g = dict(c.ns)
        exec(compile(src, f"<async case {c.name}>", "exec"), g)
        bench = g["_bench"]

        def run(number, _bench=bench):
            return loop.run_until_complete(
                _bench(itertools.repeat(None, number), time.perf_counter))

        c.runner = run


def _timed(c: Case, number: int) -> float:
    if c.before:
        c.before()
    try:
        return c.runner(number)
    finally:
        if c.after:
            c.after()


def _calibrate(c: Case, target_s: float):
    number = 1
    while True:
        t = _timed(c, number)
        if t >= target_s / 5 or number >= 10_000_000:
            break
        number *= 10 if t < target_s / 50 else 2
    c.number = max(1, int(number * target_s / max(t, 1e-9)))


def run_cases(cases, loop, rounds, target_s, seed):
    rng = random.Random(seed)
    for c in cases:
        _prepare(c, loop)
        _timed(c, 10)  # warm-up: lazy imports, worker threads started
    for c in cases:
        _calibrate(c, target_s)
    order = list(cases)
    for r in range(rounds):
        rng.shuffle(order)
        for c in order:
            c.samples.append(_timed(c, c.number) / c.number)
        if r % 10 == 9:
            print(f"  ... round {r + 1}/{rounds}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# 8. tracing: no SDK configured (the fast path), and an SDK span per call
# --------------------------------------------------------------------------------------------
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace as otel_trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from vendorguard.telemetry import tracing as vg_tracing  # noqa: E402

SPAN_EXPORTER = InMemorySpanExporter()
SPAN_PROVIDER = TracerProvider()
SPAN_PROVIDER.add_span_processor(BatchSpanProcessor(SPAN_EXPORTER))
_ref_tracer = SPAN_PROVIDER.get_tracer("bench")
_SPAN_ATTRS = {"vendorguard.vendor": "bench-traced", "vendorguard.operation": "op"}
_RESULT_ATTRS = {"vendorguard.outcome": "success", "vendorguard.attempts": 1,
                 "vendorguard.fallback": False}


def span_ref(x):
    """What an instrumentation pays, with the SDK, for one current span per call recording
    what vendorguard records: two attributes known at the start, three results at the end."""
    span = _ref_tracer.start_span("bench-traced op", kind=otel_trace.SpanKind.CLIENT,
                                  attributes=_SPAN_ATTRS)
    token = otel_context.attach(otel_trace.set_span_in_context(span))
    try:
        return f(x)
    finally:
        otel_context.detach(token)
        span.set_attributes(_RESULT_ATTRS)
        span.end()


def _tracing_on():
    vg_tracing.enable(SPAN_PROVIDER)


def _tracing_off():
    vg_tracing.disable()
    SPAN_PROVIDER.force_flush()
    SPAN_EXPORTER.clear()


def _tracing_follow():
    vg_tracing.follow()  # opentelemetry-api is imported, no global SDK provider is set
    assert vg.events.tracer is None


V_TRACED = _vendor("bench-traced")
vg_traced = V_TRACED.guard("op", fallback=FALLBACK)(f)
T_SPAN = ("sync success with an SDK span, over the SDK span alone", 3.5)
case("tracing", BASE_NAMES["span"], "g(1)", base="span", before=_tracing_off, g=span_ref)
case("tracing", "sync success, opentelemetry-api imported, no SDK configured", "g(1)",
     before=_tracing_follow, after=_tracing_off, g=vg_traced)
case("tracing", "sync success with an SDK span (BatchSpanProcessor)",
     "g(1)", base="span", target=T_SPAN, before=_tracing_on, after=_tracing_off, g=vg_traced)
_tracing_off()

# --------------------------------------------------------------------------------------------
# 7. threads: 1 vs 8 threads on a 1 ms sleeping call through one guard
# --------------------------------------------------------------------------------------------
T_THREADS = ("8 threads on a 1 ms call through one guard (scaling)", 7.5)


def _thread_run(fn, nthreads, total):
    per = total // nthreads
    barrier = threading.Barrier(nthreads + 1)

    def worker():
        barrier.wait()
        for _ in range(per):
            fn(1)

    ts = [threading.Thread(target=worker) for _ in range(nthreads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return per * nthreads / (time.perf_counter() - t0)  # calls per second


def run_threads(reps, total):
    v = _vendor("bench-threads")
    vt = _vendor("bench-threads-timeout", timeout=vg.Timeout(attempt=1.0))
    rows = [
        ("bare", _io_target),
        ("vendorguard: breaker + retry + fallback + metrics",
         v.guard("op", fallback=FALLBACK)(_io_target)),
        ("vendorguard: same + Timeout(attempt=1.0) (worker pool)",
         vt.guard("op", fallback=FALLBACK)(_io_target)),
        ("pybreaker decorator", pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(_io_target)),
        ("circuitbreaker decorator", circuitbreaker.CircuitBreaker(
            failure_threshold=5, recovery_timeout=60, name="bench-thr")(_io_target)),
    ]
    results: dict[str, dict[int, list[float]]] = {n: {1: [], 8: []} for n, _ in rows}
    for _name, fn in rows:  # warm-up (worker threads, lazy state)
        _thread_run(fn, 8, 16)
    for _ in range(reps):
        for name, fn in rows:
            for n in (1, 8):
                results[name][n].append(_thread_run(fn, n, total))
    return [(name, statistics.median(results[name][1]), statistics.median(results[name][8]))
            for name, _ in rows]


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def _versions():
    out = []
    for p in PACKAGES:
        try:
            out.append(f"{p}=={md.version(p)}")
        except md.PackageNotFoundError:
            out.append(f"{p}: not installed")
    return out


def _revision():
    """The vendorguard git revision benchmarked (with '+dirty' when the tree has changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "vendorguard"],
                               cwd=here, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev + ("+dirty" if dirty.strip() else "")


def _fmt_ns(ns):
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def summarise(cases, thread_rows):
    base = {}
    for key, name in BASE_NAMES.items():
        for c in cases:
            if c.name == name:
                base[key] = statistics.median(c.samples)
    rows = []
    for c in cases:
        med = statistics.median(c.samples)
        q = statistics.quantiles(c.samples, n=4) if len(c.samples) >= 4 else [med, med, med]
        b = base.get(c.base)
        added_us = (med - b) * 1e6 if b else None
        row: dict[str, Any] = {
            "group": c.group, "case": c.name.strip(), "kind": c.kind, "reference": c.base,
            "median_ns": med * 1e9, "iqr_ns": (q[2] - q[0]) * 1e9,
            "added_us": added_us, "ratio": med / b if b else None,
            "rounds": len(c.samples), "calls_per_round": c.number,
        }
        if c.target is not None:
            label, limit = c.target
            row["target"] = {"label": label, "max_added_us": limit,
                             "pass": added_us is not None and added_us <= limit}
        rows.append(row)
    threads = []
    for name, one, eight in thread_rows or ():
        entry: dict[str, Any] = {"wrapper": name, "one_thread_per_s": one,
                                 "eight_threads_per_s": eight, "scaling": eight / one}
        if name.startswith("vendorguard: breaker"):
            entry["target"] = {"label": T_THREADS[0], "min_scaling": T_THREADS[1],
                               "pass": eight / one >= T_THREADS[1]}
        threads.append(entry)
    return rows, threads


def report(rows, threads, meta):
    w = sys.stdout.write
    w("vendorguard overhead: per-call cost over a bare call, side by side with peers\n")
    w(f"date (UTC)  : {meta['date']}\n")
    w(f"python      : {meta['python']}\n")
    w(f"platform    : {meta['platform']}\n")
    w(f"packages    : {', '.join(meta['packages'])}\n")
    w(f"revision    : vendorguard {meta['revision']}\n")
    w(f"method      : {meta['method']}\n")
    w(f"wall time   : {meta['wall_s']:.0f} s\n")
    for note in meta["skipped"]:
        w(f"skipped     : {note}\n")

    hdr = (f"{'case':<86} {'median ns':>10} {'IQR ns':>8} {'added µs':>9} {'x ref':>8}"
           f"  target\n")
    group = None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            w(f"\n[{group}]\n{hdr}")
        name = r["case"]
        indent = "  " if name.startswith("variant") or name.startswith("reference:") else ""
        label = f"{indent}{name}"
        if r["reference"] != ("async" if r["kind"] == "async" else "sync"):
            label += f"  [vs {BASE_LABELS[r['reference']]}]"
        added = f"{r['added_us']:.2f}" if r["added_us"] is not None else "-"
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else "-"
        tgt = ""
        if "target" in r:
            t = r["target"]
            tgt = f"<= {t['max_added_us']:g} µs added: {'PASS' if t['pass'] else 'MISS'}"
        w(f"{label[:86]:<86} {_fmt_ns(r['median_ns']):>10} {_fmt_ns(r['iqr_ns']):>8} "
          f"{added:>9} {ratio:>8}  {tgt}\n")

    if threads:
        w("\n[threads] 1 ms sleeping call, calls/s (median of reps); "
          "scaling = 8 threads / 1 thread\n")
        w(f"{'wrapper':<58} {'1 thread':>10} {'8 threads':>10} {'scaling':>8}  target\n")
        for t in threads:
            tgt = ""
            if "target" in t:
                tgt = (f">= {t['target']['min_scaling']:g}x: "
                       f"{'PASS' if t['target']['pass'] else 'MISS'}")
            w(f"{t['wrapper']:<58} {t['one_thread_per_s']:>10,.0f} "
              f"{t['eight_threads_per_s']:>10,.0f} {t['scaling']:>7.2f}x  {tgt}\n")

    w("\n[DESIGN §6 targets]\n")
    w(f"{'target':<56} {'limit':>12} {'measured':>12} {'x ref':>8}  result\n")
    for r in rows:
        if "target" in r:
            t = r["target"]
            w(f"{t['label']:<56} {'<= ' + format(t['max_added_us'], 'g') + ' µs':>12} "
              f"{r['added_us']:>9.2f} µs {r['ratio']:>7.1f}x  "
              f"{'PASS' if t['pass'] else 'MISS'}\n")
    for t in threads:
        if "target" in t:
            g = t["target"]
            w(f"{g['label']:<56} {'>= ' + format(g['min_scaling'], 'g') + 'x':>12} "
              f"{t['scaling']:>11.2f}x {'':>8}  {'PASS' if g['pass'] else 'MISS'}\n")
    w("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 7 rounds of 4 ms, 2 thread reps of 96 calls")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--target-ms", type=float, default=20.0, help="time per case per round")
    ap.add_argument("--thread-reps", type=int, default=7)
    ap.add_argument("--thread-calls", type=int, default=400,
                    help="calls per thread measurement (split over the threads)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--only", default=None, help="regex on case names (bare rows always kept)")
    ap.add_argument("--no-threads", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.target_ms, args.thread_reps, args.thread_calls = 7, 4.0, 2, 96

    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.perf_counter()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_build_async_cases())

    cases = CASES
    if args.only:
        rx = re.compile(args.only, re.I)
        cases = [c for c in cases if rx.search(c.name) or c.name in BASE_NAMES.values()]

    print(f"timing {len(cases)} cases x {args.rounds} rounds ...", file=sys.stderr, flush=True)
    run_cases(cases, loop, args.rounds, args.target_ms / 1000, args.seed)
    thread_rows = None
    if not args.no_threads:
        print("threads ...", file=sys.stderr, flush=True)
        thread_rows = run_threads(args.thread_reps, args.thread_calls)
    rows, threads = summarise(cases, thread_rows)
    meta = {
        "date": f"{started:%Y-%m-%d %H:%M:%S}",
        "python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({platform.python_compiler()})",
        "platform": f"{platform.platform()}; cpus={os.cpu_count()}",
        "packages": _versions(),
        "revision": _revision(),
        "method": (f"{args.rounds} interleaved rounds (shuffled, seed {args.seed}), "
                   f"~{args.target_ms:g} ms per case per round, gc on, median of rounds; "
                   f"threads: median of {args.thread_reps} reps of {args.thread_calls} calls"),
        "wall_s": time.perf_counter() - t_start,
        "skipped": SKIPPED,
        "quick": args.quick,
    }
    report(rows, threads, meta)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "cases": rows, "threads": threads}, fh, indent=2)
            fh.write("\n")
    POOL1.shutdown()
    for client in LD_CLIENTS:
        client.close()
    loop.close()


if __name__ == "__main__":
    main()
