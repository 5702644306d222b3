"""A fake Stripe v1 API on 127.0.0.1 for tests that run the real ``stripe`` SDK against it.

Built on fakehttp.py (stdlib only, daemon threads, bounded waits). Wire format from
research/vendors.md section 3: form-encoded requests, JSON answers whose ``object`` picks the
SDK class, errors as ``{"error": {"type", "code", "message", ...}}``.

    fake = FakeStripe().start()
    client = stripe.StripeClient("sk_test_x", base_addresses={"api": fake.url},
                                 max_network_retries=0)    # or: stripe.api_base = fake.url
    fake.script(rate_limited(2), OK)        # answers in order, the last one repeats
    fake.script(CARD_DECLINED, path="/v1/payment_intents/*/confirm")   # per-path script
    fake.keys(PAYMENT_INTENTS)              # Idempotency-Key of each request, in order
    fake.charges(), fake.created()          # "charges" by distinct key; intents created
    fake.stop(); fake.start()               # an outage on the same port

Served when the script says succeed (``OK``, or ``hang(seconds)``):
    POST   /v1/payment_intents                      create (``amount`` required)
    GET    /v1/payment_intents                      list (``{"object": "list", ...}``)
    GET    /v1/payment_intents/{id}                 retrieve
    POST   /v1/payment_intents/{id}                 update
    POST   /v1/payment_intents/{id}/confirm         status "succeeded"
    POST   /v1/payment_intents/{id}/capture         status "succeeded"
    POST   /v1/payment_intents/{id}/cancel          status "canceled"
    POST   /v1/customers, GET|POST|DELETE /v1/customers/{id}, GET /v1/customers
    POST   /v1/refunds, GET /v1/refunds/{id}
Anything else answers 404 ``resource_missing``. Unknown ids are lenient: a retrieve or confirm of
an id the fake never created answers a stand-in object (amount 1000) instead of a 404.

Answers: ``OK``, ``CARD_DECLINED`` (402), ``BAD_REQUEST`` (400), ``UNAUTHORIZED`` (401),
``IDEMPOTENCY_ERROR`` (400), ``rate_limited(retry_after)`` (429, ``Retry-After`` when given),
``CONFLICT`` (409 ``lock_timeout``), ``SERVER_ERROR`` (500), ``SERVER_ERROR_NO_RETRY`` (500 with
``Stripe-Should-Retry: false``), ``UNAVAILABLE`` (503), ``hang(seconds)``, ``DROP``; ``error()``
builds others. Every answer carries a fresh ``Request-Id`` (``e.request_id`` in the SDK) and,
for a POST with one, the ``Idempotency-Key`` it used.

Idempotency, like Stripe: a POST whose ``Idempotency-Key`` already got a 2xx is answered the
stored response again, with ``Idempotent-Replayed: true`` and ``Original-Request``, and creates
nothing; the same key with other parameters answers ``idempotency_error``. This only applies when
the script says succeed: a scripted error (500, 429, DROP...) is served as it is and not stored
(real Stripe also replays stored errors such as 500s; the fake does not, so that retry tests can
script "fail, then succeed"). A ``hang`` creates the object *before* hanging, as when Stripe did
the work and the answer was lost: the client times out, and a retry with the same key replays.

Recorded per request: method, path, ``Idempotency-Key``, whether Authorization was present, the
status answered, and the ``amount`` form field (``seen.notes.get("amount")``); nothing else of
the body, never the API key.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import dataclass, replace
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
    "BAD_REQUEST", "CARD_DECLINED", "CONFLICT", "DROP", "IDEMPOTENCY_ERROR", "MAX_HANG", "OK",
    "PAYMENT_INTENTS", "SERVER_ERROR", "SERVER_ERROR_NO_RETRY", "UNAUTHORIZED", "UNAVAILABLE",
    "Answer", "FakeStripe", "error", "free_port", "hang", "not_found", "rate_limited",
    "refused_url",
]

PAYMENT_INTENTS = "/v1/payment_intents"
DEFAULT_AMOUNT = 1000


def error(status: int, type_: str, message: str, *, code: str | None = None,
          headers: dict[str, str] | None = None, **fields: Any) -> Answer:
    """A Stripe error answer: ``{"error": {"type", "message", "code"?, **fields}}``."""
    body: dict[str, Any] = {"type": type_, "message": message}
    if code is not None:
        body["code"] = code
    body.update(fields)
    return Answer(status, headers=dict(headers or {}), body={"error": body})


OK = Answer(200)
CARD_DECLINED = error(402, "card_error", "Your card was declined.", code="card_declined",
                      decline_code="generic_decline", param=None)
BAD_REQUEST = error(400, "invalid_request_error", "Missing required param: amount.",
                    code="parameter_missing", param="amount")
UNAUTHORIZED = error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****")
IDEMPOTENCY_ERROR = error(400, "idempotency_error",
                          "Keys for idempotent requests can only be used with the same "
                          "parameters they were first used with.")
CONFLICT = error(409, "invalid_request_error",
                 "This object cannot be accessed right now because another API request or "
                 "Stripe process is currently accessing it.", code="lock_timeout")
SERVER_ERROR = error(500, "api_error", "An unknown error occurred.")
SERVER_ERROR_NO_RETRY = error(500, "api_error", "An unknown error occurred.",
                              headers={"Stripe-Should-Retry": "false"})
UNAVAILABLE = error(503, "api_error", "Stripe is temporarily unavailable.")


def rate_limited(retry_after: float | None = None) -> Answer:
    """429 (the SDK raises ``RateLimitError``), with ``Retry-After`` when given."""
    return error(429, "invalid_request_error",
                 "Too many requests hit the API too quickly.", code="rate_limit",
                 headers=retry_after_header(retry_after))


def hang(seconds: float, then: Answer = OK) -> Answer:
    """``then`` (default: success) after ``seconds``, at most MAX_HANG; stop ends it early."""
    return _hang(seconds, then)


def not_found(message: str) -> Answer:
    return error(404, "invalid_request_error", message, code="resource_missing")


@dataclass(frozen=True)
class _Stored:
    fingerprint: str
    status: int
    body: Any
    request_id: str


_ID = r"([A-Za-z0-9_]+)"


class FakeStripe(FakeVendor):
    """A fake Stripe API; see the module docstring."""

    record_headers = ("Idempotency-Key",)
    name = "fake-stripe"
    default_ok = OK

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self._ids: dict[str, int] = {}
        self._intents: dict[str, dict[str, Any]] = {}
        self._customers: dict[str, dict[str, Any]] = {}
        self._refunds: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, _Stored] = {}
        self._created = 0

    # -- what tests ask -------------------------------------------------------------------------

    def keys(self, path: str | None = None, *, method: str | None = None) -> list[str | None]:
        """The ``Idempotency-Key`` of each request (to ``path``), in order; None if absent."""
        return [seen.header("Idempotency-Key") for seen in self.seen(path, method=method)]

    def charges(self) -> int:
        """Distinct charges: distinct idempotency keys among ``POST /v1/payment_intents``
        answered 200 (each such request without a key counts on its own). More charges than
        the app meant to make is a duplicate charge."""
        keys = [s.header("Idempotency-Key") for s in self.seen(PAYMENT_INTENTS, method="POST")
                if s.status == 200]
        return len({k for k in keys if k is not None}) + sum(1 for k in keys if k is None)

    def created(self) -> int:
        """Payment intents the fake created (idempotent replays create nothing)."""
        with self._lock:
            return self._created

    def intent(self, intent_id: str) -> dict[str, Any] | None:
        """The fake's current state of a payment intent it created (a copy), or None."""
        with self._lock:
            found = self._intents.get(intent_id)
            return copy.deepcopy(found) if found is not None else None

    # -- hooks ----------------------------------------------------------------------------------

    def note(self, request: Incoming) -> dict[str, str]:
        amount = _form(request).get("amount")
        return {} if amount is None else {"amount": amount}

    def respond(self, request: Incoming, answer: Answer) -> Answer:
        request_id = self._next_id("req_")
        key = request.header("Idempotency-Key")
        succeed = answer.body is None and 200 <= answer.status < 300
        if request.method == "POST" and key is not None and succeed:
            fingerprint = hashlib.sha256(
                b"%s %s\n%s" % (request.method.encode(), request.path.encode(), request.body)
            ).hexdigest()
            stored = self._idempotent.get(key)
            if stored is not None and stored.fingerprint != fingerprint:
                answer = replace(error(
                    400, "idempotency_error",
                    f"Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    f"meant to execute a different request."), hang=answer.hang)
            elif stored is not None:
                answer = replace(answer, status=stored.status, body=copy.deepcopy(stored.body),
                                 headers={**answer.headers, "Idempotent-Replayed": "true",
                                          "Original-Request": stored.request_id})
            else:
                answer = super().respond(request, answer)
                if 200 <= answer.status < 300:
                    self._idempotent[key] = _Stored(fingerprint, answer.status,
                                                    copy.deepcopy(answer.body), request_id)
        else:
            answer = super().respond(request, answer)
        echoed = {"Request-Id": request_id}
        if key is not None and request.method == "POST":
            echoed["Idempotency-Key"] = key  # Stripe reflects the key it used
        names = {name.lower() for name in answer.headers}
        missing = {k: v for k, v in echoed.items() if k.lower() not in names}
        return replace(answer, headers={**answer.headers, **missing}) if missing else answer

    def success(self, request: Incoming) -> Answer | Any:
        method, path, form = request.method, request.path, _form(request)
        if path == PAYMENT_INTENTS:
            if method == "POST":
                return self._create_intent(form)
            if method == "GET":
                return self._list(PAYMENT_INTENTS, self._intents, request)
        elif m := re.fullmatch(PAYMENT_INTENTS + "/" + _ID + r"(?:/(confirm|capture|cancel))?",
                               path):
            return self._intent_action(method, m.group(1), m.group(2), form)
        elif path == "/v1/customers":
            if method == "POST":
                customer_id = self._next_id("cus_")
                self._customers[customer_id] = {
                    "id": customer_id, "object": "customer", "created": int(time.time()),
                    "livemode": False, "metadata": {}}
                return copy.deepcopy(self._customers[customer_id])
            if method == "GET":
                return self._list("/v1/customers", self._customers, request)
        elif m := re.fullmatch(r"/v1/customers/" + _ID, path):
            return self._customer(method, m.group(1))
        elif path == "/v1/refunds" and method == "POST":
            return self._refund(form)
        elif (m := re.fullmatch(r"/v1/refunds/" + _ID, path)) and method == "GET":
            found = self._refunds.get(m.group(1))
            return copy.deepcopy(found) if found else not_found(
                f"No such refund: '{m.group(1)}'")
        return not_found(f"Unrecognized request URL ({method}: {path}).")

    # -- objects --------------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self._ids[prefix] = self._ids.get(prefix, 0) + 1
        return f"{prefix}{self._ids[prefix]}"

    def _create_intent(self, form: dict[str, str]) -> Answer | dict[str, Any]:
        if "amount" not in form:
            return BAD_REQUEST
        intent = _intent(self._next_id("pi_"), _int(form["amount"]), form.get("currency"))
        self._intents[intent["id"]] = intent
        self._created += 1
        return copy.deepcopy(intent)

    def _intent_action(self, method: str, intent_id: str, action: str | None,
                       form: dict[str, str]) -> Answer | dict[str, Any]:
        if method == "GET" and action is None:
            return copy.deepcopy(self._intents.get(intent_id) or _intent(intent_id))
        if method != "POST":
            return not_found(f"Unrecognized request URL ({method}: {PAYMENT_INTENTS}/...).")
        intent = self._intents.setdefault(intent_id, _intent(intent_id))
        if action is None and "amount" in form:
            intent["amount"] = _int(form["amount"])
        elif action in ("confirm", "capture"):
            intent["status"], intent["amount_received"] = "succeeded", intent["amount"]
        elif action == "cancel":
            intent["status"] = "canceled"
        return copy.deepcopy(intent)

    def _customer(self, method: str, customer_id: str) -> Answer | dict[str, Any]:
        if method == "DELETE":
            self._customers[customer_id] = {"id": customer_id, "object": "customer",
                                            "deleted": True}
        elif method == "POST":
            self._customers.setdefault(customer_id, _customer(customer_id))
        elif method != "GET":
            return not_found(f"Unrecognized request URL ({method}: /v1/customers/...).")
        return copy.deepcopy(self._customers.get(customer_id) or _customer(customer_id))

    def _refund(self, form: dict[str, str]) -> dict[str, Any]:
        intent = self._intents.get(form.get("payment_intent", ""))
        default = intent["amount"] if intent else DEFAULT_AMOUNT
        refund_id = self._next_id("re_")
        refund: dict[str, Any] = {"id": refund_id, "object": "refund",
                                  "amount": _int(form.get("amount", str(default))),
                                  "currency": intent["currency"] if intent else "usd",
                                  "payment_intent": form.get("payment_intent"),
                                  "status": "succeeded", "created": int(time.time())}
        self._refunds[refund_id] = refund
        return copy.deepcopy(refund)

    def _list(self, url: str, objects: dict[str, dict[str, Any]],
              request: Incoming) -> dict[str, Any]:
        limit = _int(parse_qs(request.query).get("limit", ["10"])[0], 10)
        newest_first = [copy.deepcopy(o) for o in reversed(objects.values())
                        if not o.get("deleted")]
        return {"object": "list", "data": newest_first[:limit],
                "has_more": len(newest_first) > limit, "url": url}


def _intent(intent_id: str, amount: int = DEFAULT_AMOUNT,
            currency: str | None = None) -> dict[str, Any]:
    return {"id": intent_id, "object": "payment_intent", "amount": amount,
            "amount_received": 0, "currency": currency or "usd",
            "status": "requires_payment_method", "client_secret": f"{intent_id}_secret_fake",
            "created": int(time.time()), "livemode": False, "metadata": {}}


def _customer(customer_id: str) -> dict[str, Any]:
    return {"id": customer_id, "object": "customer", "created": int(time.time()),
            "livemode": False, "metadata": {}}


def _form(request: Incoming) -> dict[str, str]:
    """The form-encoded body's fields (first value of each); {} when it is not a form."""
    if "x-www-form-urlencoded" not in (request.header("Content-Type") or ""):
        return {}
    fields = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _int(text: str, default: int = DEFAULT_AMOUNT) -> int:
    try:
        return int(text)
    except ValueError:
        return default
