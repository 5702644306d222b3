"""The HTTP endpoints: WSGI and ASGI apps, the threaded server, and hostile input."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import importlib.resources
import json
import logging
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

import vendorguard as vg
from vendorguard.telemetry.server import make_asgi_app, make_wsgi_app, start_http_server

ROUTES = ("/", "/metrics", "/vendors", "/vendors/health")
SECRET = "sk_live_51HZsecretTOKEN"
VENDOR_KEYS = {
    "status", "state", "critical", "circuits", "window_seconds", "calls", "calls_per_second",
    "outcomes", "error_rate", "latency", "fallbacks", "calls_total", "fallbacks_total",
    "in_flight", "abandoned", "last_failure", "transitions", "control", "detail",
}
Reply = tuple[int, dict[str, str], bytes]
health_module = importlib.import_module("vendorguard.telemetry.health")


def wsgi(app: Any, method: str = "GET", path: str = "/vendors", query: str = "",
         **headers: str) -> Reply:
    """Call a WSGI app with a minimal environ; header names in ``HTTP_X`` form."""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", **headers}
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(app(environ, lambda status, hdrs: started.append((status, hdrs))))
    (status, hdrs), = started
    return int(status.split()[0]), {k.lower(): v for k, v in hdrs}, body


def asgi(app: Any, scope: dict[str, Any], inbox: list[dict[str, Any]] | None = None,
         ) -> list[dict[str, Any]]:
    """Drive an ASGI app once on a fresh event loop; returns what it sent."""
    messages = list(inbox or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    return sent


def asgi_http(app: Any, method: str = "GET", path: str = "/vendors", root_path: str = "",
              headers: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": root_path, "headers": list(headers),
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    start, *bodies = asgi(app, scope)
    assert start["type"] == "http.response.start"
    hdrs = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, b"".join(b["body"] for b in bodies)


def get(url: str, method: str = "GET") -> Reply:
    """An HTTP request with urllib; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture
def app(metrics: CollectorRegistry) -> Any:
    return make_wsgi_app(metrics)


@pytest.fixture
def served(metrics: CollectorRegistry) -> Iterator[str]:
    """The endpoints on a real socket; yields the base URL."""
    server, thread = start_http_server(0, registry=metrics)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _secure(headers: dict[str, str]) -> None:
    assert "charset=utf-8" in headers["content-type"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


def _clean(body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    assert "Traceback" not in text
    assert "Error" not in text or text.strip() == "Internal Server Error"
    assert SECRET not in text


# -- the endpoints ----------------------------------------------------------------------------


def test_metrics_serves_the_given_registry(app: Any, metrics: CollectorRegistry) -> None:
    """/metrics exposes the registry passed to the app, in the Prometheus text format."""
    vg.Vendor("acme", registry=metrics).call("op", lambda: 1)
    status, headers, body = wsgi(app, path="/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'vendorguard_calls_total{operation="op",outcome="success",vendor="acme"} 1.0' \
        in body.decode()
    _secure(headers)


def test_metrics_without_registry_serves_the_global_one() -> None:
    """With no registry, /metrics exposes prometheus-client's global REGISTRY."""
    status, _, body = wsgi(make_wsgi_app(), path="/metrics")
    assert status == 200
    assert b"python_info" in body or b"process_" in body or b"python_gc" in body


def test_metrics_honours_openmetrics_accept(app: Any, metrics: CollectorRegistry) -> None:
    """A scraper asking for OpenMetrics gets it."""
    vg.Vendor("acme", registry=metrics).call("op", lambda: 1)
    status, headers, body = wsgi(
        app, path="/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_metrics_in_multiprocess_mode_reads_the_shared_directory(
        app: Any, metrics: CollectorRegistry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, /metrics aggregates the directory, not the registry."""
    vg.Vendor("acme", registry=metrics).call("op", lambda: 1)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "from prometheus_client import Counter; "
                    "Counter('vg_worker_jobs', 'jobs').inc(3)"], env=env, check=True, timeout=60)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    status, _, body = wsgi(app, path="/metrics")
    assert status == 200
    assert "vg_worker_jobs_total 3.0" in body.decode()
    assert b'vendor="acme"' not in body


def test_vendors_is_the_health_report(app: Any, metrics: CollectorRegistry) -> None:
    """/vendors is vg.health() as JSON, with every documented field per vendor."""
    acme = vg.Vendor("acme", registry=metrics, critical=True)
    acme.call("op", lambda: 1)
    status, headers, body = wsgi(app, path="/vendors")
    report = json.loads(body)
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    _secure(headers)
    assert report["status"] == "ok"
    assert isinstance(report["time"], float)
    entry = report["vendors"]["acme"]
    assert set(entry) >= VENDOR_KEYS
    assert entry["critical"] is True
    assert entry["calls_total"] == 1
    assert entry["outcomes"]["success"] == 1
    assert set(report["vendors"]) == set(vg.health()["vendors"]) == {"acme"}


def test_vendors_json_has_no_nan(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-finite numbers become null, so browsers can parse the report."""
    monkeypatch.setattr(health_module, "health", lambda: {
        "status": "ok", "time": float("nan"), "vendors": {"a": {"x": [float("inf")]}}})
    _, _, body = wsgi(app, path="/vendors")

    def refuse(name: str) -> None:
        raise AssertionError(name)

    assert json.loads(body, parse_constant=refuse) == {
        "status": "ok", "time": None, "vendors": {"a": {"x": [None]}}}


@pytest.mark.parametrize(("critical", "expected", "code"), [
    (True, "down", 503), (False, "degraded", 200)], ids=["critical", "non-critical"])
def test_vendors_health_follows_critical_vendors(
        app: Any, metrics: CollectorRegistry, critical: bool, expected: str, code: int) -> None:
    """/vendors/health answers 503 only when a critical vendor is down."""
    vg.Vendor("ok", registry=metrics)
    vg.Vendor("pay", registry=metrics, critical=critical).force_open(reason="incident")
    status, headers, body = wsgi(app, path="/vendors/health")
    assert (status, json.loads(body)) == (code, {"status": expected})
    _secure(headers)


def test_vendors_health_is_200_when_all_ok(app: Any, metrics: CollectorRegistry) -> None:
    """Healthy vendors give 200 ok; a critical vendor closed again gives 200 too."""
    pay = vg.Vendor("pay", registry=metrics, critical=True)
    pay.force_open()
    pay.force_close()
    assert wsgi(app, path="/vendors/health")[::2] == (200, b'{"status":"ok"}')


def test_status_page_is_self_contained(app: Any) -> None:
    """/ serves the HTML page with a same-origin CSP admitting exactly its inline code."""
    status, headers, body = wsgi(app, path="/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    _secure(headers)
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    for tag in ("script", "style"):
        code = re.search(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), body, re.DOTALL)
        assert code is not None
        digest = base64.b64encode(hashlib.sha256(code.group(1)).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy
    assert not re.search(rb"""(src|href)=["']?(https?:)?//""", body)
    assert b'fetch("vendors"' in body  # relative: works under a path prefix


@pytest.mark.parametrize("path", ROUTES)
def test_head_is_get_without_body(app: Any, path: str) -> None:
    """HEAD answers like GET, with the GET body's length and no body."""
    _, get_headers, get_body = wsgi(app, "GET", path)
    status, headers, body = wsgi(app, "HEAD", path)
    assert (status, body) == (200, b"")
    if path == "/vendors":  # the report's numbers (its time) change length between calls
        assert int(headers["content-length"]) > 0
    else:
        assert headers["content-length"] == str(len(get_body))
    assert headers["content-type"] == get_headers["content-type"]


# -- hostile and odd input --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS",
                                    "CONNECT", "get", "X" * 300])
def test_other_methods_get_405_with_allow(app: Any, method: str) -> None:
    """Only GET and HEAD are served; the answer says so."""
    for path in ROUTES:
        status, headers, body = wsgi(app, method, path)
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        _secure(headers)
        _clean(body)


@pytest.mark.parametrize("path", [
    "/nope", "/metrics/", "/vendors/acme", "/../metrics", "/metrics/../vendors",
    "/%2e%2e/metrics", "/%76endors", "//vendors", "/vendors%00", "/vendors\x00",
    "/index.html", "/static/index.html", "/metrics\r\nSet-Cookie: pwned=1",
    "/vendors\r\n\r\n<script>alert(1)</script>", "/\u2028", "",
], ids=lambda p: repr(p)[:30])
def test_unknown_paths_get_404(app: Any, path: str) -> None:
    """Anything but the four routes is a plain 404 with no echo of the path."""
    status, headers, body = wsgi(app, "GET", path or "/nowhere")
    assert status == 404
    assert "set-cookie" not in headers
    assert all("\r" not in v and "\n" not in v for v in headers.values())
    assert body == b"Not Found\n"
    _secure(headers)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_very_long_paths_are_refused(app: Any, method: str) -> None:
    """A path over 2 KiB is refused before routing."""
    status, _, body = wsgi(app, method, "/vendors" + "/a" * 2000)
    assert status in (404, 414)
    _clean(body)


def test_query_strings_are_ignored(app: Any) -> None:
    """A query string changes nothing."""
    plain = wsgi(app, path="/vendors/health")
    queried = wsgi(app, path="/vendors/health", query="status=down&<script>=1&" + "x" * 5000)
    assert queried[0] == plain[0] == 200
    assert queried[2] == plain[2]


@pytest.mark.parametrize("path", ["/vendors", "/vendors/health", "/"])
def test_internal_errors_hide_the_message(
        app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        path: str) -> None:
    """A failing health() gives a bare 500: no traceback, no message, in body or log."""
    def boom() -> dict[str, Any]:
        raise RuntimeError(f"could not reach vendor with key {SECRET}")

    monkeypatch.setattr(health_module, "health", boom)
    if path == "/":
        from vendorguard.telemetry import server

        server._page.cache_clear()
        monkeypatch.setattr(importlib.resources, "files", lambda _: boom())
    with caplog.at_level(logging.ERROR, logger="vendorguard"):
        status, headers, body = wsgi(app, path=path)
    if path == "/":
        server._page.cache_clear()
    assert (status, body) == (500, b"Internal Server Error\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    _secure(headers)
    assert "RuntimeError" in caplog.text
    assert SECRET not in caplog.text
    assert all(r.exc_info is None for r in caplog.records)


def test_broken_collector_gives_500(app: Any, metrics: CollectorRegistry) -> None:
    """A collector that raises during a scrape gives a bare 500."""
    class Broken:
        def collect(self) -> Iterator[Any]:
            raise ValueError(SECRET)

    metrics.register(Broken())
    status, _, body = wsgi(app, path="/metrics")
    assert status == 500
    _clean(body)


# -- ASGI -------------------------------------------------------------------------------------


def test_asgi_serves_the_same_routes(metrics: CollectorRegistry) -> None:
    """The ASGI app answers like the WSGI app, headers included."""
    vg.Vendor("acme", registry=metrics).call("op", lambda: 1)
    wsgi_app, asgi_app = make_wsgi_app(metrics), make_asgi_app(metrics)
    for path in ROUTES:
        status, headers, body = asgi_http(asgi_app, "GET", path)
        w_status, w_headers, w_body = wsgi(wsgi_app, "GET", path)
        assert status == w_status == 200
        if path == "/vendors":  # its report carries the time it was made
            headers.pop("content-length")
            w_headers.pop("content-length")
        else:
            assert body == w_body
        assert headers == w_headers
    report = json.loads(asgi_http(asgi_app, "GET", "/vendors")[2])
    assert report["vendors"]["acme"]["calls_total"] == 1


def test_asgi_health_503_and_errors(metrics: CollectorRegistry) -> None:
    """ASGI: 503 for a critical vendor down, 405 with Allow, 404, HEAD without a body."""
    vg.Vendor("pay", registry=metrics, critical=True).force_open()
    app = make_asgi_app(metrics)
    assert asgi_http(app, "GET", "/vendors/health")[::2] == (503, b'{"status":"down"}')
    status, headers, _ = asgi_http(app, "DELETE", "/vendors")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert asgi_http(app, "GET", "/../vendors")[0] == 404
    status, headers, body = asgi_http(app, "HEAD", "/vendors/health")
    assert (status, body, headers["content-length"]) == (503, b"", "17")


def test_asgi_accept_and_root_path(metrics: CollectorRegistry) -> None:
    """ASGI: the Accept header picks OpenMetrics; a mount's root_path is stripped."""
    app = make_asgi_app(metrics)
    status, headers, body = asgi_http(
        app, "GET", "/ops/metrics", root_path="/ops",
        headers=((b"Accept", b"application/openmetrics-text; version=1.0.0"),))
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_asgi_lifespan_and_websocket() -> None:
    """ASGI: lifespan completes; a websocket is closed."""
    app = make_asgi_app()
    sent = asgi(app, {"type": "lifespan"}, [{"type": "lifespan.startup"},
                                           {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                        "lifespan.shutdown.complete"]
    sent = asgi(app, {"type": "websocket", "path": "/"}, [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.close"]


# -- the threaded server ----------------------------------------------------------------------


def test_http_server_serves_every_route(served: str, metrics: CollectorRegistry,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    """start_http_server on port 0 answers on loopback and logs nothing to stderr."""
    vg.Vendor("acme", registry=metrics).call("op", lambda: 1)
    for path in ROUTES:
        status, headers, _ = get(served + path)
        assert status == 200
        _secure(headers)
    assert b"vendorguard_calls_total" in get(served + "/metrics")[2]
    assert get(served + "/nope")[0] == 404
    assert get(served + "/vendors?x=1")[0] == 200
    status, headers, _ = get(served + "/vendors", method="DELETE")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert capfd.readouterr().err == ""


def test_http_server_health_503(served: str, metrics: CollectorRegistry) -> None:
    """Over HTTP, /vendors/health is 503 while a critical vendor is forced open."""
    pay = vg.Vendor("pay", registry=metrics, critical=True)
    pay.force_open(reason="incident")
    assert get(served + "/vendors/health")[::2] == (503, b'{"status":"down"}')
    pay.force_close()
    assert get(served + "/vendors/health")[::2] == (200, b'{"status":"ok"}')


def test_http_server_raw_hostile_request(served: str) -> None:
    """Raw requests with odd targets get 400/404, no traceback and no injected header."""
    port = int(served.rsplit(":", 1)[1])
    for target in (b"/vendors%0d%0aSet-Cookie:%20x=1", b"/%2e%2e/%2e%2e/etc/passwd",
                   b"/vendors/" + b"a" * 3000, b"*"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split()[1] in (b"400", b"404", b"414"), head
        assert b"set-cookie" not in head.lower()
        _clean(body)


def test_http_server_port_taken_is_a_clear_error(served: str) -> None:
    """Binding a port in use raises OSError naming the address."""
    port = int(served.rsplit(":", 1)[1])
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        start_http_server(port)


def test_http_server_shutdown_stops_it(metrics: CollectorRegistry) -> None:
    """shutdown() ends the serving thread."""
    server, thread = start_http_server(0, registry=metrics)
    assert thread.daemon
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_custom_registry_counter_is_served(served: str, metrics: CollectorRegistry) -> None:
    """Any metric in the given registry is exposed, not only vendorguard's."""
    Counter("app_jobs", "Jobs.", registry=metrics).inc(2)
    assert b"app_jobs_total 2.0" in get(served + "/metrics")[2]
