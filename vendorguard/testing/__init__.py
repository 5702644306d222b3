"""Test vendor outages before they happen: fault injection inside the guards.

::

    from vendorguard import testing

    with testing.inject("sendgrid", testing.outage()):
        signup(user)            # SendGrid refuses connections: retries, breaker, fallback...

    with testing.inject("stripe", testing.status(429, retry_after=1), "payment_intents.create"):
        ...

Faults act *inside* the guard's attempt, in place of the vendor call, so timeouts, retries,
the breaker, fallbacks, metrics and spans react exactly as in production. Injections nest (the
innermost matching one wins), work for sync and async guards and across threads, and end when
their block ends. Under pytest (the ``vendorguard`` plugin) injection is on; anywhere else it
is off until :func:`enable` is called (or ``VENDORGUARD_FAULTS=1`` is set): a game day in
production is an explicit decision, and every injection is logged at WARNING.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import events
from .faults import (
    Fault,
    InjectedStatus,
    Translator,
    _Stop,
    errors,
    flapping,
    hang,
    latency,
    outage,
    register_translator,
    status,
    translator_for,
)

__all__ = ["Fault", "InjectedStatus", "Translator", "disable", "enable", "enabled", "errors",
           "flapping", "hang", "inject", "latency", "outage", "register_translator", "status"]

_log = logging.getLogger("vendorguard")
_NAME = re.compile(r"[a-z0-9_.-]+")
_lock = threading.Lock()
_active: list[tuple[str, str | None, Fault, _Stop]] = []
_switch = {"on": os.environ.get("VENDORGUARD_FAULTS", "") == "1"}


def enable() -> None:
    """Allow fault injection in this process (the pytest plugin does this for tests)."""
    _switch["on"] = True


def disable() -> None:
    """Refuse further injections (those in progress run to the end of their block)."""
    _switch["on"] = False


def enabled() -> bool:
    return _switch["on"]


def _apply(guard: Any, fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """The hook guards call for each attempt while an injection is active."""
    for vendor, operation, fault, stop in reversed(_active):
        if vendor == guard.name and (operation is None or operation == guard.operation):
            translator = translator_for(guard)
            if is_async:
                return fault.wrap_async(fn, translator, stop)
            return fault.wrap_sync(fn, translator, stop)
    return fn


@contextmanager
def _injecting(vendor: str, fault: Fault, operation: str | None) -> Iterator[Fault]:
    if not _switch["on"]:
        raise RuntimeError("vendorguard fault injection is off outside tests: call "
                           "vendorguard.testing.enable() (or set VENDORGUARD_FAULTS=1) to "
                           "run a game day")
    if not isinstance(vendor, str) or not _NAME.fullmatch(vendor):
        raise ValueError(f"vendor must be a vendor name ([a-z0-9_.-]+), got {vendor!r}")
    if not isinstance(fault, Fault):
        raise TypeError(f"fault must be built by vendorguard.testing (outage(), ...), "
                        f"got {fault!r}")
    if operation is not None and (not isinstance(operation, str) or not operation):
        raise ValueError(f"operation must be an operation name or None, got {operation!r}")
    entry = (vendor, operation, fault, _Stop())
    with _lock:
        _active.append(entry)
        events.add_attempt_hook(_apply)
    _log.warning("vendorguard: injecting %s into %s%s", fault.kind, vendor,
                 f" {operation}" if operation else "")
    try:
        yield fault
    finally:
        entry[3].event.set()
        with _lock:
            _active.remove(entry)
            if not _active:
                events.remove_attempt_hook(_apply)
        _log.warning("vendorguard: %s injection into %s ended", fault.kind, vendor)


class inject:
    """Inject ``fault`` into the guarded calls of ``vendor`` (one ``operation`` or all), for
    the duration of a ``with`` or ``async with`` block."""

    def __init__(self, vendor: str, fault: Fault, operation: str | None = None) -> None:
        self._cm = _injecting(vendor, fault, operation)

    def __enter__(self) -> Fault:
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    async def __aenter__(self) -> Fault:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)
