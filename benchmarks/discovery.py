"""What discovery adds to an outbound request: the same loopback requests with it on and off.

A keep-alive ``http.client`` connection and a ``requests.Session`` send GETs to a server on
127.0.0.1; rounds alternate discovery on and off in a shuffled order, and the table shows the
median per request and the difference. A benchmark, not a test.

    .venv/bin/python benchmarks/discovery.py [--rounds 21] [--requests 300]
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from prometheus_client import CollectorRegistry

import vendorguard as vg


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    session = requests.Session()
    session.trust_env = False

    def plain() -> None:
        conn.request("GET", "/x")
        conn.getresponse().read()

    def via_requests() -> None:
        session.get(f"http://127.0.0.1:{port}/x", timeout=5)

    clients: dict[str, Callable[[], None]] = {"http.client": plain, "requests": via_requests}
    registry = CollectorRegistry()
    samples: dict[tuple[str, bool], list[float]] = {
        (name, on): [] for name in clients for on in (False, True)}
    rng = random.Random(1234)
    for fn in clients.values():
        for _ in range(50):
            fn()
    for _ in range(args.rounds):
        order = list(samples)
        rng.shuffle(order)
        for name, on in order:
            if on:
                vg.discover(registry=registry)
            fn = clients[name]
            start = time.perf_counter()
            for _ in range(args.requests):
                fn()
            samples[name, on].append((time.perf_counter() - start) / args.requests)
            if on:
                vg.undiscover()
    print(f"{'loopback GET':16} {'off µs':>8} {'on µs':>8} {'added µs':>9}")
    for name in clients:
        off = statistics.median(samples[name, False]) * 1e6
        on_ = statistics.median(samples[name, True]) * 1e6
        print(f"{name:16} {off:8.1f} {on_:8.1f} {on_ - off:+9.1f}")
    server.shutdown()


if __name__ == "__main__":
    main()
