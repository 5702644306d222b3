"""A fake SendGrid v3 mail send on 127.0.0.1 for tests that run the real SDK against it.

Adapted from research/vendor-probes/fakeserver.py. Stdlib only; every thread is a daemon and
every wait is bounded, so a forgotten fake cannot hang the test run.

    fake = FakeSendGrid().start()
    SendGridAPIClient("SG.test", host=fake.url)
    fake.script(rate_limited(reset_in=1), OK)   # answers in order, the last one repeats
    fake.count("welcome-1")                     # requests that carried that subject
    fake.stop(); fake.start()                   # an outage on the same port

Answers: ``OK`` (202 + X-Message-Id), ``BAD_REQUEST`` (400), ``UNAUTHORIZED`` (401),
``FORBIDDEN`` (403), ``TOO_LARGE`` (413), ``rate_limited(reset_in)`` (429 with the
``X-RateLimit-*`` headers, the reset computed when answering), ``SERVER_ERROR`` (500),
``UNAVAILABLE`` (503), ``hang(seconds)`` (202 after sleeping, bounded by :data:`MAX_HANG` and by
stop), ``DROP`` (read the request, close the connection without answering). Only each
request's subject and size are recorded, never its body or headers (they hold addresses and
the API key).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/v3/mail/send"
MAX_HANG = 10.0
"""Longest a ``hang`` answer sleeps (seconds)."""
ERRORS = {"errors": [{"message": "fake error", "field": None, "help": None}]}


@dataclass(frozen=True)
class Answer:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    drop: bool = False
    reset_in: float | None = None
    """For 429: X-RateLimit-Reset = the epoch second at least this far ahead of the answer."""


@dataclass(frozen=True)
class Seen:
    """One request the fake received: when, the mail's subject, what it answered."""

    at: float
    wall: float
    subject: str | None
    size: int
    authorized: bool
    status: int
    headers: dict[str, str]


OK = Answer(202)
BAD_REQUEST = Answer(400)
UNAUTHORIZED = Answer(401)
FORBIDDEN = Answer(403)
TOO_LARGE = Answer(413)
SERVER_ERROR = Answer(500)
UNAVAILABLE = Answer(503)
DROP = Answer(drop=True)


def rate_limited(reset_in: float) -> Answer:
    return Answer(429, {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0"},
                  reset_in=reset_in)


def hang(seconds: float) -> Answer:
    return Answer(202, hang=min(seconds, MAX_HANG))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are the point of several tests


class FakeSendGrid:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.requests: list[Seen] = []
        self._script: list[Answer] = [OK]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._message_ids = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script and records ---------------------------------------------------------------------

    def script(self, *answers: Answer) -> FakeSendGrid:
        """Answer the next requests with ``answers`` in order; the last one repeats."""
        with self._lock:
            self._script = list(answers) or [OK]
        return self

    def _next(self) -> Answer:
        with self._lock:
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def count(self, subject: str | None = None) -> int:
        """Requests received (with that subject, when given)."""
        with self._lock:
            return sum(1 for r in self.requests if subject is None or r.subject == subject)

    def subjects(self) -> Counter[str | None]:
        with self._lock:
            return Counter(r.subject for r in self.requests)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeSendGrid:
        """Listen (again, on the same port after a stop)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                fake._answer(self, body)

        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         name="fake-sendgrid", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until :meth:`start`."""
        self._stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> FakeSendGrid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering ------------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        answer = self._next() if handler.path == PATH else Answer(404)
        headers = dict(answer.headers)
        if answer.reset_in is not None:
            headers["X-RateLimit-Reset"] = str(math.ceil(time.time() + answer.reset_in))
        if answer.status == 202 and not answer.drop:
            with self._lock:
                self._message_ids += 1
                headers["X-Message-Id"] = f"fake-{self._message_ids}"
        with self._lock:
            self.requests.append(Seen(time.monotonic(), time.time(), _subject(body), len(body),
                                      handler.headers.get("Authorization", "").startswith(
                                          "Bearer "),
                                      0 if answer.drop else answer.status, headers))
        if answer.hang:
            end = time.monotonic() + answer.hang
            while time.monotonic() < end and not self._stopping.is_set():
                time.sleep(0.02)
        if answer.drop:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        reply = b"" if answer.status == 202 else json.dumps(ERRORS).encode()
        try:
            handler.send_response(answer.status)
            for name, value in headers.items():
                handler.send_header(name, value)
            if reply:
                handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply)
        except OSError:
            handler.close_connection = True  # the client gave up (timed out) first


def _subject(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("subject")
    except (ValueError, AttributeError):
        return None
    return None if value is None else str(value)


@contextlib.contextmanager
def unaccepting(backlog_fillers: int = 4) -> Any:
    """A loopback URL whose listen backlog is full: connects time out (nothing is sent)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(backlog_fillers):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
