"""A fake Slack Web API on 127.0.0.1 for tests that run the real ``slack_sdk`` WebClient.

Built on fakehttp.py (stdlib only, daemon threads, bounded waits). Wire format from
research/vendors.md section 5: ``POST {base_url}chat.postMessage`` with a Bearer token and a
JSON (or form) body; answers are JSON with ``ok``; most errors are HTTP 200 with ``ok: false``
(the SDK raises ``SlackApiError``; ``e.response["error"]``, ``e.response.headers``).

    fake = FakeSlack().start()
    client = WebClient(token="xoxb-test", base_url=fake.url + "/api/", retry_handlers=[])
    fake.script(rate_limited(1), OK)         # answers in order, the last one repeats
    fake.posted()                            # messages the fake posted
    fake.count(POST_MESSAGE)                 # requests to chat.postMessage
    fake.stop(); fake.start()                # an outage on the same port

Served when the script says succeed (``OK``, or ``hang(seconds)``):
    POST /api/chat.postMessage   200 ``{"ok": true, "channel", "ts", "message"}``
                                 (``channel_not_found`` when the body names no channel)
    POST /api/auth.test          200 ``{"ok": true, "team_id", "user_id", "bot_id", ...}``
    POST /api/api.test           200 ``{"ok": true}``
Any other method answers 404 ``{"ok": false, "error": "unknown_method"}``.

Answers: ``OK``, ``CHANNEL_NOT_FOUND`` and ``INVALID_AUTH`` (200, ``ok: false``),
``not_ok(error, status=200)`` for others, ``rate_limited(retry_after)`` (429, ``Retry-After``
when given, error ``ratelimited``), ``SERVER_ERROR`` (500), ``UNAVAILABLE`` (503),
``hang(seconds)``, ``DROP``. Every answer carries an ``X-Slack-Req-Id``.

Slack has no idempotency key: every posted message is one more message. A ``hang`` posts
*before* hanging (the client times out, the message is in the channel). Note the SDK's default
``ConnectionErrorRetryHandler`` re-sends after a dropped connection (a duplicate post): pass
``retry_handlers=[]`` to see one request per call. Recorded per request: method, path, whether
Authorization was present, the status answered; never the body or the token.
"""

from __future__ import annotations

import time
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
    "CHANNEL_NOT_FOUND", "DROP", "INVALID_AUTH", "MAX_HANG", "OK", "POST_MESSAGE",
    "SERVER_ERROR", "UNAVAILABLE", "Answer", "FakeSlack", "free_port", "hang", "not_ok",
    "rate_limited", "refused_url",
]

POST_MESSAGE = "/api/chat.postMessage"


def not_ok(error: str, status: int = 200, *, headers: dict[str, str] | None = None) -> Answer:
    """A Slack error answer: ``{"ok": false, "error": error}``."""
    return Answer(status, headers=dict(headers or {}), body={"ok": False, "error": error})


OK = Answer(200)
CHANNEL_NOT_FOUND = not_ok("channel_not_found")
INVALID_AUTH = not_ok("invalid_auth")
SERVER_ERROR = not_ok("fatal_error", 500)
UNAVAILABLE = not_ok("service_unavailable", 503)


def rate_limited(retry_after: float | None = None) -> Answer:
    """429 ``ratelimited``, with ``Retry-After`` (seconds) when given."""
    return not_ok("ratelimited", 429, headers=retry_after_header(retry_after))


def hang(seconds: float, then: Answer = OK) -> Answer:
    """``then`` (default: posted) after ``seconds``, at most MAX_HANG; stop ends it early."""
    return _hang(seconds, then)


class FakeSlack(FakeVendor):
    """A fake Slack Web API; see the module docstring."""

    name = "fake-slack"
    default_ok = OK

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self._posted = 0
        self._requests = 0

    def posted(self) -> int:
        """Messages the fake posted (answered ``ok: true`` on chat.postMessage)."""
        with self._lock:
            return self._posted

    def respond(self, request: Incoming, answer: Answer) -> Answer:
        self._requests += 1
        answer = super().respond(request, answer)
        if not any(name.lower() == "x-slack-req-id" for name in answer.headers):
            answer = replace(answer, headers={**answer.headers,
                                              "X-Slack-Req-Id": f"fake{self._requests:08x}"})
        return answer

    def success(self, request: Incoming) -> Answer | Any:
        if request.path == POST_MESSAGE:
            fields = _fields(request)
            channel = fields.get("channel")
            if not channel:
                return CHANNEL_NOT_FOUND
            self._posted += 1
            ts = f"{int(time.time())}.{self._posted:06d}"
            message = {"type": "message", "ts": ts, "bot_id": "B0FAKE", "user": "U0FAKE"}
            if isinstance(fields.get("text"), str):
                message["text"] = fields["text"]
            return {"ok": True, "channel": channel, "ts": ts, "message": message}
        if request.path == "/api/auth.test":
            return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake",
                    "user": "fakebot", "team_id": "T0FAKE", "user_id": "U0FAKE",
                    "bot_id": "B0FAKE", "is_enterprise_install": False}
        if request.path == "/api/api.test":
            return {"ok": True}
        return not_ok("unknown_method", 404)


def _fields(request: Incoming) -> dict[str, Any]:
    """The JSON object or form fields of the body."""
    data = request.json()
    if isinstance(data, dict):
        return data
    form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in form.items()}
