"""A delivery worker for the PostgreSQL outbox tests, one per process.

Usage: ``python pg_child.py DSN TABLE URL LEASE``. Opens a :class:`PostgresOutbox` on TABLE whose
deliveries POST ``{"n": n}`` to URL with the header ``X-Worker: <pid>``, through a vendor guard
(``fallback=outbox``: the guard teaches the outbox how to deliver). Prints ``ready``, waits for a
``go`` line on stdin, runs the outbox's background worker until stdin closes, then closes the
outbox (which lets a delivery in progress finish) and exits.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

from prometheus_client import CollectorRegistry

import vendorguard as vg
from vendorguard.outbox_pg import PostgresOutbox

VENDOR = "fakevendor"
OPERATION = "message.send"
WORKER_HEADER = "X-Worker"


def payload(number: int) -> dict[str, object]:
    """The outbox payload of message ``number``: the guarded function's call ``send(number)``."""
    return {"args": [number], "kwargs": {}}


def main(dsn: str, table: str, url: str, lease: float) -> None:
    registry = CollectorRegistry()
    outbox = PostgresOutbox(dsn, table=table, lease=lease, registry=registry)
    vendor = vg.Vendor(VENDOR, retry=None, breaker=None, registry=registry)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only

    @vendor.guard(OPERATION, fallback=outbox)
    def send(number: int) -> None:
        request = urllib.request.Request(
            url, data=json.dumps({"n": number}).encode(), method="POST",
            headers={"Content-Type": "application/json", WORKER_HEADER: str(os.getpid())})
        with opener.open(request, timeout=60) as answer:
            answer.read()

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        outbox.close()
        return
    outbox.start(interval=0.05)
    sys.stdin.read()  # until the parent closes stdin
    outbox.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
