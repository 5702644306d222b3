"""The demo's application: a shop whose checkout calls three vendors through the drop-ins.

Each order checks the ``new-checkout`` flag (LaunchDarkly), pays (Stripe
``payment_intents.create``; the drop-in gives the call one ``Idempotency-Key`` for all its
attempts) and sends a confirmation (SendGrid, with an outbox for mail that cannot go now), all
inside one ``vg.deadline``. Orders arrive at a steady rate on a few worker threads, as requests
would in a web app. The vendor policies are the demo's own, scaled to its pace.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ldclient import Config, Context
from ldclient.config import HTTPConfig
from prometheus_client import CollectorRegistry
from sendgrid.helpers.mail import Mail  # type: ignore[import-untyped]

import vendorguard as vg

# The drop-ins live in integrations/ (installed as vendorguard.integrations), which the type
# check of this package does not see.
from vendorguard.integrations.launchdarkly import LDClient  # type: ignore[import-not-found]
from vendorguard.integrations.sendgrid import SendGridAPIClient  # type: ignore[import-not-found]
from vendorguard.integrations.stripe import (  # type: ignore[import-not-found]
    RequestsClient,
    StripeClient,
)
from vendorguard.telemetry.window import HealthWindow

from .timeline import Pace

__all__ = ["FLAG", "ORDERS_PER_SECOND", "VENDORS", "WORKERS", "PhaseStats", "Shop",
           "define_vendors", "subject"]

FLAG = "new-checkout"
ORDERS_PER_SECOND = 3.0
"""Orders per second of timeline time (so about 180 orders in a 60 s timeline)."""
WORKERS = 8
VENDORS = ("launchdarkly", "sendgrid", "stripe")
"""The vendors of the demo, as the status page and the live view list them."""


def define_vendors(pace: Pace, registry: CollectorRegistry) -> list[vg.Vendor]:
    """SendGrid and Stripe with the demo's policies (LaunchDarkly's drop-in makes its own).

    SendGrid: a short attempt timeout and a breaker that opens after three failures, so a hang
    costs a few slow checkouts and then none. Stripe: room for a few retries after a 429 or a
    lost answer, and a retry budget scaled with the pace (its floor is tokens per second)."""
    sendgrid_attempt = pace.wall(1.0, 0.2)
    sendgrid = vg.Vendor(
        "sendgrid", registry=registry,
        timeout=vg.Timeout(attempt=sendgrid_attempt, total=2.5 * sendgrid_attempt),
        retry=vg.Retry(attempts=2, backoff=vg.Backoff(initial=pace.wall(0.2, 0.01),
                                                      maximum=pace.wall(1.0, 0.05)),
                       budget=vg.RetryBudget(floor=5.0 * pace.speed)),
        breaker=vg.Breaker(failures=3, reset_after=pace.wall(4.0, 0.2)))
    payments = vg.Vendor(
        "stripe", registry=registry, critical=True,
        timeout=vg.Timeout(attempt=pace.wall(3.0, 0.5), total=pace.wall(15.0, 2.0)),
        retry=vg.Retry(attempts=4, backoff=vg.Backoff(initial=pace.wall(0.25, 0.01),
                                                      maximum=pace.wall(2.0, 0.1)),
                       budget=vg.RetryBudget(ratio=0.5, floor=5.0 * pace.speed)),
        breaker=vg.Breaker(failures=5, reset_after=pace.wall(10.0, 0.5)))
    return [sendgrid, payments]


def subject(run: str, order: int) -> str:
    """The confirmation's subject: how the fake SendGrid tells the mails apart (``run`` keeps
    apart the mails of an earlier run still waiting in an outbox given with ``--outbox``)."""
    return f"Order #{run}-{order} confirmed"


COUNTS = ("orders", "paid", "failed", "sent", "queued", "unsent", "flag_on")


@dataclass
class PhaseStats:
    """What happened to the orders of one phase."""

    orders: int = 0
    paid: int = 0
    failed: int = 0
    sent: int = 0
    """Confirmations SendGrid accepted during the checkout."""
    queued: int = 0
    """Confirmations kept by the outbox (a Receipt came back)."""
    unsent: int = 0
    """Confirmations that raised: neither sent nor kept."""
    flag_on: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    """Failures the shop saw, by exception type."""


class Shop:
    """The application under test; :meth:`start` takes orders until :meth:`stop`."""

    def __init__(self, pace: Pace, *, sendgrid_url: str, stripe_url: str, launchdarkly_url: str,
                 outbox: vg.Outbox, registry: CollectorRegistry, phases: int) -> None:
        self.pace = pace
        self.stats = [PhaseStats() for _ in range(phases)]
        self.run = secrets.token_hex(2)
        self.paid_orders: list[int] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._next_order = 1
        self._next_due = self._t0 = 0.0
        self._interval = 1.0 / (ORDERS_PER_SECOND * pace.speed)
        self._budget = pace.wall(10.0, 2.0)
        window = pace.wall(10.0, 1.0)
        self._http = RequestsClient(timeout=pace.wall(3.0, 0.5))
        self.payments = StripeClient("sk_test_vendorguard_demo", http_client=self._http,
                                     base_addresses={"api": stripe_url}, registry=registry)
        self.mail = SendGridAPIClient("SG.vendorguard-demo", host=sendgrid_url, outbox=outbox,
                                      at_least_once=True, registry=registry)
        # Last: the only client with threads of its own (connected once this returns).
        self.flags = LDClient(
            Config("sdk-demo", stream_uri=launchdarkly_url, base_uri=launchdarkly_url,
                   events_uri=launchdarkly_url, send_events=False, diagnostic_opt_out=True,
                   initial_reconnect_delay=pace.wall(0.5, 0.02),
                   http=HTTPConfig(connect_timeout=2.0, read_timeout=5.0)),
            start_wait=5.0, stale_after=pace.wall(3.0, 0.1), registry=registry)
        for name in VENDORS:  # health() numbers over the recent past, at the timeline's pace
            vg.vendor(name).window = HealthWindow(seconds=window, resolution=window / 10)

    def totals(self) -> PhaseStats:
        """Every phase's counts added up (latencies and errors left out)."""
        total = PhaseStats()
        with self._lock:
            for stats in self.stats:
                for name in COUNTS:
                    setattr(total, name, getattr(total, name) + getattr(stats, name))
        return total

    # -- running ----------------------------------------------------------------------------------

    def start(self, timeline_start: float) -> None:
        """Take orders from now on; ``timeline_start`` (``time.monotonic()``) places them in
        the timeline's phases."""
        self.payments.v1.payment_intents.create  # noqa: B018 - the SDK loads services lazily
        self._t0 = timeline_start
        self._next_due = time.monotonic()
        for number in range(WORKERS):
            worker = threading.Thread(target=self._work, name=f"vendorguard-demo-shop-{number}",
                                      daemon=True)
            self._workers.append(worker)
            worker.start()

    def stop(self) -> None:
        """Take no new orders; wait for the ones in progress (each bounded by its deadline)."""
        self._stopping.set()
        for worker in self._workers:
            worker.join(self._budget + 5.0)
        self._workers.clear()

    def close(self) -> None:
        """Stop, then close the SDK clients (the LaunchDarkly client's threads end with it)."""
        self.stop()
        self.flags.close()
        self._http.close()

    def _work(self) -> None:
        try:
            while not self._stopping.is_set():
                with self._lock:  # orders arrive at a steady rate, never in a burst
                    number, self._next_order = self._next_order, self._next_order + 1
                    due = max(self._next_due, time.monotonic())
                    self._next_due = due + self._interval
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    break
                self.order(number)
        finally:
            self._http.close()  # the Stripe SDK keeps one HTTP session per thread

    # -- one order --------------------------------------------------------------------------------

    def order(self, number: int) -> None:
        """Check out order ``number``: flag, payment, confirmation. The order counts in the
        phase it spent most of its time in (the one whose vendors made it fast or slow)."""
        started = time.monotonic()
        flag_on = paid = False
        email = None
        error: str | None = None
        try:
            with vg.deadline(self._budget):
                customer = Context.create(f"customer-{number % 100}")
                flag_on = self.flags.variation(FLAG, customer, False) is True
                self.payments.v1.payment_intents.create(
                    {"amount": 1999 if flag_on else 2099, "currency": "usd",
                     "metadata": {"order": str(number)}})
                paid = True
                email = self._confirm(number)
        except Exception as exc:  # what the shop would show its customer, by type
            error = type(exc).__name__
            if paid:
                email = "unsent"
        ended = time.monotonic()
        middle = (started + ended) / 2 - self._t0
        phase = min(max(int(middle / self.pace.phase_seconds), 0), len(self.stats) - 1)
        with self._lock:
            stats = self.stats[phase]
            stats.orders += 1
            stats.flag_on += flag_on
            stats.latencies.append(ended - started)
            if paid:
                stats.paid += 1
                self.paid_orders.append(number)
            else:
                stats.failed += 1
            if email is not None:
                setattr(stats, email, getattr(stats, email) + 1)
            if error is not None:
                stats.errors[error] = stats.errors.get(error, 0) + 1

    def _confirm(self, number: int) -> str:
        mail = Mail(from_email="orders@shop.example", to_emails=f"customer-{number}@example.org",
                    subject=subject(self.run, number),
                    plain_text_content=f"Thank you! Order #{number} is paid.")
        result: Any = self.mail.send(mail)
        return "queued" if isinstance(result, vg.Receipt) else "sent"
