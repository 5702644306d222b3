"""Stand-ins for SendGrid, Stripe and LaunchDarkly, with the controls the timeline plays.

They speak just enough of each API for the real SDKs, and count what reached them, so the
summary can check the application's story against the vendor's side:

- :class:`FakeSendGrid`: ``POST /v3/mail/send`` answers 202 and counts each mail by subject.
  :meth:`~FakeSendGrid.hang` holds every request without answering until
  :meth:`~FakeSendGrid.recover`, then closes it: a held mail was never accepted.
- :class:`FakeStripe`: ``POST /v1/payment_intents`` creates a payment intent, once per
  ``Idempotency-Key`` (a request with a key already charged is answered the stored intent,
  ``Idempotent-Replayed: true``, as Stripe does). While :meth:`~FakeStripe.limit` is on, every
  third new payment is first answered 429 with ``Retry-After`` (its retry, having waited, gets
  through), and every seventh new payment is charged but its answer lost (the connection is
  closed): only a retry with the same key is safe then.
- :class:`FakeLaunchDarkly`: the streaming endpoint ``GET /all`` (chunked server-sent events,
  a ``put`` of every flag). :meth:`~FakeLaunchDarkly.drop` closes the open streams and holds
  reconnections until :meth:`~FakeLaunchDarkly.recover`, which serves them at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from .fakeserver import FakeServer, Handler, shut

__all__ = ["FakeLaunchDarkly", "FakeSendGrid", "FakeStripe", "flag"]

KEEPALIVE = 20.0
"""Seconds between comment lines on an idle flag stream (the SDK's read timeout is 300 s)."""


class FakeSendGrid(FakeServer):
    name = "sendgrid"

    def __init__(self) -> None:
        super().__init__()
        self.accepted: Counter[str] = Counter()
        """Times each subject was accepted (answered 202)."""
        self.held = 0
        """Requests held by a hang and never accepted."""
        self._up = threading.Event()
        self._up.set()

    def hang(self) -> None:
        self._up.clear()

    def recover(self) -> None:
        self._up.set()

    def serve(self, handler: Handler, method: str, path: str, body: bytes) -> None:
        if (method, path) != ("POST", "/v3/mail/send"):
            handler.reply(404, {"errors": [{"message": "not found"}]})
            return
        if not self._up.is_set():
            with self.lock:
                self.held += 1
            self.hold(handler, self._up)
            handler.hang_up()  # let go without accepting: the mail was not sent
            return
        try:
            subject = str(json.loads(body).get("subject", ""))
        except (ValueError, AttributeError):
            handler.reply(400, {"errors": [{"message": "invalid JSON"}]})
            return
        with self.lock:
            self.accepted[subject] += 1
            number = sum(self.accepted.values())
        handler.reply(202, b"", {"X-Message-Id": f"demo-{number}"})


class FakeStripe(FakeServer):
    name = "stripe"

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.charges: dict[str, str] = {}
        """Idempotency key -> the order it charged (from ``metadata[order]``)."""
        self.per_order: Counter[str] = Counter()
        """Charges per order: more than one would be a double charge."""
        self.requests = self.rate_limited = self.lost = self.replayed = 0
        self._limited = False
        self._answers: dict[str, bytes] = {}
        self._seen: set[str] = set()
        self._fresh = 0

    def limit(self) -> None:
        self._limited = True

    def recover(self) -> None:
        self._limited = False

    def serve(self, handler: Handler, method: str, path: str, body: bytes) -> None:
        if (method, path) != ("POST", "/v1/payment_intents"):
            handler.reply(404, _error("invalid_request_error", "Unrecognized request URL."))
            return
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        headers: dict[str, str] = {"Request-Id": f"req_{id(handler):x}"}
        with self.lock:
            self.requests += 1
            number = self.requests
            key = handler.headers.get("Idempotency-Key") or f"(no key) {number}"
            fresh = key not in self._seen
            self._seen.add(key)
            self._fresh += fresh
            if self._limited and fresh and self._fresh % 3 == 0:
                self.rate_limited += 1
                status, answer = 429, json.dumps(_error(
                    "invalid_request_error", "Too many requests.", "rate_limit")).encode()
                headers["Retry-After"] = f"{self.retry_after:g}"
            elif key in self._answers:
                self.replayed += 1
                status, answer = 200, self._answers[key]
                headers["Idempotent-Replayed"] = "true"
            else:
                status, answer = 200, self._charge(key, form, number)
                if self._limited and fresh and self._fresh % 7 == 1:
                    self.lost += 1
                    status = 0
        if status == 0:
            handler.hang_up()  # charged, but the answer never reaches the client
            return
        handler.reply(status, answer, {"Content-Type": "application/json", **headers})

    def _charge(self, key: str, form: dict[str, str], number: int) -> bytes:
        order = form.get("metadata[order]", "?")
        self.charges[key] = order
        self.per_order[order] += 1
        intent = {"id": f"pi_demo{number}", "object": "payment_intent",
                  "amount": int(form.get("amount", "0") or 0),
                  "currency": form.get("currency", "usd"), "status": "succeeded",
                  "created": int(time.time()), "livemode": False,
                  "metadata": {"order": order}}
        answer = json.dumps(intent).encode()
        self._answers[key] = answer
        return answer


def _error(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    return {"error": error}


def flag(key: str, value: Any) -> dict[str, Any]:
    """A flag serving ``value`` to everyone, in the form the SDK's evaluator accepts."""
    variations = [value, not value] if isinstance(value, bool) else [value]
    return {"key": key, "version": 1, "on": True, "variations": variations,
            "fallthrough": {"variation": 0}, "offVariation": len(variations) - 1,
            "targets": [], "contextTargets": [], "rules": [], "prerequisites": [],
            "salt": "demo", "trackEvents": False, "trackEventsFallthrough": False,
            "debugEventsUntilDate": None, "deleted": False, "clientSide": False}


class FakeLaunchDarkly(FakeServer):
    name = "launchdarkly"

    def __init__(self, flags: dict[str, Any]) -> None:
        super().__init__()
        self.flags = {key: flag(key, value) for key, value in flags.items()}
        self.connects = 0
        """Stream connections the SDK opened (reconnections included)."""
        self._up = threading.Event()
        self._up.set()
        self._streams: set[Any] = set()

    def drop(self) -> None:
        """Close every open stream and hold new ones until :meth:`recover`."""
        self._up.clear()
        with self.lock:
            streams, self._streams = self._streams, set()
        for connection in streams:
            shut(connection)

    def recover(self) -> None:
        self._up.set()

    def serve(self, handler: Handler, method: str, path: str, body: bytes) -> None:
        if (method, path) == ("GET", "/all"):
            with self.lock:
                self.connects += 1
            if self._up.is_set() or self.hold(handler, self._up):
                self._stream(handler)
            else:
                handler.hang_up()
        elif (method, path) == ("GET", "/sdk/latest-all"):
            handler.reply(200, {"flags": self.flags, "segments": {}})
        elif method == "POST" and path in ("/bulk", "/diagnostic"):
            handler.reply(202)
        else:
            handler.reply(404, b"no such path")

    def _stream(self, handler: Handler) -> None:
        # Chunked: the SDK's event reader waits for 10 kB or the end of an unchunked body.
        handler.close_connection = True
        connection = handler.connection
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            with self.lock:
                self._streams.add(connection)
            put = {"path": "/", "data": {"flags": self.flags, "segments": {}}}
            _chunk(handler, f"event: put\ndata: {json.dumps(put)}\n\n")
            beat = time.monotonic()
            while not self.stopping.wait(0.05):
                with self.lock:
                    if connection not in self._streams:
                        return  # dropped
                if time.monotonic() - beat > KEEPALIVE:
                    _chunk(handler, ":\n\n")
                    beat = time.monotonic()
        except OSError:
            pass  # the SDK hung up
        finally:
            with self.lock:
                self._streams.discard(connection)


def _chunk(handler: Handler, text: str) -> None:
    raw = text.encode()
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
    handler.wfile.flush()
