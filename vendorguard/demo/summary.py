"""The demo's verdict: the shop's story checked against what reached the stand-in vendors.

The invariants are counted at the vendors, not taken from the shop: every paid order's
confirmation reached SendGrid or is still kept in a durable outbox (none lost), and Stripe
charged each paid order exactly once, whatever was retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

import vendorguard as vg

from .fakes import FakeSendGrid, FakeStripe
from .shop import FLAG, Shop, subject
from .timeline import TIMELINE, Pace
from .view import duration

__all__ = ["Summary", "collect", "p99"]


def p99(latencies: list[float]) -> float | None:
    """The 99th percentile (nearest rank) of ``latencies``; None for none."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    pace: Pace
    seconds: float
    interrupted: bool
    orders: int
    paid: int
    failed: int
    sent: int
    queued: int
    unsent: int
    delivered: int
    accepted: int
    duplicates: int
    lost: int
    pending: int
    kept: str | None
    dead: int
    charges: int
    double_charged: int
    rate_limited: int
    lost_answers: int
    replayed: int
    flag_on: int
    flag_stale: int
    phases: tuple[tuple[str, int, float | None], ...]
    errors: dict[str, int]

    @property
    def ok(self) -> bool:
        """The invariants: orders paid, none of their confirmations lost, no double charge."""
        return (self.paid > 0 and self.lost == 0 and self.double_charged == 0
                and self.charges == self.paid)

    def text(self) -> str:
        head = "summary so far (interrupted)" if self.interrupted else "summary"
        lines = [
            f"vendorguard demo: {head}: {self.pace.duration:g} s timeline at "
            f"{self.pace.speed:g}x, {self.seconds:.1f} s",
            f"  orders         {self.orders} taken: {self.paid} paid, {self.failed} failed",
            f"  confirmations  {self.sent} sent at checkout, {self.queued} kept in the outbox, "
            f"{self.delivered} delivered from it, {self.unsent} unsent",
            f"                 at SendGrid: {self.accepted} of {self.paid} accepted, "
            f"{self.lost} lost, {self.duplicates} duplicates"
            + (f", {self.dead} dead letters" if self.dead else ""),
            f"  payments       {self.charges} charges at Stripe for {self.paid} paid orders, "
            f"{self.double_charged} orders charged twice",
            f"                 retried safely: {self.rate_limited} answered 429 (retried after "
            f"Retry-After),",
            f"                 {self.lost_answers} answers lost after charging (retried with the "
            f"same Idempotency-Key: {self.replayed} replayed)",
            f"  flag           {FLAG} on for {self.flag_on} of {self.orders} orders, "
            f"{self.flag_stale} while the stream was down",
            "  checkout p99   per phase (an order counts where it spent most of its time)",
        ]
        for number, (name, orders, latency) in enumerate(self.phases, 1):
            lines.append(f"    {number}. {name:<34}{orders:>5} orders {duration(latency):>10}")
        if self.errors:
            errors = ", ".join(f"{name} x{count}" for name, count in sorted(self.errors.items()))
            lines.append(f"  errors         {errors}")
        if self.pending:
            lines.append(f"  outbox         {self.pending} confirmations still pending, "
                         + (f"kept in {self.kept}" if self.kept else
                            "removed with the\n                 temporary outbox "
                            "(--outbox PATH keeps them)"))
        if self.ok:
            verdict = "OK: no confirmation lost, no order charged twice"
        else:
            problems = [text for bad, text in (
                (self.paid == 0, "no order was paid"),
                (self.lost > 0, f"{self.lost} confirmations lost"),
                (self.double_charged > 0, f"{self.double_charged} orders charged twice"),
                (self.charges != self.paid,
                 f"{self.charges} charges for {self.paid} paid orders")) if bad]
            verdict = ("interrupted: " if self.interrupted else "FAILED: ") + "; ".join(problems)
        lines.append(f"  result         {verdict}")
        return "\n".join(lines)


def collect(*, pace: Pace, seconds: float, interrupted: bool, shop: Shop, outbox: vg.Outbox,
            kept: str | None, sendgrid: FakeSendGrid, stripe: FakeStripe,
            registry: CollectorRegistry) -> Summary:
    """Count everything up (the shop's workers must have stopped)."""
    totals = shop.totals()
    with sendgrid.lock:
        accepted = dict(sendgrid.accepted)
    with stripe.lock:
        charges = len(stripe.charges)
        double = sum(1 for n in stripe.per_order.values() if n > 1)
        rate_limited, lost_answers, replayed = stripe.rate_limited, stripe.lost, stripe.replayed
    pending = outbox.pending("sendgrid")
    waiting = {_subject(m.payload) for m in pending} if kept else set()
    confirmations = {subject(shop.run, order) for order in shop.paid_orders}
    delivered = registry.get_sample_value("vendorguard_outbox_delivered_total",
                                          {"vendor": "sendgrid"})
    return Summary(
        pace=pace, seconds=seconds, interrupted=interrupted,
        orders=totals.orders, paid=totals.paid, failed=totals.failed, sent=totals.sent,
        queued=totals.queued, unsent=totals.unsent, delivered=int(delivered or 0),
        accepted=len(confirmations & accepted.keys()),
        duplicates=sum(n - 1 for n in accepted.values() if n > 1),
        lost=len(confirmations - accepted.keys() - waiting), pending=len(pending), kept=kept,
        dead=len(outbox.dead("sendgrid")), charges=charges, double_charged=double,
        rate_limited=rate_limited, lost_answers=lost_answers, replayed=replayed,
        flag_on=totals.flag_on,
        flag_stale=sum(s.flag_on for s, p in zip(shop.stats, TIMELINE, strict=True)
                       if p.launchdarkly_down),
        phases=tuple((p.name, s.orders, p99(s.latencies))
                     for s, p in zip(shop.stats, TIMELINE, strict=True)),
        errors=_errors(shop))


def _errors(shop: Shop) -> dict[str, int]:
    errors: dict[str, int] = {}
    for stats in shop.stats:
        for name, count in stats.errors.items():
            errors[name] = errors.get(name, 0) + count
    return errors


def _subject(payload: Any) -> str | None:
    return payload.get("subject") if isinstance(payload, dict) else None
