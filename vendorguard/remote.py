"""``vendorguard control`` and ``vendorguard status``: talking to a running app's endpoints.

``control`` POSTs a control action (force-open, force-close, disable, reset) with a token read
from a file and never shown; ``status`` prints the vendors from ``/vendors`` as a table, with
the configuration generation and the latest audit entries.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import Commands

__all__ = ["add_control", "add_status"]

OK, FAILED, USAGE = 0, 1, 2


# -- talking to a running app's endpoints ----------------------------------------------------

HTTP_TIMEOUT = 10.0
MAX_REPLY = 4 * 1024 * 1024
"""Longer answers from the endpoint are refused."""
CONTROL_ACTIONS = ("force-open", "force-close", "disable", "reset")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers, not followed: a followed redirect would carry the token on."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _endpoint(url: str, path: str) -> str | None:
    """``url`` (the app's endpoint root) joined with ``path``; None unless http(s)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + path,
                                                  query="", fragment=""))


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _printable(value: Any) -> str:
    """``value`` as one line of text that cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else " " for ch in str(value))


def _fail(message: str) -> int:
    print(f"vendorguard: {message}", file=sys.stderr)
    return FAILED


def _http_error(err: urllib.error.HTTPError) -> int:
    """Report an error answer: its status and the ``error`` the endpoint gave, if any."""
    detail = ""
    try:
        reply = json.loads(err.read(MAX_REPLY))
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            detail = ": " + _printable(reply["error"])
    except (OSError, ValueError, HTTPException):
        pass
    return _fail(f"HTTP {err.code} {_printable(err.reason)}{detail}")


def _fetch(opener: urllib.request.OpenerDirector, request: urllib.request.Request,
           ) -> tuple[Any, int | None]:
    """The decoded JSON answer to ``request``, or an exit status when there is none."""
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as err:
        with err:
            return None, _http_error(err)
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return None, _fail(f"cannot reach {request.full_url}: "
                           f"{_printable(reason) or type(exc).__name__}")
    if len(body) > MAX_REPLY:
        return None, _fail(f"the answer from {request.full_url} is too long")
    try:
        return json.loads(body), None
    except ValueError:
        return None, _fail(f"the answer from {request.full_url} is not JSON")


# -- vendorguard control --------------------------------------------------------------------

def _read_token(path: Path) -> str | None:
    """The token in ``path``, stripped; None (with a message) when there is none."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        print(f"vendorguard: cannot read the token file {path}: {why}", file=sys.stderr)
        return None
    if not token:
        print(f"vendorguard: the token file {path} is empty", file=sys.stderr)
        return None
    if not all("!" <= ch <= "~" for ch in token):  # it goes in a header: one visible word
        print(f"vendorguard: the token file {path} must hold one token (visible ASCII, no "
              "spaces or line breaks)", file=sys.stderr)
        return None
    return token


def _default_actor() -> str:
    try:
        return getpass.getuser() or "cli"
    except Exception:  # no user name in the environment or the password database
        return "cli"


def control_run(args: argparse.Namespace) -> int:
    """POST one control action to a running app's control endpoint."""
    quoted = urllib.parse.quote(args.vendor, safe="")
    url = _endpoint(args.url, f"/vendors/{quoted}/{args.action}")
    if url is None:
        print("vendorguard: --url must be an http:// or https:// URL", file=sys.stderr)
        return USAGE
    token = _read_token(args.token_file)
    if token is None:
        return FAILED
    if url.startswith("http:") and not _loopback(url):
        print("vendorguard: warning: sending the token over plain HTTP", file=sys.stderr)
    body = {"reason": args.reason, "actor": args.actor or _default_actor()}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "Authorization": f"Bearer {token}"})
    reply, failed = _fetch(urllib.request.build_opener(_NoRedirect), request)
    if failed is not None:
        return failed
    if not isinstance(reply, dict):
        return _fail(f"unexpected answer from {url}")
    print(f"{_printable(reply.get('vendor', args.vendor))}: "
          f"{_printable(reply.get('action', '?'))} "
          f"({_printable(reply.get('before', '?'))} -> {_printable(reply.get('after', '?'))})")
    return OK


def add_control(commands: Commands) -> None:
    parser = commands.add_parser(
        "control", help="force a vendor open or closed, disable or reset its breaker",
        description="Apply a control action to a vendor of a running app, through its "
                    "control endpoint (POST /vendors/VENDOR/ACTION). The app must have a "
                    "control token; the same token is read from --token-file.")
    parser.add_argument("action", choices=CONTROL_ACTIONS, metavar="ACTION",
                        help="one of " + ", ".join(CONTROL_ACTIONS))
    parser.add_argument("vendor", metavar="VENDOR", help="the vendor's name")
    parser.add_argument("--url", required=True,
                        help="the app's endpoint, e.g. http://127.0.0.1:9464")
    parser.add_argument("--token-file", required=True, type=Path, metavar="PATH",
                        help="a file holding the control token")
    parser.add_argument("--reason", required=True, metavar="TEXT",
                        help="why, kept in the audit trail")
    parser.add_argument("--actor", metavar="NAME",
                        help="who, kept in the audit trail (default: your user name)")
    parser.set_defaults(handler=control_run)


# -- vendorguard status ---------------------------------------------------------------------

STATUS_COLUMNS = ("VENDOR", "STATUS", "STATE", "CALLS/S", "ERROR %", "P99 MS", "FALLBACKS",
                  "IN FLIGHT")
AUDIT_LINES = 10


def _number(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _row(name: str, entry: Any) -> tuple[str, ...]:
    v = entry if isinstance(entry, dict) else {}
    latency = v.get("latency")
    latency = latency if isinstance(latency, dict) else {}
    count = v.get("in_flight")
    return (_printable(name), _printable(v.get("status", "-")),
            _printable(v.get("state") or "-"), _number(v.get("calls_per_second")),
            _number(v.get("error_rate"), 100, 1), _number(latency.get("p99"), 1000, 1),
            _printable(v.get("fallbacks", "-")),
            _printable(count if isinstance(count, int) else "-"))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _audit_line(entry: Any) -> str:
    e = entry if isinstance(entry, dict) else {}
    when = e.get("time")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) \
        if isinstance(when, (int, float)) and not isinstance(when, bool) else "-"
    words = [stamp, *(_printable(e.get(k) or "-") for k in ("kind", "action", "vendor"))]
    if e.get("actor"):
        words.append("by " + _printable(e["actor"]))
    if e.get("before") is not None and e.get("after") is not None:
        words.append(f"({_printable(e['before'])} -> {_printable(e['after'])})")
    if e.get("reason"):
        words.append("- " + _printable(e["reason"]))
    return "  " + " ".join(words)


def status_run(args: argparse.Namespace) -> int:
    """Print how a running app's vendors are doing, from its ``/vendors`` endpoint."""
    url = _endpoint(args.url, "/vendors")
    if url is None:
        print("vendorguard: --url must be an http:// or https:// URL", file=sys.stderr)
        return USAGE
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    report, failed = _fetch(urllib.request.build_opener(), request)
    if failed is not None:
        return failed
    if not isinstance(report, dict) or not isinstance(report.get("vendors", {}), dict):
        return _fail(f"unexpected answer from {url}")
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return OK
    vendors: dict[str, Any] = report.get("vendors", {})
    unwell = sorted(n for n, v in vendors.items()
                    if not isinstance(v, dict) or v.get("status") != "ok")
    print(f"status: {_printable(report.get('status', 'unknown'))} ({len(vendors)} vendors"
          + (f"; not ok: {', '.join(map(_printable, unwell))})" if unwell else ")"))
    if vendors:
        print("\n".join(_table([STATUS_COLUMNS,
                                *(_row(n, vendors[n]) for n in sorted(vendors))])))
    config = report.get("config")
    if isinstance(config, dict) and config.get("generation") is not None:
        print(f"config generation: {_printable(config['generation'])}")
    trail = report.get("audit")
    if isinstance(trail, list) and trail:
        print(f"audit (last {min(len(trail), AUDIT_LINES)}):")
        print("\n".join(_audit_line(e) for e in trail[-AUDIT_LINES:]))
    return OK


def add_status(commands: Commands) -> None:
    parser = commands.add_parser(
        "status", help="how a running app's vendors are doing",
        description="Fetch URL/vendors from a running app and print one row per vendor, the "
                    "configuration generation and the latest audit entries.")
    parser.add_argument("--url", required=True,
                        help="the app's endpoint, e.g. http://127.0.0.1:9464")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=status_run)
