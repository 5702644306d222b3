"""The loopback vendor fakes (fakehttp, stripe_fake, twilio_fake, slack_fake) against plain HTTP
clients and the real vendor SDKs: what each answer looks like to the SDK, what the fakes record,
and Stripe-style idempotency in FakeStripe."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from tests.conftest import wait_until
from tests.integrations import slack_fake, stripe_fake, twilio_fake
from tests.integrations.fakehttp import (
    DROP,
    MAX_HANG,
    OK,
    Answer,
    FakeVendor,
    Incoming,
    free_port,
    hang,
    refused_url,
)
from tests.integrations.slack_fake import FakeSlack
from tests.integrations.stripe_fake import PAYMENT_INTENTS, FakeStripe
from tests.integrations.twilio_fake import MESSAGES, FakeTwilio

stripe = pytest.importorskip("stripe")
twilio_rest = pytest.importorskip("twilio.rest")
slack_sdk = pytest.importorskip("slack_sdk")

from slack_sdk.errors import SlackApiError  # noqa: E402
from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.http.http_client import TwilioHttpClient  # noqa: E402

SECRET = "sk_test_do-not-record-0123456789"
ACCOUNT = "AC" + "0" * 32


# --------------------------------------------------------------------------------------------
# the generic fake, with httpx and requests
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeVendor]:
    server = FakeVendor(record_headers=("X-Request-Id",)).start()
    yield server
    server.stop()


def test_generic_fake_answers_every_method_and_records_no_secrets(fake: FakeVendor) -> None:
    with httpx.Client(base_url=fake.url, timeout=5) as client:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            response = client.request(method, "/v1/things?token=abc",
                                      headers={"Authorization": f"Bearer {SECRET}",
                                               "X-Request-Id": f"r-{method}"},
                                      content=b'{"card": "4242"}')
            assert (response.status_code, response.json()) == (200, {"ok": True})
        client.get("/anonymous")
    assert [(r.method, r.path, r.header("x-request-id"), r.authorized, r.status)
            for r in fake.requests] == [
        ("GET", "/v1/things", "r-GET", True, 200), ("POST", "/v1/things", "r-POST", True, 200),
        ("PUT", "/v1/things", "r-PUT", True, 200), ("PATCH", "/v1/things", "r-PATCH", True, 200),
        ("DELETE", "/v1/things", "r-DELETE", True, 200), ("GET", "/anonymous", None, False, 200)]
    assert SECRET not in repr(fake.requests)
    assert "4242" not in repr(fake.requests)
    assert fake.count("/v1/things") == 5
    assert fake.count("/v1/*", method="delete") == 1
    with pytest.raises(ValueError, match="never recorded"):
        FakeVendor(record_headers=("authorization",))


def test_generic_script_runs_in_order_and_per_path(fake: FakeVendor) -> None:
    fake.script(Answer(503, headers={"Retry-After": "1"}), Answer(201, body=[1, 2]))
    fake.script(Answer(429, body="slow down"), OK, path="/limited/*")
    with requests.Session() as session:
        first = session.get(fake.url + "/a", timeout=5)
        assert (first.status_code, first.headers["Retry-After"], first.content) == (503, "1", b"")
        limited = session.post(fake.url + "/limited/x", timeout=5)
        assert (limited.status_code, limited.text) == (429, "slow down")
        assert limited.headers["Content-Type"].startswith("text/plain")
        for _ in range(2):  # the last answer of each script repeats
            assert session.get(fake.url + "/b", timeout=5).json() == [1, 2]
            assert session.post(fake.url + "/limited/y", timeout=5).json() == {"ok": True}
        fake.script()  # back to the default
        assert session.get(fake.url + "/c", timeout=5).json() == {"ok": True}
        fake.script(Answer(204), path="/limited/*")
        no_content = session.delete(fake.url + "/limited/z", timeout=5)
        assert (no_content.status_code, no_content.content) == (204, b"")
        assert session.get(fake.url + "/after-204", timeout=5).json() == {"ok": True}
    assert [r.status for r in fake.requests] == [503, 429, 201, 200, 201, 200, 200, 204, 200]


def test_drop_and_hang(fake: FakeVendor) -> None:
    fake.script(DROP, hang(MAX_HANG), OK)
    with pytest.raises(requests.ConnectionError):
        requests.post(fake.url + "/x", data=b"payload", timeout=5)
    with pytest.raises(requests.ReadTimeout):
        requests.get(fake.url + "/x", timeout=0.2)
    assert requests.get(fake.url + "/x", timeout=5).json() == {"ok": True}
    assert [r.status for r in fake.requests] == [0, 200, 200]
    assert hang(1000).hang == MAX_HANG
    assert hang(1, DROP).drop


def test_stop_ends_hangs_and_closes_pooled_connections(fake: FakeVendor) -> None:
    with requests.Session() as session:
        assert session.get(fake.url + "/warm", timeout=5).ok  # a pooled keep-alive connection
        fake.script(hang(MAX_HANG))
        with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw:
            raw.sendall(b"GET /hanging HTTP/1.1\r\nHost: x\r\n\r\n")
            assert wait_until(lambda: fake.count("/hanging") == 1)
            started = time.monotonic()
            fake.stop()
            try:
                data = raw.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b""  # closed without an answer, long before MAX_HANG
            assert time.monotonic() - started < MAX_HANG / 2
        with pytest.raises(requests.ConnectionError):  # the pooled connection did not survive
            session.get(fake.url + "/during-outage", timeout=5)
        url = fake.url
        fake.script(OK).start()
        assert fake.url == url
        assert session.get(fake.url + "/after", timeout=5).json() == {"ok": True}
    assert fake.count("/during-outage") == 0


def test_refused_url_and_free_port() -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(refused_url(), timeout=5)
    assert 0 < free_port() < 65536


def test_a_bug_in_a_fake_is_recorded() -> None:
    class Broken(FakeVendor):
        def success(self, request: Incoming) -> Any:
            raise RuntimeError("fake bug")

    with Broken() as broken, pytest.raises(requests.ConnectionError):
        requests.get(broken.url, timeout=5)
    assert [str(e) for e in broken.errors] == ["fake bug"]


# --------------------------------------------------------------------------------------------
# Stripe
# --------------------------------------------------------------------------------------------
@pytest.fixture
def stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


def stripe_client(fake: FakeStripe, *, retries: int = 0, timeout: float = 5.0) -> Any:
    return stripe.StripeClient(SECRET, base_addresses={"api": fake.url},
                               max_network_retries=retries,
                               http_client=stripe.RequestsClient(timeout=timeout))


def create(client: Any, amount: int = 1000, **options: Any) -> Any:
    return client.v1.payment_intents.create(params={"amount": amount, "currency": "usd"},
                                            options=options or None)


def test_stripe_payment_intent_lifecycle(stripe_server: FakeStripe) -> None:
    client = stripe_client(stripe_server)
    intent = create(client, 1000)
    assert isinstance(intent, stripe.PaymentIntent)
    assert (intent.id, intent.amount, intent.currency, intent.status) == (
        "pi_1", 1000, "usd", "requires_payment_method")
    assert intent.last_response.request_id.startswith("req_")
    assert client.v1.payment_intents.confirm(intent.id).status == "succeeded"
    assert client.v1.payment_intents.capture(intent.id).amount_received == 1000
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    other = create(client, 2500)
    assert client.v1.payment_intents.cancel(other.id).status == "canceled"
    listed = client.v1.payment_intents.list()
    assert [(pi.id, pi.status) for pi in listed.data] == [("pi_2", "canceled"),
                                                          ("pi_1", "succeeded")]
    assert listed.has_more is False
    refund = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert (refund.object, refund.amount, refund.payment_intent) == ("refund", 1000, "pi_1")
    customer = client.v1.customers.create()
    assert client.v1.customers.retrieve(customer.id).object == "customer"
    deleted = client.v1.customers.delete(customer.id)
    assert (deleted.id, deleted.deleted) == (customer.id, True)

    first = stripe_server.requests[0]
    assert (first.method, first.path, first.authorized, first.status) == (
        "POST", PAYMENT_INTENTS, True, 200)
    assert first.notes == {"amount": "1000"}
    assert first.header("Idempotency-Key")  # the SDK adds a fresh key to every POST
    assert stripe_server.keys(PAYMENT_INTENTS, method="GET") == [None]
    assert [s.notes.get("amount") for s in stripe_server.seen(PAYMENT_INTENTS, method="POST")
            ] == ["1000", "2500"]
    assert (stripe_server.created(), stripe_server.charges()) == (2, 2)
    assert SECRET not in repr(stripe_server.requests)


def test_stripe_card_declined(stripe_server: FakeStripe) -> None:
    stripe_server.script(stripe_fake.CARD_DECLINED)
    with pytest.raises(stripe.CardError) as caught:
        create(stripe_client(stripe_server))
    e = caught.value
    assert (e.http_status, e.code, e.error.decline_code) == (402, "card_declined",
                                                             "generic_decline")
    assert e.request_id.startswith("req_")
    assert (stripe_server.created(), stripe_server.charges()) == (0, 0)


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (0.25, "0.25"), (None, None)])
def test_stripe_rate_limited(stripe_server: FakeStripe, retry_after: float | None,
                             header: str | None) -> None:
    stripe_server.script(stripe_fake.rate_limited(retry_after))
    with pytest.raises(stripe.RateLimitError) as caught:
        create(stripe_client(stripe_server))
    assert caught.value.http_status == 429
    assert caught.value.headers.get("Retry-After") == header


@pytest.mark.parametrize(("answer", "error", "status"), [
    (stripe_fake.BAD_REQUEST, "InvalidRequestError", 400),
    (stripe_fake.UNAUTHORIZED, "AuthenticationError", 401),
    (stripe_fake.IDEMPOTENCY_ERROR, "IdempotencyError", 400),
    (stripe_fake.CONFLICT, "APIError", 409),
    (stripe_fake.SERVER_ERROR, "APIError", 500),
    (stripe_fake.SERVER_ERROR_NO_RETRY, "APIError", 500),
    (stripe_fake.UNAVAILABLE, "APIError", 503),
])
def test_stripe_error_answers(stripe_server: FakeStripe, answer: Answer, error: str,
                              status: int) -> None:
    stripe_server.script(answer)
    with pytest.raises(stripe.StripeError) as caught:
        create(stripe_client(stripe_server))
    assert (type(caught.value).__name__, caught.value.http_status) == (error, status)
    assert caught.value.request_id.startswith("req_")
    assert stripe_server.count() == 1
    assert stripe_server.created() == 0


def test_stripe_sdk_retries_reuse_one_key_and_honour_should_retry(
        stripe_server: FakeStripe) -> None:
    stripe_server.script(stripe_fake.SERVER_ERROR, stripe_fake.OK)
    intent = create(stripe_client(stripe_server, retries=1))
    keys = stripe_server.keys(PAYMENT_INTENTS)
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert [s.status for s in stripe_server.requests] == [500, 200]
    assert (intent.id, stripe_server.created(), stripe_server.charges()) == ("pi_1", 1, 1)

    stripe_server.clear()
    stripe_server.script(stripe_fake.SERVER_ERROR_NO_RETRY)
    with pytest.raises(stripe.APIError) as caught:
        create(stripe_client(stripe_server, retries=2))
    assert caught.value.headers["Stripe-Should-Retry"] == "false"
    assert stripe_server.count() == 1


def test_stripe_idempotent_replay(stripe_server: FakeStripe) -> None:
    client = stripe_client(stripe_server)
    first = create(client, idempotency_key="order-1")
    again = create(client, idempotency_key="order-1")
    assert again.id == first.id == "pi_1"
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert again.last_response.headers["Original-Request"] == first.last_response.request_id
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert first.last_response.headers["Idempotency-Key"] == "order-1"
    assert stripe_server.keys() == ["order-1", "order-1"]
    assert (stripe_server.created(), stripe_server.charges()) == (1, 1)

    with pytest.raises(stripe.IdempotencyError, match="order-1"):
        create(client, 5000, idempotency_key="order-1")  # same key, other parameters
    create(client)  # a caller-level retry without a fixed key: a new key, a second charge
    assert (stripe_server.created(), stripe_server.charges()) == (2, 2)


def test_stripe_read_timeout_then_retry_with_the_same_key(stripe_server: FakeStripe) -> None:
    stripe_server.script(stripe_fake.hang(MAX_HANG), stripe_fake.OK)
    with pytest.raises(stripe.APIConnectionError) as caught:
        create(stripe_client(stripe_server, timeout=0.3), idempotency_key="order-2")
    assert isinstance(caught.value.__cause__, requests.ReadTimeout)
    assert stripe_server.created() == 1  # Stripe did the work; the answer never arrived
    retried = create(stripe_client(stripe_server), idempotency_key="order-2")
    assert retried.id == "pi_1"
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert (stripe_server.created(), stripe_server.charges()) == (1, 1)


def test_stripe_drop_outage_and_refused(stripe_server: FakeStripe) -> None:
    client = stripe_client(stripe_server)
    stripe_server.script(DROP, stripe_fake.OK)
    with pytest.raises(stripe.APIConnectionError):
        create(client)
    assert stripe_server.requests[0].status == 0
    assert create(client).id == "pi_1"
    stripe_server.stop()
    with pytest.raises(stripe.APIConnectionError):
        create(client)  # the SDK's pooled connection was closed with the fake
    stripe_server.start()
    assert create(client).id == "pi_2"
    with pytest.raises(stripe.APIConnectionError):
        create(stripe.StripeClient(SECRET, base_addresses={"api": refused_url()}))
    assert stripe_server.count() == 3


def test_stripe_per_path_script(stripe_server: FakeStripe) -> None:
    client = stripe_client(stripe_server)
    stripe_server.script(stripe_fake.CARD_DECLINED, path=PAYMENT_INTENTS + "/*/confirm")
    intent = create(client)
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.confirm(intent.id)
    assert stripe_server.intent(intent.id)["status"] == "requires_payment_method"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.charges.create(params={"amount": 1})  # not served by the fake: 404
    assert caught.value.http_status == 404


def test_stripe_global_api_base(stripe_server: FakeStripe,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "api_key", SECRET)
    monkeypatch.setattr(stripe, "api_base", stripe_server.url)
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    monkeypatch.setattr(stripe, "default_http_client", stripe.RequestsClient(timeout=5))
    intent = stripe.PaymentIntent.create(amount=700, currency="usd", idempotency_key="legacy-1")
    assert (intent.id, intent.amount) == ("pi_1", 700)
    assert stripe.PaymentIntent.retrieve("pi_1").amount == 700
    assert stripe_server.keys(PAYMENT_INTENTS) == ["legacy-1"]
    assert stripe_server.requests[0].notes == {"amount": "700"}


# --------------------------------------------------------------------------------------------
# Twilio
# --------------------------------------------------------------------------------------------
@pytest.fixture
def twilio_server() -> Iterator[FakeTwilio]:
    server = FakeTwilio().start()
    yield server
    server.stop()


def twilio_client(fake: FakeTwilio) -> Any:
    client = twilio_rest.Client(ACCOUNT, "token", http_client=TwilioHttpClient(timeout=5))
    client.api.base_url = fake.url
    return client


def send(client: Any) -> Any:
    return client.messages.create(to="+15005550006", from_="+15005550001", body="hi there")


def test_twilio_sends_a_message(twilio_server: FakeTwilio) -> None:
    client = twilio_client(twilio_server)
    message = send(client)
    assert message.sid.startswith("SM")
    assert len(message.sid) == 34
    assert (message.account_sid, message.status, message.to) == (ACCOUNT, "queued",
                                                                 "+15005550006")
    assert client.messages(message.sid).fetch().status == "sent"
    seen = twilio_server.requests[0]
    assert (seen.method, seen.path, seen.authorized, seen.status) == (
        "POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", True, 201)
    assert twilio_server.count(MESSAGES, method="POST") == 1
    assert twilio_server.accepted() == 1
    assert "hi there" not in repr(twilio_server.requests)


@pytest.mark.parametrize(("answer", "status", "code", "retry_after"), [
    (twilio_fake.BAD_TO, 400, 21211, None),
    (twilio_fake.UNAUTHORIZED, 401, 20003, None),
    (twilio_fake.rate_limited(3), 429, 20429, "3"),
    (twilio_fake.SERVER_ERROR, 500, 20500, None),
    (twilio_fake.UNAVAILABLE, 503, 20503, None),
])
def test_twilio_errors(twilio_server: FakeTwilio, answer: Answer, status: int, code: int,
                       retry_after: str | None) -> None:
    client = twilio_client(twilio_server)
    twilio_server.script(answer)
    with pytest.raises(TwilioRestException) as caught:
        send(client)
    assert (caught.value.status, caught.value.code) == (status, code)
    last = client.http_client._test_only_last_response  # the exception carries no headers
    assert last.headers.get("Retry-After") == retry_after
    assert last.headers["Twilio-Request-Id"].startswith("RQ")
    assert twilio_server.accepted() == 0


def test_twilio_drop_and_hang(twilio_server: FakeTwilio) -> None:
    twilio_server.script(DROP, twilio_fake.hang(MAX_HANG))
    with pytest.raises(requests.ConnectionError):
        send(twilio_client(twilio_server))
    quick = twilio_rest.Client(ACCOUNT, "token", http_client=TwilioHttpClient(timeout=0.3))
    quick.api.base_url = twilio_server.url
    with pytest.raises(requests.ReadTimeout):
        send(quick)
    assert twilio_server.accepted() == 1  # the SMS went out though the client timed out
    assert [s.status for s in twilio_server.requests] == [0, 201]


# --------------------------------------------------------------------------------------------
# Slack
# --------------------------------------------------------------------------------------------
@pytest.fixture
def slack_server() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


def slack_client(fake: FakeSlack) -> Any:
    return slack_sdk.WebClient(token="xoxb-test", base_url=fake.url + "/api/", timeout=5,
                               retry_handlers=[])


def test_slack_posts_a_message(slack_server: FakeSlack) -> None:
    response = slack_client(slack_server).chat_postMessage(channel="C123", text="hello")
    assert (response.status_code, response["ok"], response["channel"]) == (200, True, "C123")
    assert response["ts"] == response["message"]["ts"]
    seen = slack_server.requests[0]
    assert (seen.method, seen.path, seen.authorized, seen.status) == (
        "POST", slack_fake.POST_MESSAGE, True, 200)
    assert slack_server.posted() == 1
    assert "xoxb-test" not in repr(slack_server.requests)


@pytest.mark.parametrize(("answer", "status", "error", "retry_after"), [
    (slack_fake.CHANNEL_NOT_FOUND, 200, "channel_not_found", None),
    (slack_fake.INVALID_AUTH, 200, "invalid_auth", None),
    (slack_fake.rate_limited(1), 429, "ratelimited", "1"),
    (slack_fake.rate_limited(), 429, "ratelimited", None),
    (slack_fake.SERVER_ERROR, 500, "fatal_error", None),
    (slack_fake.UNAVAILABLE, 503, "service_unavailable", None),
])
def test_slack_errors(slack_server: FakeSlack, answer: Answer, status: int, error: str,
                      retry_after: str | None) -> None:
    slack_server.script(answer)
    with pytest.raises(SlackApiError) as caught:
        slack_client(slack_server).chat_postMessage(channel="C123", text="hello")
    response = caught.value.response
    assert (response.status_code, response["error"]) == (status, error)
    assert response.headers.get("Retry-After") == retry_after
    assert slack_server.posted() == 0
    assert slack_server.count() == 1


def test_slack_drop_with_and_without_the_sdk_retry_handler(slack_server: FakeSlack) -> None:
    slack_server.script(DROP)
    with pytest.raises(http.client.RemoteDisconnected):
        slack_client(slack_server).chat_postMessage(channel="C123", text="hello")
    assert slack_server.count() == 1
    slack_server.script(DROP, slack_fake.OK)
    default = slack_sdk.WebClient(token="xoxb-test", base_url=slack_server.url + "/api/",
                                  timeout=5)
    assert default.chat_postMessage(channel="C123", text="hello")["ok"]
    assert slack_server.count(slack_fake.POST_MESSAGE) == 3  # the default handler re-sent
