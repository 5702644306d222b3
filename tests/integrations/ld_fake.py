"""A fake LaunchDarkly service on 127.0.0.1 for tests that run the real SDK against it.

Adapted from research/vendor-probes/fakeserver.py. Stdlib only; every thread is a daemon and
every wait is bounded, so a forgotten fake cannot hang the test run.

    fake = FakeLD({"f": flag("f", True)}).start()
    Config("sdk-test", stream_uri=fake.url, base_uri=fake.url, events_uri=fake.url, ...)
    fake.patch(flag("f", False, version=2))   # pushed to every open stream
    fake.stop(); fake.start()                 # a real outage: listening socket and streams closed
    fake.fail_with(503)                       # or 401; None serves normally again

Served:
    GET  /all              streaming: chunked text/event-stream, ``put`` with every flag, then
                           ``patch`` events as they are pushed; held open until stop (bounded)
    GET  /sdk/latest-all   polling: ``{"flags": {...}, "segments": {}}``
    POST /bulk, /diagnostic  events: 202, bodies recorded in ``events`` / ``diagnostics``
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

STREAM_HOLD = 60.0
"""Longest a stream is held open (seconds): a bound, far above any test's length."""


def flag(key: str, value: Any = True, *, version: int = 1, variations: list[Any] | None = None,
         track_events: bool = False) -> dict[str, Any]:
    """A minimal flag the SDK's evaluator accepts: ``value`` served to every context."""
    variations = list(variations) if variations is not None else [True, False]
    if value not in variations:
        variations.insert(0, value)
    return {"key": key, "version": version, "on": True, "variations": variations,
            "fallthrough": {"variation": variations.index(value)},
            "offVariation": len(variations) - 1, "targets": [], "contextTargets": [],
            "rules": [], "prerequisites": [], "salt": "s", "trackEvents": track_events,
            "trackEventsFallthrough": False, "debugEventsUntilDate": None,
            "deleted": False, "clientSide": True}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            return  # clients hanging up, and our own stop(), are normal here
        super().handle_error(request, client_address)


class FakeLD:
    """A programmable fake of LaunchDarkly's stream, polling and events endpoints."""

    def __init__(self, flags: dict[str, dict[str, Any]] | None = None) -> None:
        self.flags: dict[str, dict[str, Any]] = dict(flags or {})
        self.requests: list[tuple[str, str]] = []
        self.events: list[Any] = []
        self.diagnostics: list[Any] = []
        self.status: int | None = None
        self.port = 0
        self._lock = threading.Lock()
        self._streams: dict[socket.socket, queue.SimpleQueue[str]] = {}
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- controls -------------------------------------------------------------------------------

    def start(self) -> FakeLD:
        """Listen (again) on 127.0.0.1, on the same port after a stop."""
        if self._httpd is not None:
            return self
        self._stopped = threading.Event()
        self._httpd = _Server(("127.0.0.1", self.port), self._handler())
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"fake-ld-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every open stream: the SDK sees a real outage."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopped.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            streams = list(self._streams)
            self._streams.clear()
        for sock in streams:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def fail_with(self, status: int | None) -> None:
        """Answer every request with ``status`` (e.g. 503, 401); ``None``: serve normally."""
        self.status = status

    def set_flag(self, data: dict[str, Any]) -> None:
        """Change a flag for the next ``put`` (a new stream) or poll, without pushing it."""
        with self._lock:
            self.flags[data["key"]] = data

    def patch(self, data: dict[str, Any]) -> int:
        """Change a flag and push a ``patch`` event to every open stream; returns how many."""
        event = _sse("patch", {"path": f"/flags/{data['key']}", "data": data})
        with self._lock:
            self.flags[data["key"]] = data
            for q in self._streams.values():
                q.put(event)
            return len(self._streams)

    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r == (method, path))

    def __enter__(self) -> FakeLD:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self
        stopped = self._stopped

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any = b"") -> None:
                data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
                self.send_response(status)
                if isinstance(body, (dict, list)):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with fake._lock:
                    fake.requests.append(("GET", path))
                    flags = json.loads(json.dumps(fake.flags))
                if fake.status is not None:
                    self._reply(fake.status, b"fake failure")
                elif path == "/all":
                    self._stream({"flags": flags, "segments": {}})
                elif path == "/sdk/latest-all":
                    self._reply(200, {"flags": flags, "segments": {}})
                else:
                    self._reply(404, b"no such path")

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.requests.append(("POST", path))
                    if path == "/bulk":
                        fake.events.append(json.loads(body or b"null"))
                    elif path == "/diagnostic":
                        fake.diagnostics.append(json.loads(body or b"null"))
                if fake.status is not None:
                    self._reply(fake.status, b"fake failure")
                elif path in ("/bulk", "/diagnostic"):
                    self._reply(202)
                else:
                    self._reply(404, b"no such path")

            def _stream(self, data: dict[str, Any]) -> None:
                # Chunked: the SDK's SSE reader blocks on an unchunked body until 10 kB or EOF.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                q: queue.SimpleQueue[str] = queue.SimpleQueue()
                with fake._lock:
                    if stopped.is_set():
                        return
                    fake._streams[self.connection] = q
                try:
                    self._chunk(_sse("put", {"path": "/", "data": data}))
                    end = time.monotonic() + STREAM_HOLD
                    while time.monotonic() < end and not stopped.is_set():
                        try:
                            self._chunk(q.get(timeout=0.05))
                        except queue.Empty:
                            continue
                    if not stopped.is_set():
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                finally:
                    with fake._lock:
                        fake._streams.pop(self.connection, None)

            def _chunk(self, text: str) -> None:
                raw = text.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                self.wfile.flush()

        return Handler


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
