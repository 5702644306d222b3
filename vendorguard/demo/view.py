"""What the demo shows while it runs: a live board on a terminal, one line per phase otherwise.

The board is read from ``vg.health()`` (status, breaker state, calls per second, error ratio,
fallbacks and p99 over the recent past), the outbox's gauges in the demo's metrics registry, and
the shop's own counts. On a terminal it is redrawn in place a few times a second with plain ANSI
escapes; vendorguard's log records are printed above it, so none is hidden or garbled.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
from typing import Protocol, TextIO

from prometheus_client import CollectorRegistry

import vendorguard as vg

from .shop import FLAG, VENDORS, Shop
from .timeline import TIMELINE, Pace

__all__ = ["Board", "LineView", "LiveView", "View", "clock", "duration", "make_view"]

WIDTH = 78
"""Columns the board needs; on a narrower terminal its lines are cut, without colours."""
COLOURS = {"ok": "32", "closed": "32", "degraded": "33", "half_open": "33", "down": "31",
           "open": "31", "forced_open": "31"}


def clock(seconds: float) -> str:
    """``m:ss``."""
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def duration(seconds: float | None) -> str:
    """A latency for people: ``0.04 ms``, ``12 ms``, ``1.25 s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


class Board:
    """The numbers both views show."""

    def __init__(self, pace: Pace, shop: Shop, registry: CollectorRegistry, url: str) -> None:
        self.pace, self.shop, self.registry, self.url = pace, shop, registry, url

    def gauge(self, name: str, vendor: str) -> int:
        return int(self.registry.get_sample_value(name, {"vendor": vendor}) or 0)

    def frame(self, phase: int, elapsed: float, *, colour: bool, bar: tuple[str, str]
              ) -> list[str]:
        """The board's lines (each at most :data:`WIDTH` visible columns)."""
        vendors = vg.health()["vendors"]
        done = min(elapsed / self.pace.wall_seconds, 1.0)
        filled = round(done * 30)
        lines = [
            f"vendorguard demo: {self.pace.duration:g} s timeline at {self.pace.speed:g}x, "
            f"status page {self.url}",
            f"[{bar[0] * filled}{bar[1] * (30 - filled)}] {done:4.0%}  "
            f"{clock(self.pace.timeline_time(elapsed))} / {clock(self.pace.duration)}  "
            f"(Ctrl-C stops)",
            f"phase {phase + 1}/{len(TIMELINE)}: {TIMELINE[phase].name}",
            "",
            f"{'vendor':<13}{'status':<10}{'breaker':<10}{'calls/s':>8}{'errors':>8}"
            f"{'fallbacks':>11}{'p99':>10}{'outbox':>8}",
        ]
        for name in VENDORS:
            entry = vendors.get(name)
            if entry is None:
                continue
            rate = entry["error_rate"]
            outbox = self.gauge("vendorguard_outbox_pending", name) if name == "sendgrid" else "-"
            latency = entry["latency"]
            lines.append(
                f"{name:<13}{_paint(entry['status'], 10, colour)}"
                f"{_paint(entry['state'] or '-', 10, colour)}"
                f"{entry['calls_per_second']:>8.1f}"
                f"{'-' if rate is None else f'{rate:.0%}':>8}{entry['fallbacks']:>11}"
                f"{_p99(latency):>10}{outbox:>8}")
        totals = self.shop.totals()
        delivered = self.gauge("vendorguard_outbox_delivered_total", "sendgrid")
        source = vendors.get("launchdarkly", {}).get("data_source") or {}
        lines += [
            "",
            f"orders {totals.orders}: {totals.paid} paid, {totals.failed} failed",
            f"confirmations: {totals.sent} sent, {totals.queued} kept in the outbox, "
            f"{delivered} delivered from it",
            f"{FLAG} on for {totals.flag_on}/{totals.orders} orders; flag data "
            f"{source.get('state', '-')}, {source.get('age_seconds') or 0.0:.1f} s old",
        ]
        return lines

    def line(self, phase: int, elapsed: float) -> str:
        """One line for a phase change."""
        vendors = vg.health()["vendors"]
        states = ", ".join(
            f"{name} {entry['status']}" + (f" ({entry['state']})" if entry["state"] else "")
            for name in VENDORS if (entry := vendors.get(name)) is not None)
        totals = self.shop.totals()
        return (f"[{clock(self.pace.timeline_time(elapsed))}] phase {phase + 1}/"
                f"{len(TIMELINE)}: {TIMELINE[phase].name} | orders {totals.orders} | {states}"
                f" | outbox {self.gauge('vendorguard_outbox_pending', 'sendgrid')}")


def _p99(latency: dict[str, float] | None) -> str:
    """A p99 from health(): estimated from histogram buckets whose first bound is 1 ms, so
    anything inside that bucket is shown as below it rather than as an interpolation."""
    if latency is None:
        return "-"
    return "<1 ms" if latency["p99"] < 0.001 else duration(latency["p99"])


def _paint(text: str, width: int, colour: bool) -> str:
    padded = f"{text:<{width}}"
    code = COLOURS.get(text)
    return f"\x1b[{code}m{padded}\x1b[0m" if colour and code else padded


class View(Protocol):
    def phase(self, index: int, elapsed: float) -> None:
        """A phase starts."""

    def tick(self, index: int, elapsed: float) -> None:
        """A few times a second."""

    def finish(self, index: int, elapsed: float) -> None:
        """The demo is over (the summary follows)."""

    def note(self, text: str) -> None:
        """A line for the user, outside the board."""


class LineView:
    """For a pipe or a file: one line when a phase starts."""

    def __init__(self, board: Board, out: TextIO) -> None:
        self.board, self.out = board, out

    def phase(self, index: int, elapsed: float) -> None:
        print(self.board.line(index, elapsed), file=self.out, flush=True)

    def tick(self, index: int, elapsed: float) -> None:
        pass

    def finish(self, index: int, elapsed: float) -> None:
        pass

    def note(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class _Records(logging.Handler):
    """Keeps formatted records for the live view to print above the board."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                            "%H:%M:%S"))
        self.lines: collections.deque[str] = collections.deque()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a logging handler never raises
            self.handleError(record)


class LiveView:
    """For a terminal: the board redrawn in place, and vendorguard's log records printed
    above it (when no handler of the application's already shows them)."""

    def __init__(self, board: Board, out: TextIO) -> None:
        self.board, self.out = board, out
        self._drawn = 0
        self._last = (0, 0.0)
        utf8 = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
        self._bar = ("\u2588", "\u00b7") if utf8 else ("#", "-")
        self._colour = not os.environ.get("NO_COLOR")
        self._records = _Records()
        self._logger = logging.getLogger("vendorguard")
        self._attached = not self._logger.hasHandlers()
        if self._attached:
            self._logger.addHandler(self._records)

    def phase(self, index: int, elapsed: float) -> None:
        self.tick(index, elapsed)

    def note(self, text: str) -> None:
        """Printed above the board at once (not to another stream, which would garble it)."""
        self._records.lines.append(text)
        self.tick(*self._last)

    def tick(self, index: int, elapsed: float) -> None:
        self._last = (index, elapsed)
        columns = shutil.get_terminal_size((80, 24)).columns
        fits = columns > WIDTH
        lines = self.board.frame(index, elapsed, colour=fits and self._colour, bar=self._bar)
        if not fits:
            lines = [line[:max(columns - 1, 1)] for line in lines]
        parts = [f"\r\x1b[{self._drawn}A\x1b[J" if self._drawn else "\x1b[?25l"]
        while self._records.lines:
            parts.append(self._records.lines.popleft()[:max(columns - 1, 1)] + "\n")
        parts.append("\n".join(lines) + "\n")
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(lines)

    def finish(self, index: int, elapsed: float) -> None:
        """Draw the last board, give the cursor back and stop taking log records."""
        self.tick(index, elapsed)
        if self._attached:
            self._logger.removeHandler(self._records)
            self._attached = False
        self.out.write("\x1b[?25h")
        self.out.flush()


def make_view(board: Board, out: TextIO, quiet: bool) -> View | None:
    """The view for ``out``: none when quiet, live on a terminal, lines otherwise."""
    if quiet:
        return None
    return LiveView(board, out) if out.isatty() else LineView(board, out)
