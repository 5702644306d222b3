"""HTTP endpoints for vendorguard, as WSGI and ASGI apps and a threaded server; no framework.

- ``GET /metrics``: Prometheus text format (OpenMetrics when the scraper asks for it)
- ``GET /vendors``: :func:`vendorguard.health` as JSON
- ``GET /vendors/health``: ``{"status": ...}``, 200, or 503 when a critical vendor is down
- ``GET /``: the self-contained status page
- ``POST /vendors/{name}/force-open|force-close|disable|reset``: runtime control, only with a
  control token (``control_token=`` or the configuration's) and ``Authorization: Bearer``; the
  JSON body gives a ``reason`` (required) and an ``actor``. Without a token these paths are
  404 like any unknown path; the checks run so that a client without the token learns nothing
  about the vendors (405, then 401/403, then 404 for an unknown vendor, then 413/422).

``HEAD`` is allowed wherever ``GET`` is. Failures answer a plain 500 that never carries an
exception message: those can hold vendor responses or secrets. Neither the token, the
``Authorization`` header nor a request body is ever logged or echoed.
"""

from __future__ import annotations

import base64
import functools
import glob
import hashlib
import importlib
import importlib.resources
import logging
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

from . import control, metrics, tracing
from .control import ACTIONS, MAX_BODY, MIN_TOKEN, TokenSource
from .web import COMMON, JSON, Headers, Request, Response, plain, to_json

__all__ = ["ACTIONS", "MAX_BODY", "MAX_PATH", "MIN_TOKEN", "make_asgi_app", "make_wsgi_app",
           "start_http_server"]

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
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)
_DRAIN = 64 * 1024  # unread WSGI body bytes read and dropped, so the client sees the answer


# -- routing, shared by both apps ----------------------------------------------------------

def _respond(request: Request, registry: CollectorRegistry | None, token: TokenSource,
             ) -> Response:
    """Route one request; never raises."""
    method, path = request.method, request.path
    label = path
    try:
        if len(path) > MAX_PATH:
            response = plain(HTTPStatus.REQUEST_URI_TOO_LONG)
        elif path in _ROUTES:
            response = _read(method, path, request.accept, registry)
        elif (route := control.route(path)) is not None and (secret := token()):
            label = "/vendors/{name}/" + route[1]
            response = control.handle(request, secret, *route)
        else:
            response = plain(HTTPStatus.NOT_FOUND)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{frame.filename}:{frame.lineno}" if frame else "?"
        # The type and place only: an exception message may quote a vendor response or secret.
        _log.error("vendorguard: %s %s failed with %s at %s", method, label,
                   type(exc).__name__, where)
        response = plain(HTTPStatus.INTERNAL_SERVER_ERROR)
    status, headers, body = response
    headers = [*headers, ("Content-Length", str(len(body)))]
    return status, headers, b"" if method == "HEAD" else body


def _read(method: str, path: str, accept: str, registry: CollectorRegistry | None,
          ) -> Response:
    """The GET and HEAD routes."""
    if method not in ("GET", "HEAD"):
        return plain(HTTPStatus.METHOD_NOT_ALLOWED, ("Allow", _ALLOW))
    if path == "/metrics":
        tracing.refresh()  # scrapes are regular: they pick up a tracer provider set late
        encoder, content_type = choose_encoder(accept)
        return 200, [("Content-Type", content_type), *COMMON], encoder(_metrics(registry))
    if path == "/":
        page, policy = _page()
        return 200, [("Content-Type", "text/html; charset=utf-8"), *COMMON,
                     ("Content-Security-Policy", policy),
                     ("Referrer-Policy", "no-referrer")], page
    report = _health()
    if path == "/vendors/health":
        status = str(report["status"])
        return (503 if status == "down" else 200), [("Content-Type", JSON), *COMMON], \
            to_json({"status": status})
    return 200, [("Content-Type", JSON), *COMMON], to_json(report)


# -- shared helpers --------------------------------------------------------------------------

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
    if metrics.multiprocess():
        fresh = CollectorRegistry()
        _merged_collector()(fresh)
        return fresh
    return metrics.default_registry if registry is None else registry


@functools.cache
def _merged_collector() -> Any:
    """prometheus-client's multiprocess collector, skipping empty files: a worker creating its
    file leaves it empty for an instant (and for good if it dies then), and merging an empty
    file fails the whole scrape (prometheus/client_python#1199)."""
    from prometheus_client import multiprocess

    class Collector(multiprocess.MultiProcessCollector):
        def collect(self) -> Any:
            files = []
            for path in glob.glob(os.path.join(self._path, "*.db")):
                try:
                    if os.path.getsize(path) > 0:
                        files.append(path)
                except OSError:  # removed meanwhile (a dead worker's file cleaned up)
                    pass
            return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]

    return Collector


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

class _WSGIBody:
    """A WSGI request's body, read when asked for and never past ``CONTENT_LENGTH``."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.stream = environ.get("wsgi.input")
        try:
            self.left = max(0, int(environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            self.left = 0

    def read(self) -> bytes | None:
        """The body, or None when it is longer than control.MAX_BODY (then nothing is read)."""
        return None if self.left > control.MAX_BODY else self._take(self.left)

    def drain(self) -> None:
        """Read and drop what the app did not read (a bounded amount): a server closing the
        connection with unread bytes may reset it before the client reads the answer."""
        if 0 < self.left <= _DRAIN:
            self._take(self.left)

    def _take(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0 and self.stream is not None:
            chunk = self.stream.read(size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            self.left -= len(chunk)
        return b"".join(chunks)


def make_wsgi_app(registry: CollectorRegistry | None = None, *,
                  control_token: str | None = None) -> WSGIApp:
    """A WSGI app serving the endpoints.

    Args:
        registry: the metrics to expose; defaults to the global registry.
        control_token: the bearer token of the control routes; ``None`` reads the
            configuration's at each request, ``""`` turns control off.

    Raises:
        ValueError: ``control_token`` is shorter than ``MIN_TOKEN`` or not visible ASCII.
    """
    token = control.token_source(control_token)

    def vendorguard_app(environ: dict[str, Any], start_response: StartResponse,
                        ) -> Iterable[bytes]:
        body = _WSGIBody(environ)
        authorization = environ.get("HTTP_AUTHORIZATION")
        request = Request(
            method=str(environ.get("REQUEST_METHOD", "GET")),
            path=str(environ.get("PATH_INFO", "") or "/"),
            accept=str(environ.get("HTTP_ACCEPT", "")),
            # WSGI decodes headers as latin-1: encoding back gives the bytes that were sent.
            authorization=None if authorization is None
            else str(authorization).encode("latin-1", "replace"),
            content_type=str(environ.get("CONTENT_TYPE", "")),
            body=body.read)
        status, headers, payload = _respond(request, registry, token)
        body.drain()
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [payload]

    return vendorguard_app


# -- ASGI ------------------------------------------------------------------------------------

def make_asgi_app(registry: CollectorRegistry | None = None, *,
                  control_token: str | None = None) -> ASGIApp:
    """An ASGI app serving the endpoints (HTTP and lifespan; websockets are refused).

    Arguments and errors as :func:`make_wsgi_app`.
    """
    token = control.token_source(control_token)

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
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            key = bytes(name).lower()  # repeated headers are joined, as WSGI servers do
            headers[key] = headers[key] + b"," + bytes(value) if key in headers \
                else bytes(value)
        method = str(scope.get("method", "GET"))
        body = await _gather(receive, headers.get(b"content-length")) \
            if method == "POST" else b""
        request = Request(method=method, path=path,
                           accept=headers.get(b"accept", b"").decode("latin-1"),
                           authorization=headers.get(b"authorization"),
                           content_type=headers.get(b"content-type", b"").decode("latin-1"),
                           body=lambda: body)
        status, response_headers, payload = _respond(request, registry, token)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in response_headers]})
        await send({"type": "http.response.body", "body": payload})

    return vendorguard_app


async def _gather(receive: Callable[[], Awaitable[Message]], length: bytes | None,
                  ) -> bytes | None:
    """The request body from its ``http.request`` messages; None once it passes control.MAX_BODY."""
    if length is not None and length.strip().isdigit() and int(length) > control.MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message.get("type") != "http.request":  # the client went away
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > control.MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


# -- the threaded server ---------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    """No request log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def start_http_server(port: int, addr: str = "127.0.0.1",
                      registry: CollectorRegistry | None = None, *,
                      control_token: str | None = None,
                      ) -> tuple[WSGIServer, threading.Thread]:
    """Serve the endpoints on ``addr:port`` from a daemon thread.

    Port 0 picks a free port (read ``server.server_port``); ``server.shutdown()`` stops it.
    ``control_token`` as for :func:`make_wsgi_app`. The server speaks plain HTTP: behind
    anything but loopback, put TLS in front of it before sending it a token.

    Raises:
        OSError: the address cannot be bound (for example, the port is taken).
        ValueError: ``control_token`` is refused.
    """
    app = make_wsgi_app(registry, control_token=control_token)
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    server_class = type("VendorguardHTTPServer", (_ThreadingServer,),
                        {"address_family": family})
    try:
        server: WSGIServer = server_class((addr, port), _QuietHandler)
    except OSError as exc:
        raise OSError(exc.errno, f"vendorguard: cannot serve on {addr}:{port}: "
                                 f"{exc.strerror or exc}") from exc
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="vendorguard-http",
                              daemon=True)
    thread.start()
    return server, thread
