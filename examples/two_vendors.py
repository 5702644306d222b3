"""An app that calls two vendors and guards only one: run it under ``vendorguard discover``.

    vendorguard discover -- python examples/two_vendors.py

Two stand-in vendors run on 127.0.0.1 (nothing leaves this machine): "billing" on 127.0.0.1
and "geo" reached as localhost. The app guards its billing calls with vendorguard but calls the
geo service with plain requests, as code written before anyone thought about it would. Discovery
lists both hosts and marks localhost unguarded.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

import vendorguard as vg

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def stand_in() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


def main() -> None:
    billing_site, geo_site = stand_in(), stand_in()
    billing = vg.Vendor("billing", timeout=vg.Timeout(attempt=2.0))
    session = requests.Session()

    @billing.guard("invoices.get")
    def invoice(number: int) -> Any:
        url = f"http://127.0.0.1:{billing_site.server_address[1]}/invoices/{number}"
        return session.get(url, timeout=2).json()

    def locate(ip: str) -> Any:  # nobody guarded this one
        return session.get(f"http://localhost:{geo_site.server_address[1]}/geo/{ip}",
                           timeout=2).json()

    for number in range(3):
        invoice(number)
    for ip in ("192.0.2.1", "192.0.2.2"):
        locate(ip)
    print("app: 3 invoices, 2 lookups")
    for site in (billing_site, geo_site):
        site.shutdown()
        site.server_close()


if __name__ == "__main__":
    main()
