"""``vendorguard demo``: an application riding out its vendors' outages, in one command.

A small shop takes orders against local stand-ins for LaunchDarkly, SendGrid and Stripe (on
127.0.0.1, nothing leaves the machine), through the real vendor SDKs and vendorguard's drop-ins,
while a timeline breaks the vendors one after another: healthy, SendGrid hangs, LaunchDarkly's
stream drops, Stripe answers 429 with Retry-After, everything recovers. A live board shows each
vendor's health, the status page, ``/metrics`` and ``/vendors`` are served on 127.0.0.1:9464,
and a summary checks at the vendors that no confirmation was lost and no order charged twice.

This module holds only the command's arguments: the vendor SDKs are imported when it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]

SDKS = {"ldclient": "launchdarkly", "sendgrid": "sendgrid", "stripe": "stripe"}
"""The vendor SDKs the demo drives (module: the vendorguard extra that installs it)."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 10000, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vendorguard demo``."""
    parser.add_argument("--duration", type=_positive, default=60.0, metavar="SECONDS",
                        help="length of the whole timeline, five equal phases (default: 60)")
    parser.add_argument("--speed", type=_positive, default=1.0, metavar="FACTOR",
                        help="play the timeline FACTOR times faster; vendor timeouts, backoffs "
                             "and waits scale with it (default: 1)")
    parser.add_argument("--port", type=_port, default=9464,
                        help="port of the status page, /metrics and /vendors on 127.0.0.1 "
                             "(default: 9464; 0: any free port, printed)")
    parser.add_argument("--quiet", action="store_true",
                        help="no live view: just the summary")
    parser.add_argument("--outbox", type=Path, metavar="PATH",
                        help="keep the outbox in this SQLite file (default: a temporary "
                             "directory, removed at exit)")


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; returns the exit status (see
    :mod:`vendorguard.demo.runner`)."""
    missing = sorted({extra for module, extra in SDKS.items()
                      if importlib.util.find_spec(module) is None})
    if missing:
        print(f"vendorguard demo needs the vendor SDKs: pip install "
              f"'vendorguard[{','.join(missing)}]' (or '.[all]' in a checkout)", file=sys.stderr)
        return 1
    from .runner import Options
    from .runner import run as play

    return play(Options(duration=args.duration, speed=args.speed, port=args.port,
                        quiet=args.quiet, outbox=args.outbox))
