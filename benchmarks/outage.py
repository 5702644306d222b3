"""What a vendor outage does to your app: raw SDK, tenacity + pybreaker, vendorguard side by side.

For each setup, a real gunicorn (``gthread`` worker) serves ``outage_app.py``, whose signup
handler evaluates a flag and sends a welcome email through the real SendGrid SDK to a local fake
SendGrid. A load generator (``--clients`` threads, each with a keep-alive ``http.client``
connection, no think time) posts signups while the fake goes through four phases: healthy,
hanging (accepts and never answers), refusing connections, and back. Then the setup's outbox (if
any) is drained, and every email the fake never received is counted as lost.

Printed per setup and phase (a request belongs to the phase in which it was sent):
throughput, p50/p99 latency as the client saw it, the handler's own p99, errors returned to
users (non-2xx or no answer) and emails lost; then vendorguard's targets with the peers' values
next to them, and vendorguard's handler time as its outbox fills. ``benchmarks/outage.png``
plots the p99 latency and the 2xx answers over time. Everything runs on 127.0.0.1, and the
gunicorn and fake processes are stopped on the way out. A benchmark, not a test: nothing here
is asserted.

    .venv/bin/python benchmarks/outage.py            # ~3.5 min: 4 phases of 15 s, 3 setups
    .venv/bin/python benchmarks/outage.py --quick    # ~45 s smoke run: phases of 3 s
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
PHASES = ("healthy", "hang", "refuse", "back")
FAKE_MODE = {"warm-up": "healthy", "healthy": "healthy", "hang": "hang", "refuse": "refuse",
             "back": "healthy"}
SETUPS = ("raw", "naive", "vendorguard")
LABEL = {"raw": "raw SDK, 10 s timeout", "naive": "tenacity + pybreaker",
         "vendorguard": "vendorguard + outbox"}
COLOR = {"raw": "tab:red", "naive": "tab:orange", "vendorguard": "tab:blue"}
SHADE = {"healthy": "#e8f5e9", "hang": "#ffebee", "refuse": "#fff3e0", "back": "#e3f2fd"}
WARM_UP = 1.0  # seconds of load before the healthy phase, not reported
ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL to the process group it leads (it was started in a new session)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


class Fake:
    """The fake SendGrid (``outage_app.py fake``) in a process of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "outage_app.py"), "fake"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.port = int(self._line().split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the fake SendGrid exited")
        return line

    def command(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._line()

    def mode(self, mode: str) -> None:
        self.command(f"mode {mode}")

    def received(self) -> list[str | None]:
        received: list[str | None] = json.loads(self.command("stats"))["received"]
        return received

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            _stop(self.process, 2)


class App:
    """One setup of ``outage_app.py`` under gunicorn."""

    def __init__(self, setup: str, args: argparse.Namespace, fake: Fake, folder: str) -> None:
        self.port = _free_port()
        env = {**os.environ, **ENV, "OUTAGE_SETUP": setup, "OUTAGE_SENDGRID_URL": fake.url,
               "OUTAGE_OUTBOX": folder, "OUTAGE_ATTEMPT": str(args.attempt_timeout),
               "OUTAGE_RESET_AFTER": str(args.reset_after),
               "OUTAGE_AT_LEAST_ONCE": "0" if args.once else "1"}
        self.log_path = os.path.join(folder, "gunicorn.log")
        self.log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
             "--workers", str(args.workers), "--threads", str(args.threads),
             "--bind", f"127.0.0.1:{self.port}", "--chdir", str(HERE),
             "--keep-alive", "75", "--timeout", "120", "--graceful-timeout", "3",
             "--log-level", "warning", "outage_app:create_app()"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers, self.folder = args.workers, folder
        deadline = time.monotonic() + 30
        while True:
            try:
                self.state()
                return
            except (OSError, http.client.HTTPException, ValueError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def state(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/_state")
            response = conn.getresponse()
            report: dict[str, Any] = json.loads(response.read())
            return report
        finally:
            conn.close()

    def transitions(self) -> list[tuple[float, str, int]]:
        """Every worker's breaker transitions: (wall-clock time, state, worker pid)."""
        try:
            with open(os.path.join(self.folder, "transitions.log")) as f:
                lines = [line.split() for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return sorted((float(t), state, int(pid)) for t, state, pid in lines)

    def log_tail(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def close(self) -> None:
        try:
            _stop(self.process, 8)
        finally:
            self.log.close()


@dataclass
class Run:
    """The raw results of one setup."""

    setup: str
    starts: list[float]  # wall-clock start of each phase, then the end of the last one
    records: list[tuple[float, float, int, str, float]]  # start, latency s, status, id, handler ms
    received: list[str | None]
    transitions: list[tuple[float, str, int]]  # wall-clock time, state, worker pid
    workers: int = 1
    drained_in: float | None = None
    pending_left: int = 0
    dead: int = 0
    notes: list[str] = field(default_factory=list)


def drive(app: App, fake: Fake, args: argparse.Namespace) -> tuple[list[float], list[Any]]:
    """Run the phases under load; returns the phase starts and every request's record."""
    stop = threading.Event()
    counter = itertools.count()
    results: list[list[tuple[float, float, int, str, float]]] = [[] for _ in range(args.clients)]

    def client(out: list[tuple[float, float, int, str, float]]) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        while not stop.is_set():
            n = next(counter)
            if n >= args.max_requests:
                break
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", app.port,
                                                  timeout=args.client_timeout)
            status, handler_ms = 0, math.nan
            started, t0 = time.time(), time.perf_counter()
            try:
                conn.request("POST", "/signup", f"id={n}".encode(), headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                handler_ms = float(response.getheader("X-Handler-Ms") or "nan")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
            out.append((started, time.perf_counter() - t0, status, str(n), handler_ms))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(out,), daemon=True) for out in results]
    starts: list[float] = []
    fake.mode("healthy")
    for thread in threads:
        thread.start()
    try:
        for phase, seconds in (("warm-up", WARM_UP), *((p, args.phase_seconds) for p in PHASES)):
            if phase != "warm-up":
                starts.append(time.time())  # a request sent before the switch is the old phase's
            fake.mode(FAKE_MODE[phase])
            time.sleep(max(0.0, starts[-1] + seconds - time.time()) if starts else seconds)
        starts.append(time.time())
    finally:
        stop.set()
        fake.mode("healthy")
        deadline = time.monotonic() + args.client_timeout + 5
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    return starts, [r for out in results for r in out]


def run_setup(setup: str, args: argparse.Namespace) -> Run:
    """One setup with a fake SendGrid of its own (a fresh process on a fresh port)."""
    folder = tempfile.mkdtemp(prefix=f"outage-{setup}-")
    fake = app = None
    try:
        fake = Fake({**os.environ, **ENV})
        app = App(setup, args, fake, folder)
        starts, records = drive(app, fake, args)
        run = Run(setup, starts, records, [], [], workers=args.workers)
        if len(records) >= args.max_requests:
            run.notes.append(f"the load stopped at --max-requests {args.max_requests}")
        if setup == "vendorguard":
            began = time.monotonic()
            deadline = began + args.drain_timeout
            while True:
                state = app.state()
                run.pending_left, run.dead = state["pending"], state["dead"]
                if run.pending_left == 0:
                    run.drained_in = time.monotonic() - began
                    break
                if time.monotonic() > deadline:
                    run.notes.append(f"outbox not drained after {args.drain_timeout:.0f} s: "
                                     f"{run.pending_left} pending")
                    break
                time.sleep(0.25)
        run.transitions = app.transitions()
        run.received = fake.received()
        return run
    finally:
        try:
            if app is not None:
                app.close()
        finally:
            if fake is not None:
                fake.close()
            shutil.rmtree(folder, ignore_errors=True)


# -- summaries -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class PhaseStats:
    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    handler_p99_ms: float
    errors: int
    lost: int


def phase_of(run: Run, started: float) -> int:
    """Index in PHASES of the phase a request was sent in (-1: warm-up, len: after the end)."""
    return bisect.bisect_right(run.starts, started) - 1


def summarise(run: Run) -> list[PhaseStats]:
    received = set(run.received)
    rows = []
    for i in range(len(PHASES)):
        mine = [r for r in run.records if phase_of(run, r[0]) == i]
        latencies = [r[1] * 1000 for r in mine]
        rows.append(PhaseStats(
            requests=len(mine), rate=len(mine) / (run.starts[i + 1] - run.starts[i]),
            p50_ms=pct(latencies, 50), p99_ms=pct(latencies, 99),
            handler_p99_ms=pct([r[4] for r in mine if not math.isnan(r[4])], 99),
            errors=sum(1 for r in mine if not 200 <= r[2] < 300),
            lost=sum(1 for r in mine if r[3] not in received)))
    return rows


def opened_in(run: Run, after: float, before: float) -> float | None:
    """When the breakers of all workers had opened in [after, before), or None."""
    first: dict[int, float] = {}
    for when, state, pid in run.transitions:
        if state == "open" and after <= when < before:
            first.setdefault(pid, when)
    return max(first.values()) if len(first) == run.workers else None


def hang_split(run: Run) -> tuple[float | None, list[Any], list[Any]]:
    """Requests exposed to the hang while the breaker was closed (in flight at any moment
    between the start of the hang and the breaker opening, or the end of the hang if it never
    opened), and requests sent during the hang after it opened."""
    start, end = run.starts[1], run.starts[2]
    opened = opened_in(run, start, end)
    cut = end if opened is None else opened
    exposed = [r for r in run.records if r[0] < cut and r[0] + r[1] > start]
    after = [] if opened is None else [r for r in run.records if opened <= r[0] < end]
    return opened, exposed, after


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def print_table(runs: list[Run], stats: dict[str, list[PhaseStats]]) -> None:
    print(f"{'setup':24} {'phase':8} {'req/s':>7} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'handler p99':>11} {'errors':>7} {'lost':>6}")
    for run in runs:
        for phase, s in zip(PHASES, stats[run.setup], strict=True):
            print(f"{LABEL[run.setup]:24} {phase:8} {s.rate:7.1f} {fmt(s.p50_ms):>9} "
                  f"{fmt(s.p99_ms):>9} {fmt(s.handler_p99_ms):>11} {s.errors:7d} "
                  f"{s.lost:6d}")
        total = sum(s.requests for s in stats[run.setup])
        lost = sum(s.lost for s in stats[run.setup])
        dupes = len(run.received) - len(set(run.received))
        extra = ""
        if run.setup == "vendorguard":
            extra = (f", outbox drained {fmt(run.drained_in)} s after the load"
                     if run.drained_in is not None else f", outbox {run.pending_left} left")
            extra += f", {run.dead} dead letters"
        opens = [t - run.starts[0] for t, s, _ in run.transitions if s == "open"]
        print(f"{'':24} total: {total} requests, {lost} emails lost, {dupes} duplicates at "
              f"the fake{extra}; breaker opened at "
              f"{', '.join(f'{t:.1f} s' for t in opens) or 'never'}")
        for note in run.notes:
            print(f"{'':24} note: {note}")


def targets(runs: list[Run], stats: dict[str, list[PhaseStats]],
            args: argparse.Namespace) -> list[tuple[str, str, dict[str, str], str]]:
    """(target, limit, measured per setup, result for vendorguard) rows."""
    limit_before = args.attempt_timeout * 1000 + 50
    names = ("before", "after", "after_handler", "ratio", "lost")
    cells: dict[str, dict[str, str]] = {name: {} for name in names}
    verdict = dict.fromkeys(names, "")
    for run in runs:
        opened, exposed, after = hang_split(run)
        p_exposed = pct([r[1] * 1000 for r in exposed], 99)
        p_after = pct([r[1] * 1000 for r in after], 99)
        h_after = pct([r[4] for r in after if not math.isnan(r[4])], 99)
        cells["before"][run.setup] = f"{fmt(p_exposed)} ms ({len(exposed)})"
        cells["after"][run.setup] = (f"{fmt(p_after)} ms ({len(after)})" if opened is not None
                                     else "never opened")
        cells["after_handler"][run.setup] = (f"{fmt(h_after, 2)} ms" if opened is not None
                                             else "never opened")
        s = stats[run.setup]
        outage_rate = (s[1].requests + s[2].requests) / (run.starts[3] - run.starts[1])
        ratio = outage_rate / s[0].rate if s[0].rate else math.nan
        cells["ratio"][run.setup] = f"{fmt(100 * ratio, 0)}%"
        lost = sum(p.lost for p in s)
        cells["lost"][run.setup] = str(lost)
        if run.setup == "vendorguard":
            verdict = {
                "before": "PASS" if p_exposed <= limit_before else "MISS",
                "after": "PASS" if opened is not None and p_after <= 5 else "MISS",
                "after_handler": "PASS" if opened is not None and h_after <= 5 else "MISS",
                "ratio": "PASS" if ratio >= 0.9 else "MISS",
                "lost": "PASS" if lost == 0 else "MISS"}
    return [
        ("hang: p99 until the breaker opens", f"<= {limit_before:.0f} ms", cells["before"],
         verdict["before"]),
        ("hang: p99 after it opens, client", "<= 5 ms", cells["after"], verdict["after"]),
        ("  same, handler time only", "<= 5 ms", cells["after_handler"],
         verdict["after_handler"]),
        ("outage throughput / healthy", ">= 90%", cells["ratio"], verdict["ratio"]),
        ("emails lost", "0", cells["lost"], verdict["lost"]),
    ]


def print_targets(rows: list[tuple[str, str, dict[str, str], str]], runs: list[Run]) -> None:
    setups = [run.setup for run in runs]
    head = "".join(f" {LABEL[s]:>22}" for s in setups)
    print(f"{'target (vendorguard)':36} {'limit':>11}{head}  result")
    for name, limit, values, result in rows:
        cells = "".join(f" {values.get(s, ''):>22}" for s in setups)
        print(f"{name:36} {limit:>11}{cells}  {result}")


def print_outbox_growth(run: Run, windows_per_phase: int = 3) -> None:
    """vendorguard's handler time during the outage, against the emails its outbox holds."""
    start, end = run.starts[1], run.starts[3]
    windows = 2 * windows_per_phase
    width = (end - start) / windows
    print(f"{'vendorguard, outage':20} {'kept so far':>11} {'req/s':>7} {'handler p50':>12} "
          f"{'handler p99':>12}")
    kept = sum(1 for r in run.records if r[0] < start and r[2] == 202)
    for k in range(windows):
        t = start + k * width
        mine = [r for r in run.records if t <= r[0] < t + width]
        kept += sum(1 for r in mine if r[2] == 202)
        handler = [r[4] for r in mine if not math.isnan(r[4])]
        label = f"{t - start:4.0f}-{t + width - start:.0f} s"
        print(f"{label:20} {kept:11d} {len(mine) / width:7.1f} {fmt(pct(handler, 50), 2):>9} ms "
              f"{fmt(pct(handler, 99), 2):>9} ms")


# -- the plot ------------------------------------------------------------------------------------


def plot(runs: list[Run], path: str, bin_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.4]})
    base = runs[0]
    edges = [t - base.starts[0] for t in base.starts]
    for ax in (top, bottom):
        for i, phase in enumerate(PHASES):
            ax.axvspan(edges[i], edges[i + 1], color=SHADE[phase], zorder=0)
    for i, phase in enumerate(PHASES):
        top.text((edges[i] + edges[i + 1]) / 2, 1.01, phase, ha="center", va="bottom",
                 transform=top.get_xaxis_transform(), fontsize=10)
    for run in runs:
        origin = run.starts[0]
        span = run.starts[-1] - origin
        nbins = math.floor(span / bin_s + 1e-9)
        latency: list[list[float]] = [[] for _ in range(nbins)]
        good = [0] * nbins
        for started, took, status, *_ in run.records:
            k = math.floor((started + took - origin) / bin_s)
            if 0 <= k < nbins:
                latency[k].append(took * 1000)
                good[k] += 200 <= status < 300
        xs = [(k + 0.5) * bin_s for k in range(nbins)]
        top.plot(xs, [pct(v, 99) for v in latency], color=COLOR[run.setup], lw=1.4,
                 marker=".", ms=3, label=LABEL[run.setup])
        bottom.plot(xs, [g / bin_s for g in good], color=COLOR[run.setup], lw=1.2)
        for when, state, _ in run.transitions:
            if state == "open":
                top.axvline(when - origin, color=COLOR[run.setup], ls=":", lw=1)
    top.set_yscale("log")
    top.set_ylabel(f"p99 latency of the answers\ngiven in each {bin_s:g} s, ms")
    top.legend(loc="upper left", fontsize=9, framealpha=0.9)
    top.grid(True, which="major", alpha=0.3)
    top.set_title("A SendGrid outage seen by the app's users (dotted: breaker opens)",
                  pad=18)
    bottom.set_ylabel("2xx answers / s")
    bottom.set_xlabel("seconds since the healthy phase began")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase-seconds", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 s phases, breakers open for 5 s")
    ap.add_argument("--setups", default=",".join(SETUPS),
                    help="comma-separated, from: " + ", ".join(SETUPS))
    ap.add_argument("--clients", type=int, default=8, help="concurrent load threads")
    ap.add_argument("--threads", type=int, default=8, help="gunicorn gthread threads per worker")
    ap.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    ap.add_argument("--attempt-timeout", type=float, default=1.0,
                    help="vendorguard's attempt timeout, seconds")
    ap.add_argument("--reset-after", type=float, default=30.0,
                    help="seconds a breaker stays open (pybreaker and vendorguard)")
    ap.add_argument("--once", action="store_true",
                    help="vendorguard without at_least_once: read timeouts are not kept")
    ap.add_argument("--max-requests", type=int, default=500_000, help="per setup")
    ap.add_argument("--client-timeout", type=float, default=40.0)
    ap.add_argument("--drain-timeout", type=float, default=90.0)
    ap.add_argument("--png", default=str(HERE / "outage.png"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    if args.quick:
        args.phase_seconds, args.reset_after = 3.0, 5.0
        args.drain_timeout = min(args.drain_timeout, 30.0)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if unknown := set(setups) - set(SETUPS):
        ap.error(f"unknown setups: {', '.join(sorted(unknown))}")
    os.environ.update(ENV)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    import gunicorn
    import sendgrid

    print(f"# {len(setups)} setups x phases {'/'.join(PHASES)} of {args.phase_seconds:g} s; "
          f"{args.clients} clients, gunicorn gthread {args.workers} worker(s) x "
          f"{args.threads} threads; breakers: 5 failures, open {args.reset_after:g} s; "
          f"vendorguard attempt timeout {args.attempt_timeout:g} s"
          f"{'' if args.once else ', at_least_once'}; {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, gunicorn {gunicorn.__version__}, sendgrid "
          f"{sendgrid.__version__}", flush=True)
    began = time.monotonic()
    runs = []
    for setup in setups:
        print(f"# running {LABEL[setup]} ...", flush=True)
        runs.append(run_setup(setup, args))
    stats = {run.setup: summarise(run) for run in runs}
    print()
    print_table(runs, stats)
    print()
    print_targets(targets(runs, stats, args), runs)
    for run in runs:
        if run.setup == "vendorguard":
            print()
            print_outbox_growth(run)
    print(f"\n# total run time {time.monotonic() - began:.0f} s")
    if not args.no_plot:
        try:
            plot(runs, args.png, 0.5)
            print(f"# plot: {args.png}")
        except ImportError:
            print("# no plot: matplotlib is not installed (pip install matplotlib)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([run.__dict__ for run in runs], f)


if __name__ == "__main__":
    main()
