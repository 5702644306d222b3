"""Type-checked, never run: the public API keeps user signatures and types (mypy strict)."""

from __future__ import annotations

from typing_extensions import assert_type

import vendorguard as vg

acme = vg.Vendor("acme", timeout=vg.Timeout(attempt=1.0), retry=vg.Retry(attempts=2),
                 breaker=vg.Breaker(failures=3), bulkhead=vg.Bulkhead(max_concurrent=4))


@acme.guard("lookup", fallback=None)
def lookup(key: str, *, fresh: bool = False) -> int:
    return len(key)


@acme.guard("fetch")
async def fetch(key: str) -> bytes:
    return key.encode()


def on_failure(failure: vg.Failure) -> int:
    return 0


async def use_async() -> None:
    assert_type(await fetch("a"), bytes)


assert_type(lookup("a"), int)
assert_type(lookup("a", fresh=True), int)
assert_type(vg.guard("acme", "other", fallback=on_failure)(lookup)("b"), int)
assert_type(acme.call("lookup", lookup, "c"), int)
assert_type(vg.vendor("acme"), vg.Vendor)
assert_type(vg.vendors(), list[vg.Vendor])
assert_type(vg.LastGood(ttl=60.0), vg.LastGood)

with vg.deadline(2.5), vg.testing_mode():
    lookup("d")

try:
    lookup("e")
except vg.CircuitOpenError as exc:
    assert_type(exc.retry_after, float)
    assert_type(exc.vendor, str)

lookup(1)  # type: ignore[arg-type]
