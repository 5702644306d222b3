"""A fake Twilio REST API (Messages) on 127.0.0.1 for tests that run the real ``twilio`` SDK.

Built on fakehttp.py (stdlib only, daemon threads, bounded waits). Wire format from
research/vendors.md section 4: HTTP Basic auth, form-encoded ``To``/``From``/``Body``, 201 JSON
message answers, errors in Twilio's legacy JSON form (``{"code", "message", "more_info",
"status"}``, which the SDK raises as ``TwilioRestException`` with ``code`` = the Twilio code).

    fake = FakeTwilio().start()
    client = Client("AC" + "0" * 32, "token", http_client=TwilioHttpClient(timeout=5))
    client.api.base_url = fake.url         # only the api.twilio.com domain
    fake.script(rate_limited(2), OK)       # answers in order, the last one repeats
    fake.accepted()                        # messages the fake accepted
    fake.count(MESSAGES, method="POST")    # requests to any account's Messages.json
    fake.stop(); fake.start()              # an outage on the same port

Served when the script says succeed (``OK``, or ``hang(seconds)``):
    POST /2010-04-01/Accounts/{sid}/Messages.json        201, a queued message ("SM...")
    GET  /2010-04-01/Accounts/{sid}/Messages/{SM}.json   200, a message the fake accepted
Anything else answers 404 (code 20404); a POST without ``To`` answers 400 (code 21604).

Answers: ``OK`` (201), ``BAD_TO`` (400, 21211), ``UNAUTHORIZED`` (401, 20003),
``rate_limited(retry_after)`` (429, 20429, ``Retry-After`` when given), ``SERVER_ERROR`` (500,
20500), ``UNAVAILABLE`` (503, 20503), ``hang(seconds)``, ``DROP``; ``error()`` builds others.
Every answer carries a ``Twilio-Request-Id``. Note the SDK's exception carries no headers: a
``Retry-After`` is visible only on ``client.http_client._test_only_last_response``.

Twilio has no idempotency key for messages: every accepted POST is one more SMS. A ``hang``
accepts the message *before* hanging (the ambiguous case: the client times out, the SMS is sent).
Recorded per request: method, path, whether Authorization was present, the status answered;
never the body (numbers, text) or the credentials.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

from tests.integrations.fakehttp import (
    DROP,
    MAX_HANG,
    Answer,
    FakeVendor,
    Incoming,
    free_port,
    refused_url,
    retry_after_header,
)
from tests.integrations.fakehttp import hang as _hang

__all__ = [
    "BAD_TO", "DROP", "MAX_HANG", "MESSAGES", "OK", "SERVER_ERROR", "UNAUTHORIZED",
    "UNAVAILABLE", "Answer", "FakeTwilio", "error", "free_port", "hang", "rate_limited",
    "refused_url",
]

API_VERSION = "2010-04-01"
MESSAGES = f"/{API_VERSION}/Accounts/*/Messages.json"
"""An fnmatch pattern for the Messages list of any account (for ``script``/``count``)."""
_MESSAGES = re.compile(rf"/{API_VERSION}/Accounts/(AC\w+)/Messages\.json")
_MESSAGE = re.compile(rf"/{API_VERSION}/Accounts/(AC\w+)/Messages/(SM\w+)\.json")


def error(status: int, code: int, message: str, *,
          headers: dict[str, str] | None = None) -> Answer:
    """A Twilio error answer in the legacy JSON form."""
    return Answer(status, headers=dict(headers or {}), body={
        "code": code, "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status})


OK = Answer(201)
BAD_TO = error(400, 21211, "Invalid 'To' Phone Number")
UNAUTHORIZED = error(401, 20003, "Authenticate")
SERVER_ERROR = error(500, 20500, "Internal Server Error")
UNAVAILABLE = error(503, 20503, "Service Unavailable")


def rate_limited(retry_after: float | None = None) -> Answer:
    """429 with Twilio code 20429, and ``Retry-After`` when given."""
    return error(429, 20429, "Too Many Requests", headers=retry_after_header(retry_after))


def hang(seconds: float, then: Answer = OK) -> Answer:
    """``then`` (default: accepted) after ``seconds``, at most MAX_HANG; stop ends it early."""
    return _hang(seconds, then)


class FakeTwilio(FakeVendor):
    """A fake Twilio Messages API; see the module docstring."""

    name = "fake-twilio"
    default_ok = OK

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self._accepted: dict[str, str] = {}  # message sid -> account sid
        self._requests = 0

    def accepted(self) -> int:
        """Messages the fake accepted (SMS that would have been sent)."""
        with self._lock:
            return len(self._accepted)

    def respond(self, request: Incoming, answer: Answer) -> Answer:
        self._requests += 1
        answer = super().respond(request, answer)
        if not any(name.lower() == "twilio-request-id" for name in answer.headers):
            answer = replace(answer, headers={**answer.headers,
                                              "Twilio-Request-Id": f"RQ{self._requests:032x}"})
        return answer

    def success(self, request: Incoming) -> Answer | Any:
        if (m := _MESSAGES.fullmatch(request.path)) and request.method == "POST":
            form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace"),
                                                  keep_blank_values=True).items()}
            if not form.get("To"):
                return error(400, 21604, "A 'To' phone number is required.")
            sid = f"SM{len(self._accepted) + 1:032x}"
            self._accepted[sid] = m.group(1)
            return _message(m.group(1), sid, "queued", form)
        if ((m := _MESSAGE.fullmatch(request.path)) and request.method == "GET"
                and self._accepted.get(m.group(2)) == m.group(1)):
            return Answer(200, body=_message(m.group(1), m.group(2), "sent", {}))
        return error(404, 20404, f"The requested resource {request.path} was not found")


def _message(account: str, sid: str, status: str, form: dict[str, str]) -> dict[str, Any]:
    now = email.utils.formatdate(usegmt=True).replace("GMT", "+0000")
    uri = f"/{API_VERSION}/Accounts/{account}/Messages/{sid}.json"
    return {
        "sid": sid, "account_sid": account, "api_version": API_VERSION, "status": status,
        "to": form.get("To"), "from": form.get("From"), "body": form.get("Body"),
        "messaging_service_sid": form.get("MessagingServiceSid"), "direction": "outbound-api",
        "num_segments": "1", "num_media": "0", "price": None, "price_unit": "USD",
        "error_code": None, "error_message": None, "date_created": now, "date_updated": now,
        "date_sent": None, "uri": uri,
        "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
    }
