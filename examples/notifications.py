"""Order notifications by SMS (Twilio) and chat (Slack) that ride out rate limits and outages.

Run it with ``python examples/notifications.py`` (needs ``twilio`` and ``slack_sdk``). Stand-ins
for both vendors run on 127.0.0.1 (nothing leaves this machine); they rate-limit the first
request, then accept. Twilio's client is guarded by mounting a :class:`GuardedAdapter` on its
requests session; Slack's ``WebClient`` (urllib, no custom HTTP client) by the one-import
drop-in. Both SDKs' own retries stay off, so exactly one layer retries, after the vendor's
``Retry-After``. Then the Slack stand-in goes down: the breaker opens and later calls are
rejected at once instead of waiting on a dead vendor.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from slack_sdk.errors import SlackApiError
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient
from vendorguard.integrations.requests import GuardedAdapter, mount
from vendorguard.integrations.slack import WebClient  # was: from slack_sdk import WebClient

import vendorguard as vg

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
ACCOUNT = "AC" + "0" * 32


class StandIn(ThreadingHTTPServer):
    """Answers the first request with 429 (``Retry-After: 0.2``), then 2xx; counts accepts."""

    daemon_threads = True

    def __init__(self, accepted: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer: dict[str, Any] = accepted
        self.requests = 0
        self.accepted = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests += 1
            first = self.server.requests == 1
            if not first:
                self.server.accepted += 1
        status, body = (429, {"ok": False, "error": "ratelimited", "status": 429,
                              "code": 20429, "message": "Too Many Requests"}) if first else (
            self.server.answer["status"], self.server.answer["body"])
        data = json.dumps(body).encode()
        self.send_response(status)
        if first:
            self.send_header("Retry-After", "0.2")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def twilio_operation(method: str, host: str, path: str) -> str:
    """Operation names come from code: a fixed set, never the URL's account id."""
    if method == "POST" and path.endswith("/Messages.json"):
        return "messages.create"
    return method.lower()


def main() -> None:
    registry = CollectorRegistry()
    twilio_site = StandIn({"status": 201, "body": {
        "sid": "SM1", "account_sid": ACCOUNT, "status": "queued", "to": "+15550000001",
        "from": "+15550000002", "body": "Order 42 shipped"}})
    slack_site = StandIn({"status": 200, "body": {"ok": True, "channel": "C1", "ts": "1.000"}})

    # Twilio: its requests session gets the guarded adapter; the host names the vendor.
    http = TwilioHttpClient(timeout=5)
    mount(http.session, GuardedAdapter({"127.0.0.1": "twilio"}, operation=twilio_operation,
                                       registry=registry))
    twilio = TwilioClient(ACCOUNT, "token", http_client=http)
    twilio.api.base_url = twilio_site.url
    sms = twilio.messages.create(to="+15550000001", from_="+15550000002",
                                 body="Order 42 shipped")
    print(f"twilio: message {sms.sid} {sms.status} after {twilio_site.requests} requests")

    # Slack: the drop-in, vendor "slack".
    slack = WebClient(token="xoxb-example", base_url=slack_site.url + "/api/",
                      registry=registry, timeout=2)
    answer = slack.chat_postMessage(channel="C1", text="Order 42 shipped")
    print(f"slack: posted ts={answer['ts']} after {slack_site.requests} requests")

    slack_site.shutdown()
    slack_site.server_close()  # Slack is down: connections are refused
    outcomes = []
    for _ in range(8):
        try:
            slack.chat_postMessage(channel="C1", text="Order 43 shipped")
            outcomes.append("posted")
        except vg.CircuitOpenError:
            outcomes.append("rejected")
        except (OSError, SlackApiError) as exc:
            outcomes.append(type(exc).__name__)
    print("slack down:", ", ".join(outcomes))
    print("slack breaker:", vg.vendor("slack").circuits()["slack"].state)
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("vendorguard_calls_total", "vendorguard_retries_total")) and (
                not line.endswith(" 0.0")):
            print(line)
    twilio_site.shutdown()
    twilio_site.server_close()


if __name__ == "__main__":
    main()
