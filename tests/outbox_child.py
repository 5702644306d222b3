"""Helper for the outbox crash test: enqueue numbered messages until killed.

Usage: ``python outbox_child.py PATH``. Opens an outbox on PATH and enqueues message after
message; once each ``enqueue`` has returned it prints ``<receipt id> <number>`` and flushes,
so every line the parent reads stands for a message the outbox said it kept.
"""

from __future__ import annotations

import itertools
import sys

from prometheus_client import CollectorRegistry

import vendorguard as vg

VENDOR = "mailer"
OPERATION = "mail.send"


def payload(number: int) -> dict[str, object]:
    """The payload of message ``number`` (the parent rebuilds it to compare)."""
    return {"args": [f"user{number}@example.com"],
            "kwargs": {"subject": f"welcome #{number}", "tags": ["a", number]}}


def main(path: str) -> None:
    outbox = vg.Outbox(path, registry=CollectorRegistry())
    for number in itertools.count():
        receipt = outbox.enqueue(VENDOR, OPERATION, payload(number))
        sys.stdout.write(f"{receipt.id} {number}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
