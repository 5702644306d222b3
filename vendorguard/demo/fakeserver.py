"""The base of the demo's stand-in vendors: a threaded HTTP server on 127.0.0.1 that can hold a
request until told to let go, and that leaves no thread or socket behind when stopped.

Every wait is bounded, and :meth:`FakeServer.stop` closes the listening socket and every open
connection (held requests and streams included), then joins every thread the server started.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MAX_HOLD", "FakeServer", "Handler", "shut"]

MAX_HOLD = 600.0
"""Longest a request is held (seconds): a bound far above any phase of the timeline."""
JOIN = 5.0
"""Longest :meth:`FakeServer.stop` waits for one of its threads."""


class Handler(BaseHTTPRequestHandler):
    """Hands every request to the server's :meth:`FakeServer.serve`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60.0  # an idle keep-alive connection is closed after this
    server: FakeServer

    def log_message(self, *args: Any) -> None:
        pass  # the demo's terminal belongs to the live view

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        self.server.serve(self, self.command, urlsplit(self.path).path, body)

    do_GET = do_POST = _any

    def reply(self, status: int, body: Any = b"", headers: dict[str, str] | None = None
              ) -> None:
        """Answer with ``body`` (bytes as is, anything else as JSON)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            if not isinstance(body, bytes):
                self.send_header("Content-Type", "application/json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up first

    def hang_up(self) -> None:
        """Close the connection without answering (the client sees it dropped)."""
        self.close_connection = True
        shut(self.connection)


class FakeServer(ThreadingHTTPServer):
    """A stand-in vendor on 127.0.0.1 (a free port); subclasses answer in :meth:`serve`."""

    daemon_threads = True
    block_on_close = False  # stop() joins the threads itself, each with a bound
    name = "fake"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._workers: list[threading.Thread] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"vendorguard-demo-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, close every open connection and join every thread."""
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
        self.server_close()
        with self.lock:
            connections, threads = set(self._open), list(self._workers)
        for connection in connections:
            shut(connection)
        for thread in (*threads, self._thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(JOIN)
        self._thread = None

    def process_request(self, request: Any, client_address: Any) -> None:
        """One daemon thread per connection, remembered so that :meth:`stop` can join it."""
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"vendorguard-demo-{self.name}-conn")
        with self.lock:
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
        thread.start()

    def track(self, connection: socket.socket) -> None:
        with self.lock:
            if self.stopping.is_set():
                shut(connection)
            else:
                self._open.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self.lock:
            self._open.discard(connection)

    def serve(self, handler: Handler, method: str, path: str, body: bytes) -> None:
        handler.reply(404, {"error": "no such path"})

    def hold(self, handler: Handler, released: threading.Event) -> bool:
        """Keep the request waiting until ``released`` is set: True then; False if the client
        hung up, the server is stopping, or :data:`MAX_HOLD` passed first."""
        end = time.monotonic() + MAX_HOLD
        while time.monotonic() < end and not self.stopping.is_set():
            if released.wait(0.05):
                return not self.stopping.is_set()
            if _gone(handler.connection):
                return False
        return False


def _gone(connection: socket.socket) -> bool:
    """Whether the client closed its end (without consuming what it may have sent)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
