"""A WSGI app for tests/test_multiprocess.py, served by gunicorn with several sync workers.

Every worker imports this module, so each has its own vendor, breaker and metric files:

    /pid         this worker's pid, no vendor call
    /call        one guarded call that succeeds
    /fail        one guarded call that fails and is served by its fallback
    /hold?port=P one guarded call that stays in flight until the test releases it: it connects
                 to 127.0.0.1:P, sends this worker's pid and waits for one byte (bounded)
    /metrics     vendorguard's endpoints: the view merged from every worker's files

Every answer but /metrics is ``<pid> <result>``. With ``MULTIPROC_TEST_CONFIGURE`` set, a
configuration is applied at import (generation 1).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import vendorguard as vg
from vendorguard.telemetry.server import make_wsgi_app

HOLD_LIMIT = 30.0
"""Longest a held call waits for the test (seconds): a forgotten hold cannot hang a worker."""

if os.environ.get("MULTIPROC_TEST_CONFIGURE"):
    vg.configure({}, env=False)
acme = vg.Vendor("acme", retry=None, breaker=vg.Breaker(failures=1000))
endpoints = make_wsgi_app()


@acme.guard("widgets.get")
def get_widget() -> str:
    return "widget"


@acme.guard("widgets.put", fallback="queued")
def put_widget() -> str:
    raise ConnectionRefusedError("acme refused the connection")


@acme.guard("widgets.hold")
def hold_widget(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=HOLD_LIMIT) as conn:
        conn.sendall(f"{os.getpid()}\n".encode())
        conn.recv(1)
    return "released"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/metrics"):
        return endpoints(environ, start_response)
    if path == "/call":
        result = get_widget()
    elif path == "/fail":
        result = put_widget()
    elif path == "/hold":
        port = int(parse_qs(environ.get("QUERY_STRING", ""))["port"][0])
        result = hold_widget(port)
    elif path == "/pid":
        result = "-"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()} {result}".encode()]
