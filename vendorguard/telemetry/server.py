"""HTTP endpoints for vendorguard, as WSGI and ASGI apps and a threaded server; no framework.

- ``GET /metrics``: Prometheus text format (OpenMetrics when the scraper asks for it)
- ``GET /vendors``: :func:`vendorguard.health` as JSON
- ``GET /vendors/health``: ``{"status": ...}``, 200, or 503 when a critical vendor is down
- ``GET /``: the self-contained status page

``HEAD`` is allowed wherever ``GET`` is. Failures answer a plain 500 that never carries an
exception message: those can hold vendor responses or secrets.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import importlib.resources
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import metrics, tracing

__all__ = ["make_asgi_app", "make_wsgi_app", "start_http_server"]

Headers = list[tuple[str, str]]
Response = tuple[int, Headers, bytes]
StartResponse = Callable[[str, Headers], object]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]],
                    Callable[[Message], Awaitable[None]]], Awaitable[None]]

MAX_PATH = 2048
"""Longer request paths are refused (414) before any routing."""

_log = logging.getLogger("vendorguard")
_ROUTES = ("/", "/metrics", "/vendors", "/vendors/health")
_ALLOW = "GET, HEAD"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"
_COMMON: Headers = [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


# -- the responses, shared by both apps --------------------------------------------------------

def _respond(method: str, path: str, accept: str, registry: CollectorRegistry | None,
             ) -> Response:
    """Route one request; never raises."""
    if len(path) > MAX_PATH:
        return _plain(HTTPStatus.REQUEST_URI_TOO_LONG)
    if path not in _ROUTES:
        return _plain(HTTPStatus.NOT_FOUND)
    if method not in ("GET", "HEAD"):
        status, headers, body = _plain(HTTPStatus.METHOD_NOT_ALLOWED)
        return status, [*headers, ("Allow", _ALLOW)], body
    try:
        status, headers, body = _get(path, accept, registry)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{frame.filename}:{frame.lineno}" if frame else "?"
        # The type and place only: an exception message may quote a vendor response or secret.
        _log.error("vendorguard: GET %s failed with %s at %s", path, type(exc).__name__, where)
        status, headers, body = _plain(HTTPStatus.INTERNAL_SERVER_ERROR)
    headers = [*headers, ("Content-Length", str(len(body)))]
    return status, headers, b"" if method == "HEAD" else body


def _get(path: str, accept: str, registry: CollectorRegistry | None) -> Response:
    if path == "/metrics":
        tracing.refresh()  # scrapes are regular: they pick up a tracer provider set late
        encoder, content_type = choose_encoder(accept)
        return 200, [("Content-Type", content_type), *_COMMON], encoder(_metrics(registry))
    if path == "/":
        page, policy = _page()
        return 200, [("Content-Type", "text/html; charset=utf-8"), *_COMMON,
                     ("Content-Security-Policy", policy),
                     ("Referrer-Policy", "no-referrer")], page
    report = _health()
    if path == "/vendors/health":
        status = str(report["status"])
        return (503 if status == "down" else 200), [("Content-Type", _JSON), *_COMMON], \
            _json({"status": status})
    return 200, [("Content-Type", _JSON), *_COMMON], _json(report)


def _plain(status: HTTPStatus) -> Response:
    return status.value, [("Content-Type", _TEXT), *_COMMON], f"{status.phrase}\n".encode()


def _health() -> dict[str, Any]:
    """The health report, looked up at call time (so tests and reloads see the current one)."""
    module = importlib.import_module("vendorguard.telemetry.health")
    report: dict[str, Any] = module.health()
    discovery = sys.modules.get("vendorguard.discovery")
    if discovery is not None and discovery.active():
        report["outbound"] = discovery.report()
    return report


def _metrics(registry: CollectorRegistry | None) -> CollectorRegistry:
    """The registry to expose: in multiprocess mode a fresh one per scrape, as
    prometheus-client documents, since the values live in the shared directory."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
        from prometheus_client import multiprocess

        fresh = CollectorRegistry()
        multiprocess.MultiProcessCollector(fresh)  # type: ignore[no-untyped-call]
        return fresh
    return metrics.default_registry if registry is None else registry


def _json(value: Any) -> bytes:
    return json.dumps(_finite(value), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null``: they are not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@functools.cache
def _page() -> tuple[bytes, str]:
    """The status page and a Content-Security-Policy that admits only its own inline code."""
    page = importlib.resources.files("vendorguard.telemetry").joinpath(
        "static/index.html").read_bytes()
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for match in _INLINE.finditer(page):
        digest = base64.b64encode(hashlib.sha256(match.group(2)).digest()).decode()
        hashes[match.group(1)].append(f"'sha256-{digest}'")
    scripts = " ".join(hashes[b"script"]) or "'none'"
    styles = " ".join(hashes[b"style"]) or "'none'"
    policy = (f"default-src 'none'; script-src {scripts}; style-src {styles}; "
              "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'self'")
    return page, policy


# -- WSGI ------------------------------------------------------------------------------------

def make_wsgi_app(registry: CollectorRegistry | None = None) -> WSGIApp:
    """A WSGI app serving the endpoints; ``registry`` defaults to the global one."""

    def vendorguard_app(environ: dict[str, Any], start_response: StartResponse,
                        ) -> Iterable[bytes]:
        status, headers, body = _respond(str(environ.get("REQUEST_METHOD", "GET")),
                                         str(environ.get("PATH_INFO", "") or "/"),
                                         str(environ.get("HTTP_ACCEPT", "")), registry)
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    return vendorguard_app


# -- ASGI ------------------------------------------------------------------------------------

def make_asgi_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """An ASGI app serving the endpoints (HTTP and lifespan; websockets are refused)."""

    async def vendorguard_app(scope: Message, receive: Callable[[], Awaitable[Message]],
                              send: Callable[[Message], Awaitable[None]]) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind != "http":
            return
        path = str(scope.get("path", "") or "/")
        root = str(scope.get("root_path", "") or "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        accept = ""
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == b"accept":
                accept = bytes(value).decode("latin-1")
        status, headers, body = _respond(str(scope.get("method", "GET")), path, accept,
                                         registry)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in headers]})
        await send({"type": "http.response.body", "body": body})

    return vendorguard_app


# -- the threaded server ---------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    """No request log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def start_http_server(port: int, addr: str = "127.0.0.1",
                      registry: CollectorRegistry | None = None,
                      ) -> tuple[WSGIServer, threading.Thread]:
    """Serve the endpoints on ``addr:port`` from a daemon thread.

    Port 0 picks a free port (read ``server.server_port``); ``server.shutdown()`` stops it.

    Raises:
        OSError: the address cannot be bound (for example, the port is taken).
    """
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    server_class = type("VendorguardHTTPServer", (_ThreadingServer,),
                        {"address_family": family})
    try:
        server: WSGIServer = server_class((addr, port), _QuietHandler)
    except OSError as exc:
        raise OSError(exc.errno, f"vendorguard: cannot serve on {addr}:{port}: "
                                 f"{exc.strerror or exc}") from exc
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="vendorguard-http",
                              daemon=True)
    thread.start()
    return server, thread
