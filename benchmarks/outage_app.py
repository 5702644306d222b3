"""The app and the fake SendGrid that ``benchmarks/outage.py`` runs; not meant to be used alone.

``create_app()`` is the WSGI app that gunicorn serves (``outage_app:create_app()``). Its handler,
``POST /signup`` with ``id=<n>``, evaluates a LaunchDarkly flag (``TestData``, in memory) and sends
a welcome email through the real SendGrid SDK; the environment variable ``OUTAGE_SETUP`` picks
how the send is made, everything else is identical:

- ``raw``: ``sendgrid.SendGridAPIClient`` with ``client.timeout = 10`` (the SDK has none).
- ``naive``: the same client, each send through ``pybreaker.CircuitBreaker(fail_max=5,
  reset_timeout=30).call`` inside tenacity's ``@retry(stop_after_attempt(3),
  wait_exponential(multiplier=0.2, max=2))``. ``CircuitBreaker.call`` holds the breaker's lock
  for the whole call, so one worker process makes one send at a time.
- ``vendorguard``: the drop-in ``vendorguard.integrations.sendgrid.SendGridAPIClient`` with an
  attempt timeout (``OUTAGE_ATTEMPT``, default 1 s), no inline retry, ``Breaker(failures=5,
  reset_after=30)`` and a ``vg.Outbox`` (SQLite in ``OUTAGE_OUTBOX``) as its fallback, with
  ``at_least_once=True`` (``OUTAGE_AT_LEAST_ONCE=0`` to leave it off): a read timeout is kept for
  redelivery too, at the price of a possible duplicate.

The answer is 200 when the mail was sent, 202 when the outbox kept it, 500 when the send failed;
the header ``X-Handler-Ms`` is the handler's own time (flag and send, no queueing). ``GET
/_state`` reports the outbox (``vendorguard``); every worker appends its breaker's transitions
(wall-clock time, state, pid) to ``transitions.log`` in ``OUTAGE_OUTBOX``.

``python outage_app.py fake`` runs the fake SendGrid: a ``ThreadingHTTPServer`` on 127.0.0.1
that answers ``POST /v3/mail/send`` with 202 and records the mail's ``custom_args.request_id``.
It prints its port, then obeys one command per line on stdin and answers one line on stdout:
``mode healthy|hang|refuse``, ``stats`` (JSON), ``quit``. In ``hang`` it reads the
request and never answers (nothing is recorded); leaving ``hang`` closes those connections
without an answer. In ``refuse`` the listening socket is closed (connections are refused) and
``healthy`` opens it again on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

API_KEY = "SG.bench-key"
FLAG = "welcome-email"

# -- the fake SendGrid ---------------------------------------------------------------------------


class _Mail(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake = self.server.fake
        released = fake.hang_until()
        if released is not None:  # hanging: hold the request, answer nothing
            released.wait()
            self.close_connection = True
            return
        try:
            request_id = json.loads(body)["custom_args"]["request_id"]
        except (ValueError, KeyError, TypeError):
            request_id = None
        fake.record(request_id)
        self.send_response(202)
        self.send_header("X-Message-Id", uuid.uuid4().hex)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, fake: FakeSendGrid) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", port), _Mail)


class FakeSendGrid:
    """A local SendGrid whose availability can be switched (healthy, hang, refuse)."""

    def __init__(self) -> None:
        self.mode = "healthy"
        self._lock = threading.Lock()
        self._received: list[str | None] = []
        self._released: threading.Event | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    def _listen(self) -> None:
        self._server = _Server(self.port, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hang_until(self) -> threading.Event | None:
        return self._released

    def record(self, request_id: str | None) -> None:
        with self._lock:
            self._received.append(request_id)

    def switch(self, mode: str) -> None:
        if mode not in ("healthy", "hang", "refuse"):
            raise ValueError(mode)
        if self._released is not None and mode != "hang":
            self._released.set()  # held requests end without an answer
            self._released = None
        if mode == "hang" and self._released is None:
            self._released = threading.Event()
        if mode == "refuse":
            self._close()
        elif self._server is None:
            self._listen()
        self.mode = mode

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"received": list(self._received)}

    def close(self) -> None:
        self.switch("refuse")


def fake_main(lines: Iterable[str]) -> None:
    fake = FakeSendGrid()
    print(f"port {fake.port}", flush=True)
    for line in lines:
        command, _, argument = line.strip().partition(" ")
        if command == "mode":
            fake.switch(argument)
            print("ok", flush=True)
        elif command == "stats":
            print(json.dumps(fake.stats()), flush=True)
        elif command == "quit":
            break
    fake.close()


# -- the app -------------------------------------------------------------------------------------


class _Transitions:
    """Appends breaker transitions to a file that every worker shares, for the driver."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "transitions.log")

    def add(self, state: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.time()} {state} {os.getpid()}\n")


def _raw_sender(url: str) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    import sendgrid

    sg = sendgrid.SendGridAPIClient(API_KEY, host=url)
    sg.client.timeout = 10
    return sg.send, {}


def _naive_sender(url: str, transitions: _Transitions) -> tuple[Callable[[Any], Any],
                                                                 dict[str, Any]]:
    import pybreaker
    import sendgrid
    from tenacity import retry, stop_after_attempt, wait_exponential

    sg = sendgrid.SendGridAPIClient(API_KEY, host=url)
    sg.client.timeout = 10

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            transitions.add(new_state.name)

    reset_after = float(os.environ.get("OUTAGE_RESET_AFTER", "30"))
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=reset_after,
                                       listeners=[Listener()])

    @retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.2, max=2),
           reraise=True)
    def send(mail: Any) -> Any:
        return breaker.call(sg.send, mail)

    return send, {}


def _vendorguard_sender(url: str, transitions: _Transitions
                        ) -> tuple[Callable[[Any], Any], dict[str, Any]]:
    from vendorguard.integrations.sendgrid import SendGridAPIClient

    import vendorguard as vg
    from vendorguard.events import CircuitStateChanged

    attempt = float(os.environ.get("OUTAGE_ATTEMPT", "1.0"))
    reset_after = float(os.environ.get("OUTAGE_RESET_AFTER", "30"))
    vendor = vg.Vendor("sendgrid", timeout=vg.Timeout(attempt=attempt), retry=None,
                       breaker=vg.Breaker(failures=5, reset_after=reset_after))

    def observe(event: Any) -> None:
        if isinstance(event, CircuitStateChanged) and event.vendor == "sendgrid":
            transitions.add(event.to_state)

    vg.add_observer(observe)
    outbox = vg.Outbox(os.path.join(os.environ["OUTAGE_OUTBOX"], "outbox.db"), backoff=0.5,
                       max_backoff=5.0)
    sg = SendGridAPIClient(API_KEY, host=url, outbox=outbox,
                           at_least_once=os.environ.get("OUTAGE_AT_LEAST_ONCE", "1") == "1")
    outbox.start(interval=0.5)
    return sg.send, {"outbox": outbox, "vendor": vendor}


def create_app() -> Callable[..., Iterable[bytes]]:
    """The WSGI app for the setup named by ``OUTAGE_SETUP``."""
    import ldclient
    from ldclient import Context
    from ldclient.config import Config
    from ldclient.integrations.test_data import TestData
    from sendgrid.helpers.mail import CustomArg, Mail

    setup = os.environ.get("OUTAGE_SETUP", "raw")
    url = os.environ["OUTAGE_SENDGRID_URL"]
    folder = os.environ.get("OUTAGE_OUTBOX") or tempfile.mkdtemp(prefix="outage-")
    os.environ["OUTAGE_OUTBOX"] = folder
    transitions = _Transitions(folder)
    if setup == "raw":
        send, extra = _raw_sender(url)
    elif setup == "naive":
        send, extra = _naive_sender(url, transitions)
    elif setup == "vendorguard":
        send, extra = _vendorguard_sender(url, transitions)
    else:
        raise SystemExit(f"unknown OUTAGE_SETUP {setup!r}")

    data = TestData.data_source()
    data.update(data.flag(FLAG).variation_for_all(True))
    flags = ldclient.LDClient(Config("sdk-bench", update_processor_class=data,
                                     send_events=False, diagnostic_opt_out=True))

    def signup(request_id: str) -> tuple[str, bytes]:
        if not flags.variation(FLAG, Context.create(f"user-{request_id}"), False):
            return "204 No Content", b""
        mail = Mail(from_email="hello@example.com", to_emails=f"u{request_id}@example.com",
                    subject="Welcome aboard", plain_text_content="Thanks for signing up.")
        mail.custom_arg = CustomArg("request_id", request_id)
        try:
            result = send(mail)
        except Exception as exc:
            return "500 Internal Server Error", type(exc).__name__.encode()
        if getattr(result, "status_code", None) == 202:
            return "200 OK", b"sent"
        return "202 Accepted", b"queued"

    def state() -> bytes:
        report: dict[str, Any] = {"setup": setup}
        outbox = extra.get("outbox")
        if outbox is not None:  # counted on a connection of its own: the outbox's lock is left
            with contextlib.closing(sqlite3.connect(f"file:{outbox.path}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                counts = dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"))
            report["pending"] = counts.get("pending", 0)
            report["dead"] = counts.get("dead", 0)
            report["circuit"] = extra["vendor"].state
        return json.dumps(report).encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        start = time.perf_counter()
        if path == "/signup":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            form = parse_qs(environ["wsgi.input"].read(length).decode())
            status, body = signup(form.get("id", ["?"])[0])
        elif path == "/_state":
            status, body = "200 OK", state()
        else:
            status, body = "404 Not Found", b""
        took = (time.perf_counter() - start) * 1000
        start_response(status, [("Content-Type", "text/plain"),
                                ("Content-Length", str(len(body))),
                                ("X-Handler-Ms", f"{took:.3f}")])
        return [body]

    return app


if __name__ == "__main__":
    if sys.argv[1:] == ["fake"]:
        fake_main(sys.stdin)
    else:
        raise SystemExit("usage: outage_app.py fake")
