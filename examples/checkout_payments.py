"""Payments that are retried safely: the Stripe drop-in against a flaky stand-in for Stripe.

Run it with ``python examples/checkout_payments.py`` (needs ``stripe``). A stand-in for the
Stripe API runs on 127.0.0.1 (nothing leaves this machine). It fails the first attempt of a
payment with a 500, rate-limits another with 429 and ``Retry-After``, and declines a card. The
drop-in retries the first two with the same ``Idempotency-Key`` on every attempt (the stand-in
prints each key it saw), so no payment can be charged twice; the decline is raised at once as
``stripe.CardError`` and does not count against the breaker.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import stripe
from prometheus_client import CollectorRegistry, generate_latest
from vendorguard.integrations.stripe import StripeClient  # was: from stripe import StripeClient

import vendorguard as vg

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
DECLINED = {"error": {"type": "card_error", "code": "card_declined",
                      "message": "Your card was declined."}}


class StandInStripe(ThreadingHTTPServer):
    """``POST /v1/payment_intents``: answers from ``script`` (then 200), remembers each
    request's Idempotency-Key and replays the stored answer for a key it already charged."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.keys: list[str] = []
        self.charged: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInStripe

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        key = self.headers.get("Idempotency-Key", "")
        with self.server.lock:
            self.server.keys.append(key)
            if key in self.server.charged:
                status, headers, body = 200, {}, self.server.charged[key]
            elif self.server.script:
                status, headers, body = self.server.script.pop(0)
            else:
                number = len(self.server.charged) + 1
                status, headers = 200, {}
                body = {"id": f"pi_{number}", "object": "payment_intent",
                        "amount": int(form["amount"][0]), "currency": "usd",
                        "status": "succeeded"}
                self.server.charged[key] = body
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Request-Id": "req_1"}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    registry = CollectorRegistry()
    site = StandInStripe()
    vg.Vendor("stripe", timeout=vg.Timeout(attempt=2.0, total=10.0),
              retry=vg.Retry(attempts=3, backoff=vg.Backoff(initial=0.05, maximum=0.5)),
              breaker=vg.Breaker(failures=3, reset_after=30.0), registry=registry)
    client = StripeClient("sk_test_example", base_addresses={"api": site.url})
    payments = client.v1.payment_intents

    site.script = [(500, {}, {"error": {"type": "api_error", "message": "try again"}})]
    intent = payments.create({"amount": 1999, "currency": "usd"})
    print(f"order 1: {intent.id} {intent.status}; keys sent: {len(site.keys)} requests, "
          f"{len(set(site.keys))} key")

    site.keys.clear()
    site.script = [(429, {"Retry-After": "0.3"},
                    {"error": {"type": "invalid_request_error", "code": "rate_limit"}})]
    intent = payments.create({"amount": 2999, "currency": "usd"},
                             options={"idempotency_key": "order-2-payment"})
    print(f"order 2: {intent.id} {intent.status}; keys sent: {sorted(set(site.keys))}")

    for order in (3, 4, 5, 6):
        site.script = [(402, {}, DECLINED)]
        try:
            payments.create({"amount": 500, "currency": "usd"})
        except stripe.CardError as exc:
            print(f"order {order}: declined ({exc.code}), breaker stays "
                  f"{vg.vendor('stripe').circuits()['stripe'].state}")
    print(f"charges at the stand-in: {len(site.charged)}")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("vendorguard_calls_total", "vendorguard_retries_total")) and (
                not line.endswith(" 0.0")):
            print(line)
    site.shutdown()
    site.server_close()


if __name__ == "__main__":
    main()
