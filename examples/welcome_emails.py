"""Welcome emails that survive a SendGrid outage: the drop-in client with a durable outbox.

Run it with ``python examples/welcome_emails.py`` (needs ``sendgrid``). A stand-in for SendGrid
runs on 127.0.0.1 (nothing leaves this machine) and is down for the first sends: each send
returns a receipt instead of raising, and the mail waits in the outbox (a SQLite file in a
temporary directory). When the stand-in comes back, the outbox delivers every mail exactly once.
The only change an application makes is the import line of ``SendGridAPIClient`` and the
``outbox=`` argument.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from sendgrid.helpers.mail import Mail
from vendorguard.integrations.sendgrid import SendGridAPIClient  # was: from sendgrid import ...

import vendorguard as vg

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
USERS = ["ada", "grace", "alan", "edsger", "barbara"]


class StandInSendGrid(ThreadingHTTPServer):
    """Answers ``POST /v3/mail/send`` with 202 and counts the subjects it accepted. Bound but
    not listening until :meth:`recover`: until then connections are refused (an outage)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        self.server_bind()  # the port is ours, but nothing listens: connections are refused
        self.accepted: dict[str, int] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def recover(self) -> None:
        self.server_activate()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandInSendGrid

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        subject = json.loads(body).get("subject", "?")
        with self.server.lock:
            self.server.accepted[subject] = self.server.accepted.get(subject, 0) + 1
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


def welcome(user: str) -> Mail:
    return Mail(from_email="hello@example.com", to_emails=f"{user}@example.org",
                subject=f"Welcome, {user}!", plain_text_content="Glad to have you aboard.")


def main() -> None:
    registry = CollectorRegistry()
    # A small policy so the example runs in about a second (the drop-in's own is larger).
    vg.Vendor("sendgrid", timeout=vg.Timeout(attempt=1.0, total=3.0),
              retry=vg.Retry(attempts=2, backoff=vg.Backoff(initial=0.05, maximum=0.1)),
              breaker=vg.Breaker(failures=3, reset_after=0.2), registry=registry)
    sendgrid = StandInSendGrid()
    with tempfile.TemporaryDirectory(prefix="welcome-emails-") as tmp:
        path = Path(tmp) / "outbox.db"
        print(f"outbox: {path}")
        with vg.Outbox(path, backoff=0.1, registry=registry) as outbox:
            client = SendGridAPIClient("SG.example-key", host=sendgrid.url, outbox=outbox,
                                       registry=registry)
            print("SendGrid is down:")
            for user in USERS:
                started = time.monotonic()
                receipt = client.send(welcome(user))
                took = time.monotonic() - started
                print(f"  welcome {user:<8} -> queued as #{receipt.id} ({took * 1000:.0f} ms)")
            print(f"pending in the outbox: {len(outbox.pending())}")

            print("SendGrid is back: the outbox delivers")
            sendgrid.recover()
            outbox.start(interval=0.05)
            deadline = time.monotonic() + 10.0
            while outbox.pending() and time.monotonic() < deadline:
                time.sleep(0.05)
            outbox.stop()
            for subject, times in sorted(sendgrid.accepted.items()):
                print(f"  delivered {subject!r} x{times}")
            print(f"pending: {len(outbox.pending())}, dead letters: {len(outbox.dead())}, "
                  f"delivered: {sum(sendgrid.accepted.values())}")
        sendgrid.shutdown()
        sendgrid.server_close()

    print("metrics:")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("vendorguard_calls_total", "vendorguard_fallbacks_total",
                            "vendorguard_outbox_delivered_total")) and not line.endswith(" 0.0"):
            print(f"  {line}")
    print(f"outbox removed: {not path.exists()}")


if __name__ == "__main__":
    socket.setdefaulttimeout(10.0)  # a bound for anything the example forgets to bound
    main()
