"""What sharing breaker state through Redis costs a guarded call, measured in one process.

Starts a throwaway ``redis-server`` on a free loopback port, then times the same guarded calls
with the breaker's state in memory and with ``vg.RedisStorage``: a success while closed (the hot
path: no Redis round trip, the shared state is read in the background), a failure answered by a
fallback (one script call to count it), and a call rejected by an open circuit. Rounds are
shuffled; a row shows the median per call and what Redis added. A benchmark, not a test.

    .venv/bin/python benchmarks/shared_state.py [--rounds 21] [--calls 2000]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import CollectorRegistry

import vendorguard as vg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process, url
        except redis.RedisError:
            if time.monotonic() > deadline:
                process.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.05)


class Boom(Exception):
    pass


def _fail() -> None:
    raise Boom


def cases(url: str) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, twin name, one call) rows; the twin keeps its breaker state in memory."""
    rows = []
    for kind in ("memory", "redis"):
        registry = CollectorRegistry()

        def breaker(failures: int, kind: str = kind) -> vg.Breaker:
            storage = (vg.RedisStorage(url, namespace=f"bench{uuid.uuid4().hex}")
                       if kind == "redis" else None)
            return vg.Breaker(failures=failures, reset_after=3600, storage=storage)

        ok = vg.Vendor(f"ok-{kind}", breaker=breaker(5), registry=registry)
        failing = vg.Vendor(f"failing-{kind}", breaker=breaker(2**30), retry=None,
                            registry=registry)
        rejecting = vg.Vendor(f"open-{kind}", breaker=breaker(1), registry=registry)
        rejecting.force_open(reason="benchmark")
        rows += [
            (f"success while closed [{kind}]", "success while closed [memory]",
             ok.guard("op")(lambda: 1)),
            (f"failure served by a fallback [{kind}]", "failure served by a fallback [memory]",
             failing.guard("op", fallback=0)(_fail)),
            (f"rejected by an open circuit [{kind}]", "rejected by an open circuit [memory]",
             rejecting.guard("op", fallback=0)(lambda: 1)),
        ]
    return rows


def run(rounds: int, calls: int) -> None:
    logging.getLogger("vendorguard").setLevel(logging.ERROR)  # the kill switch's WARNING
    process, url = _start_redis()
    try:
        rows = cases(url)
        samples: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for _ in range(rounds):
            random.shuffle(rows)
            for name, _, fn in rows:
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                samples[name].append((time.perf_counter() - start) / calls * 1e6)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        print(f"{'call':46} {'median µs':>10} {'added µs':>9}")
        for name, twin, _ in sorted(rows, key=lambda r: (r[1], r[0] != r[1])):
            added = "" if name == twin else f"{medians[name] - medians[twin]:+9.2f}"
            print(f"{name:46} {medians[name]:10.2f} {added:>9}")
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    run(args.rounds, args.calls)


if __name__ == "__main__":
    main()
