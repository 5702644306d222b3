"""Discovery: the outbound HTTP calls your process makes, and which of them no guard covers.

"The edge may be further than you think": a dependency, an SDK or a forgotten helper talks to
a vendor nobody guarded. ``vendorguard.discover()`` instruments the HTTP stack in-process, with
reversible wrappers:

- ``http.client`` (and so urllib3, requests, urllib, and the SDKs built on them: SendGrid,
  Slack, Twilio, Stripe, LaunchDarkly),
- httpx's default transports (sync and async),
- aiohttp's ``ClientSession`` when aiohttp is installed,

and records, per request, its **host** only (at most :data:`MAX_HOSTS` hosts, then ``other``),
whether it ran inside a guarded call (and which vendor's), its status and its latency. Nothing
about the path, query, headers or body is kept. ``vendorguard_outbound_requests_total{host,
guarded}`` counts them; :func:`report` (also in ``/vendors`` as ``outbound``) summarises them;
``vendorguard discover -- python app.py`` prints the table when a program exits.
:func:`undiscover` restores every original function.
"""

from __future__ import annotations

import contextvars
import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import events
from .telemetry.metrics import families

__all__ = ["MAX_HOSTS", "active", "discover", "report", "reset", "undiscover"]

MAX_HOSTS = 50
"""Distinct hosts recorded; requests to further hosts are counted as ``other``."""

_guarded: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vendorguard_discovery_vendor", default=None)
_lock = threading.Lock()
_patched: list[tuple[Any, str, Any]] = []
_hosts: dict[str, _Host] = {}
_counter: list[Any] = []
perf = time.perf_counter


@dataclass
class _Host:
    requests: int = 0
    guarded: int = 0
    errors: int = 0
    seconds: float = 0.0
    vendors: set[str] = field(default_factory=set)


def _mark(guard: Any, fn: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """The attempt hook: requests made inside an attempt belong to the guard's vendor."""
    name = guard.name
    if is_async:
        async def marked_async(*args: Any, **kwargs: Any) -> Any:
            token = _guarded.set(name)
            try:
                return await fn(*args, **kwargs)
            finally:
                _guarded.reset(token)

        return marked_async

    def marked(*args: Any, **kwargs: Any) -> Any:
        token = _guarded.set(name)
        try:
            return fn(*args, **kwargs)
        finally:
            _guarded.reset(token)

    return marked


def _record(host: str | None, vendor: str | None, failed: bool, seconds: float) -> None:
    key = (host or "unknown").lower()
    with _lock:
        entry = _hosts.get(key)
        if entry is None:
            if len(_hosts) >= MAX_HOSTS:
                key = "other"
                entry = _hosts.get(key)
            if entry is None:
                entry = _hosts[key] = _Host()
        entry.requests += 1
        entry.seconds += seconds
        if failed:
            entry.errors += 1
        if vendor is not None:
            entry.guarded += 1
            if len(entry.vendors) < 16:
                entry.vendors.add(vendor)
    if _counter:
        _counter[0].labels(key, "true" if vendor is not None else "false").inc()


# -- http.client (urllib3, requests, urllib) -------------------------------------------------

def _putrequest(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    instance._vendorguard_request = (perf(), _guarded.get())
    return wrapped(*args, **kwargs)


def _finished(instance: Any, failed: bool) -> None:
    started = instance.__dict__.pop("_vendorguard_request", None)
    if started is not None:
        _record(getattr(instance, "host", None), started[1], failed, perf() - started[0])


def _endheaders(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    except Exception:
        _finished(instance, True)  # could not connect or send: there will be no response
        raise


def _getresponse(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        response = wrapped(*args, **kwargs)
    except Exception:
        _finished(instance, True)
        raise
    _finished(instance, getattr(response, "status", 0) >= 500)
    return response


# -- httpx ------------------------------------------------------------------------------------

def _httpx(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    request = args[0] if args else kwargs["request"]
    vendor, start = _guarded.get(), perf()
    try:
        response = wrapped(*args, **kwargs)
    except Exception:
        _record(request.url.host, vendor, True, perf() - start)
        raise
    _record(request.url.host, vendor, response.status_code >= 500, perf() - start)
    return response


async def _httpx_async(wrapped: Callable[..., Any], instance: Any, args: Any,
                       kwargs: Any) -> Any:
    request = args[0] if args else kwargs["request"]
    vendor, start = _guarded.get(), perf()
    try:
        response = await wrapped(*args, **kwargs)
    except Exception:
        _record(request.url.host, vendor, True, perf() - start)
        raise
    _record(request.url.host, vendor, response.status_code >= 500, perf() - start)
    return response


# -- aiohttp ----------------------------------------------------------------------------------

async def _aiohttp(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    from yarl import URL

    url = args[1] if len(args) > 1 else kwargs.get("str_or_url")
    try:
        host = URL(str(url)).host
    except (TypeError, ValueError):
        host = None
    vendor, start = _guarded.get(), perf()
    try:
        response = await wrapped(*args, **kwargs)
    except Exception:
        _record(host, vendor, True, perf() - start)
        raise
    _record(host, vendor, response.status >= 500, perf() - start)
    return response


def _targets() -> list[tuple[Any, str, Callable[..., Any]]]:
    targets: list[tuple[Any, str, Callable[..., Any]]] = [
        (http.client.HTTPConnection, "putrequest", _putrequest),
        (http.client.HTTPConnection, "endheaders", _endheaders),
        (http.client.HTTPConnection, "getresponse", _getresponse),
    ]
    try:
        import httpx
    except ImportError:
        pass
    else:
        targets += [(httpx.HTTPTransport, "handle_request", _httpx),
                    (httpx.AsyncHTTPTransport, "handle_async_request", _httpx_async)]
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        targets.append((aiohttp.ClientSession, "_request", _aiohttp))
    return targets


def discover(registry: Any = None) -> None:
    """Start recording outbound HTTP requests (idempotent). ``registry``: where
    ``vendorguard_outbound_requests_total`` goes (default: the vendors' default registry)."""
    import wrapt

    with _lock:
        _counter[:] = [families(registry).outbound]
        if _patched:
            return
        for owner, name, wrapper in _targets():
            original = owner.__dict__[name]
            setattr(owner, name, wrapt.FunctionWrapper(original, wrapper))
            _patched.append((owner, name, original))
    events.add_attempt_hook(_mark)


def undiscover() -> None:
    """Stop recording and restore the original functions (what was recorded stays)."""
    with _lock:
        for owner, name, original in reversed(_patched):
            setattr(owner, name, original)
        _patched.clear()
    events.remove_attempt_hook(_mark)


def active() -> bool:
    """Whether discovery is on."""
    return bool(_patched)


def reset() -> None:
    """Forget what was recorded (the metric keeps its counts)."""
    with _lock:
        _hosts.clear()


def report() -> dict[str, Any]:
    """Hosts contacted, most requests first: counts, errors, mean latency, which vendors'
    guards covered them, and whether any request to them went unguarded."""
    with _lock:
        rows = sorted(_hosts.items(), key=lambda item: (-item[1].requests, item[0]))
        hosts = [{
            "host": host,
            "requests": h.requests,
            "guarded": h.guarded,
            "unguarded": h.requests - h.guarded,
            "errors": h.errors,
            "error_rate": round(h.errors / h.requests, 4) if h.requests else 0.0,
            "mean_seconds": round(h.seconds / h.requests, 6) if h.requests else 0.0,
            "vendors": sorted(h.vendors),
        } for host, h in rows]
    return {"active": active(), "hosts": hosts,
            "unguarded_hosts": [h["host"] for h in hosts if h["unguarded"]]}


def table(data: dict[str, Any] | None = None) -> str:
    """The report as a plain-text table."""
    data = report() if data is None else data
    lines = [f"{'host':32} {'requests':>8} {'unguarded':>9} {'errors':>6} {'mean ms':>8}  "
             f"guarded by"]
    for h in data["hosts"]:
        mark = "  <- unguarded" if h["unguarded"] else ""
        lines.append(f"{h['host'][:32]:32} {h['requests']:8d} {h['unguarded']:9d} "
                     f"{h['errors']:6d} {h['mean_seconds'] * 1000:8.1f}  "
                     f"{', '.join(h['vendors']) or '-'}{mark}")
    if not data["hosts"]:
        lines.append("(no outbound HTTP requests)")
    return "\n".join(lines)


def run_command(argv: list[str], out: Any = None) -> int:
    """Run a Python program with discovery on and print the table when it ends; returns its
    exit status. ``argv``: ``script.py ARGS``, ``-m module ARGS`` or ``pytest ARGS``, with or
    without a leading ``python``."""
    import os
    import runpy
    import sys
    import traceback

    out = sys.stderr if out is None else out
    args = list(argv)
    if args and os.path.basename(args[0]).startswith("python"):
        args = args[1:]
    if not args or (args[0] == "-m" and len(args) < 2):
        print("vendorguard discover: give a program: -- python app.py | -m module | pytest",
              file=out)
        return 2
    saved = sys.argv[:]
    status: Any = 0
    discover()
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[0] in ("pytest", "py.test"):
            import pytest

            sys.argv = args
            status = int(pytest.main(args[1:]))
        else:
            sys.argv = args
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as stop:
        status = stop.code
    except Exception:  # the program's own failure: shown, and the table still printed
        traceback.print_exc()
        status = 1
    finally:
        sys.argv = saved
        undiscover()
        print("\nvendorguard discover: outbound HTTP requests\n" + table(), file=out)
    if status is None:
        return 0
    return status if isinstance(status, int) else 1
