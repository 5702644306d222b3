"""Quickstart: a flaky vendor, guarded, with no network needed.

Run it with ``python examples/quickstart.py``. A fake "geocoder" vendor fails now and then,
hangs once, and finally goes down; the guard retries what is worth retrying, bounds the hang,
opens the circuit when the vendor is down, serves the last good answer meanwhile, and counts
everything in Prometheus metrics.
"""

from __future__ import annotations

import itertools
import threading

from prometheus_client import CollectorRegistry, generate_latest

import vendorguard as vg

registry = CollectorRegistry()
geocoder = vg.Vendor(
    "geocoder",
    timeout=vg.Timeout(attempt=0.2, total=1.0),
    retry=vg.Retry(attempts=3, backoff=vg.Backoff(initial=0.01, maximum=0.05)),
    breaker=vg.Breaker(failures=3, reset_after=30.0),
    registry=registry,
)

# The fake vendor's script: what each call does, in order.
script = itertools.chain(
    ["ok", "refused", "ok", "ok", "hang", "ok"],
    itertools.repeat("refused"),  # then the vendor goes down for good
)
release_hung_call = threading.Event()


# A lookup is a read: safe to retry even when the vendor may have seen the first try.
@geocoder.guard("geocode", idempotent=True,
                fallback=vg.LastGood(ttl=600, otherwise=(0.0, 0.0)))
def geocode(city: str) -> tuple[float, float]:
    """Look a city up at the (fake) vendor."""
    step = next(script)
    if step == "refused":
        raise ConnectionRefusedError("geocoder unreachable")
    if step == "hang":
        release_hung_call.wait(5)  # a vendor that never answers in time
    return {"paris": (48.86, 2.35), "oslo": (59.91, 10.75)}.get(city, (1.0, 1.0))


def main() -> None:
    seen: list[vg.Event] = []
    vg.add_observer(seen.append)
    for city in ["paris", "oslo", "paris", "oslo", "paris", "oslo", "paris"]:
        before = len(seen)
        print(f"geocode({city!r:8}) -> {geocode(city)}")
        for event in seen[before:]:
            if isinstance(event, vg.events.RetryScheduled):
                print(f"    retried after {event.error_type} ({event.reason})")
            elif isinstance(event, vg.events.CircuitStateChanged):
                print(f"    circuit {event.from_state} -> {event.to_state}")
            elif isinstance(event, vg.events.CallEnded):
                served = f", fallback served ({event.fallback})" if event.fallback else ""
                print(f"    outcome={event.outcome} attempts={event.attempts}{served}")
    release_hung_call.set()
    vg.remove_observer(seen.append)

    print("\nWhat Prometheus would scrape (calls by outcome):")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("vendorguard_calls_total", "vendorguard_circuit_state")) and (
                not line.endswith(" 0.0")):
            print("   ", line)


if __name__ == "__main__":
    main()
