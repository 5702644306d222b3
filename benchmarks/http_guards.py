"""What the HTTP guards and the Stripe drop-in add to a request, measured in one process.

Each pair runs the same request with and without vendorguard against an in-process answer (no
socket, so that only the guard's own work is measured): httpx through ``httpx.MockTransport``,
requests through an adapter that answers without a network, and the Stripe SDK through an
``HTTPClient`` that returns a canned payment intent. Rounds are shuffled; a row shows the median
per request over the rounds and what vendorguard added to its bare twin. A benchmark, not a
test: nothing here is asserted.

    .venv/bin/python benchmarks/http_guards.py [--rounds 31] [--target-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import requests
import stripe
from prometheus_client import CollectorRegistry
from requests.adapters import HTTPAdapter
from vendorguard.integrations.httpx import AsyncGuardedTransport, GuardedTransport
from vendorguard.integrations.requests import GuardedAdapter
from vendorguard.integrations.stripe import StripeClient

import vendorguard as vg

URL = "https://api.vendor.test/v1/things"
BODY = json.dumps({"id": "thing_1", "ok": True}).encode()
INTENT = json.dumps({"id": "pi_1", "object": "payment_intent", "amount": 1000,
                     "currency": "usd", "status": "succeeded"})


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=BODY, headers={"Content-Type": "application/json"})


class _Local(HTTPAdapter):
    """Answers every request without a network (what a cached connection would return)."""

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: Any = None) -> requests.Response:
        response = requests.Response()
        response.status_code, response._content = 200, BODY
        response.headers["Content-Type"] = "application/json"
        response.url, response.request = request.url, request
        return response


class _GuardedLocal(GuardedAdapter, _Local):
    pass


class _StripeAnswers(stripe.HTTPClient):  # type: ignore[misc]
    name = "bench"

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> Any:
        return INTENT, 200, {"Request-Id": "req_1"}

    def close(self) -> None:
        pass


def _session(adapter: HTTPAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("https://", adapter)
    return session


def cases(registry: CollectorRegistry) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, twin name, one request) rows; the twin is the bare request."""
    bare_httpx = httpx.Client(transport=httpx.MockTransport(_answer))
    guarded_httpx = httpx.Client(transport=GuardedTransport(
        httpx.MockTransport(_answer), vendors={"vendor.test": "bench_httpx"}, registry=registry))
    bare_requests = _session(_Local())
    guarded_requests = _session(_GuardedLocal({"vendor.test": "bench_requests"},
                                              registry=registry))
    raw_stripe = stripe.StripeClient("sk_test_bench", http_client=_StripeAnswers())
    vg.Vendor("stripe", registry=registry, timeout=vg.Timeout(attempt=10.0))
    drop_in = StripeClient("sk_test_bench", http_client=_StripeAnswers())
    params = {"amount": 1000, "currency": "usd"}
    return [
        ("httpx Client.get, MockTransport", "", lambda: bare_httpx.get(URL)),
        ("  + GuardedTransport", "httpx Client.get, MockTransport",
         lambda: guarded_httpx.get(URL)),
        ("requests Session.get, local adapter", "", lambda: bare_requests.get(URL)),
        ("  + GuardedAdapter", "requests Session.get, local adapter",
         lambda: guarded_requests.get(URL)),
        ("stripe payment_intents.create, raw SDK", "",
         lambda: raw_stripe.v1.payment_intents.create(params)),
        ("  + StripeClient drop-in", "stripe payment_intents.create, raw SDK",
         lambda: drop_in.v1.payment_intents.create(params)),
    ]


def async_cases(registry: CollectorRegistry) -> list[tuple[str, str, Callable[[], Any]]]:
    bare = httpx.AsyncClient(transport=httpx.MockTransport(_answer))
    guarded = httpx.AsyncClient(transport=AsyncGuardedTransport(
        httpx.MockTransport(_answer), vendors={"vendor.test": "bench_async"},
        registry=registry))
    return [("httpx AsyncClient.get, MockTransport", "", lambda: bare.get(URL)),
            ("  + AsyncGuardedTransport", "httpx AsyncClient.get, MockTransport",
             lambda: guarded.get(URL))]


def _loop_of(fn: Callable[[], Any], loop: asyncio.AbstractEventLoop | None,
             ) -> Callable[[int], float]:
    if loop is None:
        def run(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            return time.perf_counter() - start
        return run

    async def many(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await fn()
        return time.perf_counter() - start

    return lambda n: loop.run_until_complete(many(n))


def measure(rows: list[tuple[str, str, Callable[[int], float]]], rounds: int,
            target_s: float, seed: int) -> dict[str, float]:
    number = {}
    for name, _, run in rows:
        run(20)  # warm up: guards built, connections pooled
        n = 1
        while run(n) < target_s / 4:
            n *= 2
        number[name] = max(1, int(n * target_s / max(run(n), 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    order = list(rows)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name, _, run in order:
            samples[name].append(run(number[name]) / number[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--target-ms", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    registry = CollectorRegistry()
    loop = asyncio.new_event_loop()
    rows = [(n, t, _loop_of(fn, None)) for n, t, fn in cases(registry)]
    rows += [(n, t, _loop_of(fn, loop)) for n, t, fn in async_cases(registry)]
    medians = measure(rows, args.rounds, args.target_ms / 1000, args.seed)
    print(f"{'request':42} {'median µs':>10} {'added µs':>9} {'x bare':>7}")
    for name, twin, _ in rows:
        us = medians[name] * 1e6
        if twin:
            base = medians[twin] * 1e6
            print(f"{name:42} {us:10.1f} {us - base:+9.1f} {us / base:7.2f}")
        else:
            print(f"{name:42} {us:10.1f}")
    loop.close()


if __name__ == "__main__":
    main()
