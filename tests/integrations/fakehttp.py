"""A scriptable fake HTTP vendor on 127.0.0.1: the base of the vendor fakes, and a generic JSON
fake for tests that use plain httpx/requests.

Generalised from sg_fake.py. Stdlib only; every thread is a daemon and every wait is bounded,
so a forgotten fake cannot hang the test run.

    fake = FakeVendor().start()                      # or: with FakeVendor() as fake: ...
    httpx.get(fake.url + "/v1/thing")                # 200 {"ok": true}
    fake.script(Answer(503, headers={"Retry-After": "1"}), OK)  # in order, the last repeats
    fake.script(DROP, path="/v1/thing/*")            # a per-path script (fnmatch pattern)
    fake.count("/v1/thing", method="GET")            # requests received
    fake.stop(); fake.start()                        # an outage on the same port

An :class:`Answer` is what the fake does with one request: ``status``, ``headers``, ``body``
(bytes or str as is, anything else as JSON; ``None`` = let the fake render its success body for
a 2xx, nothing otherwise), ``hang`` (sleep that long first, bounded by :data:`MAX_HANG` and by
:meth:`FakeVendor.stop`), ``drop`` (read the request, then close the connection without
answering). Subclasses render successes per (method, path) in :meth:`FakeVendor.success`, or
rewrite whole answers in :meth:`FakeVendor.respond`.

Each request is recorded as a :class:`Seen`: monotonic time, method, path (no query string), the
headers the fake was asked to record, whether an Authorization header was present, and the
status answered (0 for a drop). Bodies and Authorization values are never recorded.

Connections are HTTP/1.1 keep-alive with Content-Length; :meth:`FakeVendor.stop` closes the
listening socket *and* every open connection, so clients with connection pools see the outage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

MAX_HANG = 10.0
"""Longest an answer hangs (seconds)."""
IDLE_TIMEOUT = 30.0
"""An idle keep-alive connection is closed after this many seconds."""
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
"""Headers whose values are never recorded."""

F = TypeVar("F", bound="FakeVendor")


@dataclass(frozen=True)
class Answer:
    """What the fake does with one request (see the module docstring)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    hang: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class Seen:
    """One request the fake received."""

    at: float
    """``time.monotonic()`` when the request had been read."""
    method: str
    path: str
    """The path without the query string."""
    headers: Mapping[str, str]
    """Only the headers the fake records (see ``record_headers``), when present."""
    authorized: bool
    """Whether an Authorization header was present (its value is never recorded)."""
    status: int
    """The status answered; 0 for a dropped connection."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """Vendor-specific fields a subclass extracts (e.g. Stripe's ``amount``)."""

    def header(self, name: str) -> str | None:
        """A recorded header's value, by case-insensitive name; None if absent."""
        return _header(self.headers, name)


@dataclass(frozen=True)
class Incoming:
    """A request as the answering hooks see it. Never stored."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """A header's value, by case-insensitive name; None if absent."""
        return _header(self.headers, name)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


OK = Answer(200)
DROP = Answer(drop=True)


def hang(seconds: float, then: Answer = OK) -> Answer:
    """``then``, answered after ``seconds`` (at most :data:`MAX_HANG`; stop ends it early)."""
    return dataclasses.replace(then, hang=min(max(seconds, 0.0), MAX_HANG))


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """The ``Retry-After`` header for a delay, none for ``None``."""
    return {} if seconds is None else {"Retry-After": seconds_header(seconds)}


def seconds_header(seconds: float) -> str:
    """A delay as a header value: ``2`` for 2.0, ``0.5`` for 0.5 (fractions keep tests fast,
    though RFC 9110 ``Retry-After`` allows whole seconds only)."""
    return f"{seconds:g}"


def free_port() -> int:
    """A loopback TCP port on which nothing listens right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def refused_url() -> str:
    """A loopback URL on which nothing listens (connect -> ECONNREFUSED)."""
    return f"http://127.0.0.1:{free_port()}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeVendor

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or exc is None:
            return  # clients that time out and hang up, and our own stop(), are normal here
        with self.fake._lock:
            self.fake.errors.append(exc)
        traceback.print_exc()  # a bug in the fake: the client sees a dropped connection


class FakeVendor:
    """A fake HTTP vendor: answers GET, POST, PUT, PATCH and DELETE on any path.

    Subclasses set ``record_headers`` and ``name``, override :meth:`success` (the body of a
    successful answer per method and path), :meth:`note` (vendor fields to record) and, for
    stateful behaviour such as idempotency, :meth:`respond`. The instance lock
    (``self._lock``, re-entrant) is held while these hooks run.
    """

    record_headers: ClassVar[tuple[str, ...]] = ()
    """Request headers recorded in :attr:`Seen.headers` (never Authorization)."""
    name: ClassVar[str] = "fake-vendor"
    default_ok: ClassVar[Answer] = OK
    """The answer when nothing is scripted."""

    def __init__(self, port: int = 0, *, record_headers: Iterable[str] = ()) -> None:
        self.port = port
        self.requests: list[Seen] = []
        self.errors: list[BaseException] = []
        """Exceptions raised by the fake's own code while answering (a bug in a test fake)."""
        self._record = tuple(dict.fromkeys((*self.record_headers, *record_headers)))
        secret = [h for h in self._record if h.lower() in SECRET_HEADERS]
        if secret:
            raise ValueError(f"{secret} values are never recorded")
        self._lock = threading.RLock()
        self._default: list[Answer] = [self.default_ok]
        self._scripts: dict[str, list[Answer]] = {}
        self._httpd: _Server | None = None
        self._stopped = threading.Event()
        self._stopped.set()
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script and records ---------------------------------------------------------------------

    def script(self: F, *answers: Answer, path: str | None = None) -> F:
        """Answer the next requests (to ``path``, an exact path or an fnmatch pattern; any path
        when None) with ``answers`` in order; the last one repeats. A path's own script wins over
        the any-path one. No answers: back to the default (or drop the path's script)."""
        with self._lock:
            if path is None:
                self._default = list(answers) or [self.default_ok]
            elif answers:
                self._scripts[path] = list(answers)
            else:
                self._scripts.pop(path, None)
        return self

    def _next(self, path: str) -> Answer:
        with self._lock:
            script = self._scripts.get(path)
            if script is None:
                script = next((s for p, s in self._scripts.items()
                               if fnmatch.fnmatchcase(path, p)), self._default)
            return script.pop(0) if len(script) > 1 else script[0]

    def seen(self, path: str | None = None, *, method: str | None = None) -> list[Seen]:
        """The requests received (to ``path``, exact or fnmatch pattern; with ``method``)."""
        with self._lock:
            return [r for r in self.requests
                    if (path is None or r.path == path or fnmatch.fnmatchcase(r.path, path))
                    and (method is None or r.method == method.upper())]

    def count(self, path: str | None = None, *, method: str | None = None) -> int:
        """How many requests were received (to ``path``; with ``method``)."""
        return len(self.seen(path, method=method))

    def clear(self) -> None:
        """Forget the recorded requests (scripts and vendor state stay)."""
        with self._lock:
            self.requests.clear()

    # -- hooks for subclasses -------------------------------------------------------------------

    def success(self, request: Incoming) -> Answer | Any:
        """The body (or a whole :class:`Answer`) for a 2xx answer scripted without a body."""
        return {"ok": True}

    def note(self, request: Incoming) -> dict[str, str]:
        """Vendor-specific fields of ``request`` to record in :attr:`Seen.notes`."""
        return {}

    def respond(self, request: Incoming, answer: Answer) -> Answer:
        """The answer actually given for the scripted ``answer`` (not called for drops)."""
        if answer.body is None and 200 <= answer.status < 300:
            rendered = self.success(request)
            if isinstance(rendered, Answer):
                return dataclasses.replace(rendered, hang=answer.hang,
                                           headers={**rendered.headers, **answer.headers})
            return dataclasses.replace(answer, body=rendered)
        return answer

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self: F) -> F:
        """Listen (again, on the same port after a stop)."""
        if self._httpd is not None:
            raise RuntimeError(f"{self.name} is already running on {self.url}")
        fake, stopped = self, threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    if stopped.is_set():
                        _close(self.connection)
                    else:
                        fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def _any(self) -> None:
                fake._handle(self, stopped)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        httpd = _Server(("127.0.0.1", self.port), Handler)
        httpd.fake = self
        self.port = httpd.server_address[1]
        with self._lock:
            self._httpd, self._stopped = httpd, stopped
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection: connects are refused until
        :meth:`start`, pooled keep-alive connections are reset, hanging answers end."""
        with self._lock:
            httpd, self._httpd = self._httpd, None
            self._stopped.set()
            connections, self._connections = self._connections, set()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        for connection in connections:
            _close(connection)

    def __enter__(self: F) -> F:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, stopped: threading.Event) -> None:
        body = _read_body(handler)
        parts = urlsplit(handler.path)
        request = Incoming(handler.command, parts.path, parts.query,
                           dict(handler.headers.items()), body)
        answer = self._next(request.path)
        with self._lock:
            if not answer.drop:
                answer = self.respond(request, answer)
            recorded = {h: v for h in self._record if (v := request.header(h)) is not None}
            self.requests.append(Seen(time.monotonic(), request.method, request.path, recorded,
                                      request.header("Authorization") is not None,
                                      0 if answer.drop else answer.status, self.note(request)))
        if answer.hang:
            stopped.wait(min(answer.hang, MAX_HANG))
        if answer.drop or stopped.is_set():
            _close(handler.connection)
            handler.close_connection = True
            return
        reply, content_type = _encode(answer.body)
        try:
            handler.send_response(answer.status)
            names = {name.lower() for name in answer.headers}
            if content_type and "content-type" not in names:
                handler.send_header("Content-Type", content_type)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            if answer.status >= 200 and answer.status not in (204, 304):
                handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            if answer.status >= 200 and answer.status not in (204, 304):
                handler.wfile.write(reply)
        except OSError:
            handler.close_connection = True  # the client gave up (timed out) first


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lower), None)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    size = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(size) if size else b""


def _encode(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, bytes):
        return body, None
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
