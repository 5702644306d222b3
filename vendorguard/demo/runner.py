"""Running the demo: set everything up, play the timeline, count up, leave nothing behind.

Exit status: 0 when the invariants hold (no confirmation lost, no order charged twice), 1 when
they do not or the demo cannot start (the status port is taken, say), 130 after Ctrl-C and 143
after SIGTERM (both stop cleanly, and the summary so far is printed first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry

import vendorguard as vg
from vendorguard.telemetry.server import start_http_server

from .fakes import FakeLaunchDarkly, FakeSendGrid, FakeStripe
from .shop import FLAG, VENDORS, Shop, define_vendors
from .summary import collect
from .timeline import TIMELINE, Pace, apply
from .view import Board, View, make_view

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "Options",
           "SDK_LOGGERS", "run"]

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143
FRAMES_PER_SECOND = 5
SDK_LOGGERS = ("ldclient", "ld_eventsource", "stripe", "sendgrid", "python_http_client",
               "urllib3", "requests")
"""The vendor SDKs' loggers, silenced while the demo breaks their vendors on purpose."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    duration: float = 60.0
    speed: float = 1.0
    port: int = 9464
    quiet: bool = False
    outbox: Path | None = None


@dataclass
class _Progress:
    started: float
    phase: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def run(options: Options, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the demo; returns the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        return _run(options, out, err)
    except KeyboardInterrupt:  # while setting up or cleaning up: nothing to sum up
        print("vendorguard demo: interrupted", file=err, flush=True)
        return EXIT_INTERRUPTED


def _run(options: Options, out: TextIO, err: TextIO) -> int:
    pace = Pace(options.duration, options.speed)
    taken = sorted({v.name for v in vg.vendors()} & set(VENDORS))
    if taken:
        print(f"vendorguard demo: vendors {', '.join(taken)} are already registered in this "
              f"process", file=err)
        return EXIT_FAILED
    terminated = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_interrupts(terminated))
        stack.enter_context(_no_proxy())
        stack.enter_context(_quiet(SDK_LOGGERS))
        registry = CollectorRegistry()
        try:
            server, thread = start_http_server(options.port, registry=registry)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            print(f"vendorguard demo: cannot serve the status page on 127.0.0.1:{options.port}"
                  f" ({reason.rsplit(': ', 1)[-1]}); choose another --port (0 = any free port)",
                  file=err)
            return EXIT_FAILED
        stack.callback(_stop_server, server, thread)
        url = f"http://127.0.0.1:{server.server_port}/"
        sendgrid, stripe = FakeSendGrid(), FakeStripe(retry_after=pace.wall(1.0, 0.01))
        launchdarkly = FakeLaunchDarkly({FLAG: True})
        for fake in (sendgrid, stripe, launchdarkly):
            fake.start()
            stack.callback(fake.stop)
        if options.outbox is None:
            directory = tempfile.mkdtemp(prefix="vendorguard-demo-")
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
            path = Path(directory) / "outbox.db"
        else:
            path = options.outbox
        stack.callback(_unregister)
        define_vendors(pace, registry)
        # Redelivery waits twice as long as SendGrid's breaker stays open: a message tried
        # sooner mostly meets the circuit open, or half-open with its trial taken (rejected).
        try:
            outbox = vg.Outbox(path, backoff=pace.wall(8.0, 0.4),
                               max_backoff=pace.wall(8.0, 0.4), max_attempts=100,
                               registry=registry)
        except vg.OutboxError as exc:
            print(f"vendorguard demo: {exc}", file=err)
            return EXIT_FAILED
        stack.callback(outbox.close)
        shop = Shop(pace, sendgrid_url=sendgrid.url, stripe_url=stripe.url,
                    launchdarkly_url=launchdarkly.url, outbox=outbox, registry=registry,
                    phases=len(TIMELINE))
        stack.callback(shop.close)
        print(f"vendorguard demo: status page {url} (also /metrics and /vendors); "
              f"Ctrl-C stops", file=out, flush=True)
        view = make_view(Board(pace, shop, registry, url), out, options.quiet)
        progress = _Progress(time.monotonic())
        interrupted = False
        try:
            outbox.start(interval=pace.wall(0.5, 0.05))
            shop.start(progress.started)
            _play(pace, shop, (sendgrid, launchdarkly, stripe), view, progress)
            shop.stop()
            _drain(outbox, pace, view, progress)
        except KeyboardInterrupt:
            interrupted = True
            stopping = "vendorguard demo: stopping (the orders in progress finish first)"
            if view is None:
                print(stopping, file=err, flush=True)
            else:
                view.note(stopping)
        shop.stop()
        if view is not None:
            view.finish(progress.phase, progress.elapsed())
        summary = collect(pace=pace, seconds=progress.elapsed(), interrupted=interrupted,
                          shop=shop, outbox=outbox,
                          kept=None if options.outbox is None else str(options.outbox),
                          sendgrid=sendgrid, stripe=stripe, registry=registry)
    print(summary.text(), file=out, flush=True)
    if interrupted:
        return EXIT_TERMINATED if terminated.is_set() else EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


def _play(pace: Pace, shop: Shop, fakes: tuple[FakeSendGrid, FakeLaunchDarkly, FakeStripe],
          view: View | None, progress: _Progress) -> None:
    for index, phase in enumerate(TIMELINE):
        progress.phase = index
        apply(phase, *fakes)
        if view is not None:
            view.phase(index, progress.elapsed())
        end = progress.started + (index + 1) * pace.phase_seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0 / FRAMES_PER_SECOND, left))
            if view is not None:
                view.tick(index, progress.elapsed())


def _drain(outbox: vg.Outbox, pace: Pace, view: View | None, progress: _Progress) -> None:
    """Give the outbox time to deliver what it kept (it normally has, during the recovery)."""
    end = time.monotonic() + pace.wall(20.0, 3.0)
    while outbox.pending("sendgrid") and time.monotonic() < end:
        time.sleep(0.05)
        if view is not None:
            view.tick(progress.phase, progress.elapsed())


def _stop_server(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5.0)


def _unregister() -> None:
    for vendor in vg.vendors():
        if vendor.name in VENDORS:
            vendor.unregister()


@contextlib.contextmanager
def _sigterm_interrupts(seen: threading.Event) -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does (so its temporary files go too), when it runs
    on the main thread, where signal handlers live."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        seen.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _no_proxy() -> Iterator[None]:
    """Loopback past any proxy the user's environment names (every SDK honours them)."""
    saved = {name: os.environ.get(name) for name in ("NO_PROXY", "no_proxy")}
    for name, value in saved.items():
        if value is not None or name == "NO_PROXY":
            hosts = [h.strip() for h in (value or "").split(",") if h.strip()]
            hosts += [h for h in ("127.0.0.1", "localhost") if h not in hosts]
            os.environ[name] = ",".join(hosts)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Silence these loggers (not vendorguard's) for the duration, then restore them."""
    null = logging.NullHandler()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(null)
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(null)
            logger.setLevel(level)
            logger.propagate = propagate
