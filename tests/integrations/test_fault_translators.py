"""Injected faults look like each SDK's own failures: the drop-ins for SendGrid, Stripe and
Slack, and the httpx / requests HTTP guards, run with their real SDKs against local fakes. While
a fault is injected the fake receives no request; after the block, calls reach it again."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sendgrid = pytest.importorskip("sendgrid")
stripe = pytest.importorskip("stripe")
httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
slack_sdk = pytest.importorskip("slack_sdk")

from python_http_client import exceptions as sg_errors  # noqa: E402
from sendgrid.helpers.mail import Mail  # noqa: E402
from slack_sdk.errors import SlackApiError  # noqa: E402
from vendorguard.integrations.httpx import GuardedTransport  # noqa: E402
from vendorguard.integrations.requests import GuardedAdapter, mount  # noqa: E402
from vendorguard.integrations.sendgrid import SendGridAPIClient  # noqa: E402
from vendorguard.integrations.slack import WebClient  # noqa: E402
from vendorguard.integrations.stripe import StripeClient  # noqa: E402

import vendorguard as vg  # noqa: E402
from tests.integrations.fakehttp import FakeVendor  # noqa: E402
from tests.integrations.sg_fake import FakeSendGrid  # noqa: E402
from tests.integrations.slack_fake import POST_MESSAGE, FakeSlack  # noqa: E402
from tests.integrations.stripe_fake import PAYMENT_INTENTS, FakeStripe  # noqa: E402
from vendorguard.testing.harness import Harness  # noqa: E402

ATTEMPTS = 3
"""Attempts per call in every test policy."""
PARAMS = {"amount": 1000, "currency": "usd"}
THING = "/v1/thing"
MARGIN = 2.0
"""Generous slack over a time bound, for slow CI machines (an upper bound only)."""


def policy_vendor(name: str, *, attempt: float = 2.0, failures: int = 100) -> vg.Vendor:
    """A small test policy registered before the integration looks its vendor up."""
    return vg.Vendor(name, timeout=vg.Timeout(attempt=attempt, total=10.0),
                     retry=vg.Retry(attempts=ATTEMPTS),
                     breaker=vg.Breaker(failures=failures, reset_after=30.0))


# --------------------------------------------------------------------------------------------
# SendGrid
# --------------------------------------------------------------------------------------------
@pytest.fixture
def sg_fake() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid().start()
    yield server
    server.stop()


def mail(subject: str = "welcome") -> Mail:
    return Mail(from_email="sender@example.com", to_emails="ada@example.org", subject=subject,
                plain_text_content="hello")


@pytest.fixture
def sg(vendorguard: Harness, sg_fake: FakeSendGrid) -> SendGridAPIClient:
    policy_vendor("sendgrid")
    return SendGridAPIClient("SG.test", host=sg_fake.url)


def test_sendgrid_503_is_the_sdks_service_unavailable(
        vendorguard: Harness, sg: SendGridAPIClient, sg_fake: FakeSendGrid) -> None:
    """An injected 503 is python_http_client's ServiceUnavailableError with status 503; like a
    real 5xx it is ambiguous for SendGrid (the mail may be sent): not retried."""
    with vendorguard.inject("sendgrid", vendorguard.status(503)), \
            pytest.raises(sg_errors.ServiceUnavailableError) as info:
        sg.send(mail())
    assert info.value.status_code == 503
    assert sg_fake.count() == 0
    assert vendorguard.calls("sendgrid", "error") == 1
    assert vendorguard.retries("sendgrid") == 0
    assert sg.send(mail()).status_code == 202
    assert sg_fake.count() == 1


def test_sendgrid_429_is_retried_then_too_many_requests(
        vendorguard: Harness, sg: SendGridAPIClient, sg_fake: FakeSendGrid) -> None:
    """An injected 429 with Retry-After: 0 is the SDK's TooManyRequestsError, carrying the
    header; it is retried as a rate limit, then raised."""
    with vendorguard.inject("sendgrid", vendorguard.status(429, retry_after=0)), \
            pytest.raises(sg_errors.TooManyRequestsError) as info:
        sg.client.mail.send.post(request_body=mail().get())
    assert info.value.status_code == 429
    assert info.value.headers.get("Retry-After") == "0"
    assert sg_fake.count() == 0
    assert vendorguard.retries("sendgrid") == ATTEMPTS - 1
    assert vendorguard.calls("sendgrid", "error") == 1
    assert sg.send(mail()).status_code == 202
    assert sg_fake.count() == 1


def test_sendgrid_400_is_a_caller_error(vendorguard: Harness, sg: SendGridAPIClient,
                                        sg_fake: FakeSendGrid) -> None:
    """An injected 400 is BadRequestsError: a caller error, raised at once, no retry, no
    breaker count."""
    policy = vg.vendor("sendgrid")
    with vendorguard.inject("sendgrid", vendorguard.status(400)):
        for _ in range(3):
            with pytest.raises(sg_errors.BadRequestsError):
                sg.send(mail())
    assert sg_fake.count() == 0
    assert vendorguard.calls("sendgrid", "caller_error") == 3
    assert vendorguard.retries("sendgrid") == 0
    assert vendorguard.state("sendgrid") == "closed"
    assert policy.last_failure is None
    assert sg.send(mail()).status_code == 202
    assert sg_fake.count() == 1


def test_sendgrid_outage_is_a_retried_url_error(vendorguard: Harness, sg: SendGridAPIClient,
                                                sg_fake: FakeSendGrid) -> None:
    """An injected outage is urllib's URLError for a refused connection (what the SDK raises
    when SendGrid cannot be reached): nothing was sent, so it is retried."""
    with vendorguard.inject("sendgrid", vendorguard.outage()), \
            pytest.raises(urllib.error.URLError) as info:
        sg.send(mail())
    assert not isinstance(info.value, urllib.error.HTTPError)
    assert isinstance(info.value.reason, ConnectionRefusedError)
    assert sg_fake.count() == 0
    assert vendorguard.retries("sendgrid") == ATTEMPTS - 1
    assert vendorguard.calls("sendgrid", "error") == 1
    assert sg.send(mail()).status_code == 202
    assert sg_fake.count() == 1


def test_sendgrid_outage_keeps_the_mail_in_the_outbox(
        vendorguard: Harness, sg_fake: FakeSendGrid, tmp_path: Path) -> None:
    """With an outbox, a send during an injected outage returns a Receipt and the mail is
    kept; once the outage is over the outbox delivers it to SendGrid."""
    policy_vendor("sendgrid")
    with vg.Outbox(tmp_path / "o.db") as outbox:
        client = SendGridAPIClient("SG.test", host=sg_fake.url, outbox=outbox)
        with vendorguard.inject("sendgrid", vendorguard.outage()):
            receipt = client.send(mail("kept"))
        assert isinstance(receipt, vg.Receipt)
        assert (receipt.vendor, receipt.operation) == ("sendgrid", "mail.send")
        [kept] = outbox.pending("sendgrid")
        assert kept.payload["subject"] == "kept"
        assert sg_fake.count() == 0
        assert vendorguard.fallbacks("sendgrid") == 1
        assert outbox.drain() == 1
        assert outbox.pending() == []
    assert sg_fake.count("kept") == 1


# --------------------------------------------------------------------------------------------
# Stripe
# --------------------------------------------------------------------------------------------
@pytest.fixture
def stripe_fake() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()
    assert server.errors == []


@pytest.fixture
def stripe_client(vendorguard: Harness, stripe_fake: FakeStripe) -> StripeClient:
    policy_vendor("stripe")
    return StripeClient("sk_test_x", base_addresses={"api": stripe_fake.url})


CREATE = "payment_intents.create"


def stripe_reaches_the_fake(client: StripeClient, fake: FakeStripe) -> None:
    before = fake.count()
    assert client.v1.payment_intents.create(PARAMS).object == "payment_intent"
    assert fake.count() == before + 1


def test_stripe_402_is_a_card_error_never_retried_nor_counted(
        vendorguard: Harness, stripe_fake: FakeStripe) -> None:
    """An injected 402 is stripe.CardError (card_declined): a caller error, raised at once,
    never retried, and more of them than the breaker's threshold leave it closed."""
    policy_vendor("stripe", failures=2)
    stripe_client = StripeClient("sk_test_x", base_addresses={"api": stripe_fake.url})
    with vendorguard.inject("stripe", vendorguard.status(402)):
        for _ in range(4):
            with pytest.raises(stripe.CardError) as info:
                stripe_client.v1.payment_intents.create(PARAMS)
            assert info.value.http_status == 402
            assert info.value.code == "card_declined"
    assert stripe_fake.count() == 0
    assert vendorguard.calls("stripe", "caller_error", CREATE) == 4
    assert vendorguard.retries("stripe") == 0
    assert vendorguard.state("stripe") == "closed"
    stripe_reaches_the_fake(stripe_client, stripe_fake)


def test_stripe_429_is_a_rate_limit_error_after_retries(
        vendorguard: Harness, stripe_client: StripeClient, stripe_fake: FakeStripe) -> None:
    """An injected 429 is stripe.RateLimitError, retried as a rate limit, then raised."""
    with vendorguard.inject("stripe", vendorguard.status(429, retry_after=0)), \
            pytest.raises(stripe.RateLimitError) as info:
        stripe_client.v1.customers.retrieve("cus_1")
    assert info.value.http_status == 429
    assert stripe_fake.count() == 0
    assert vendorguard.retries("stripe") == ATTEMPTS - 1
    assert vendorguard.calls("stripe", "error", "customers.retrieve") == 1
    stripe_reaches_the_fake(stripe_client, stripe_fake)


def test_stripe_outage_is_a_retried_connection_error(
        vendorguard: Harness, stripe_client: StripeClient, stripe_fake: FakeStripe) -> None:
    """An injected outage is stripe.APIConnectionError caused by a refused connection:
    nothing was sent, so it is retried."""
    with vendorguard.inject("stripe", vendorguard.outage(), CREATE), \
            pytest.raises(stripe.APIConnectionError) as info:
        stripe_client.v1.payment_intents.create(PARAMS)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert stripe_fake.count() == 0
    assert vendorguard.retries("stripe") == ATTEMPTS - 1
    assert vendorguard.calls("stripe", "error", CREATE) == 1
    stripe_reaches_the_fake(stripe_client, stripe_fake)


def test_stripe_500_is_a_retried_api_error_with_the_calls_key(
        vendorguard: Harness, stripe_client: StripeClient, stripe_fake: FakeStripe) -> None:
    """An injected 500 on a POST is stripe.APIError, retried because the call has one
    Idempotency-Key fixed for all its attempts; as with a real failure that key is on the
    raised error, and resuming with it later sends that same key."""
    with vendorguard.inject("stripe", vendorguard.status(500)), \
            pytest.raises(stripe.APIError) as info:
        stripe_client.v1.payment_intents.create(PARAMS)
    assert type(info.value) is stripe.APIError
    assert info.value.http_status == 500
    assert stripe_fake.count() == 0
    assert vendorguard.retries("stripe") == ATTEMPTS - 1
    assert vendorguard.calls("stripe", "error", CREATE) == 1
    key = getattr(info.value, "idempotency_key", None)
    assert isinstance(key, str), "the injected failure carries no idempotency key"
    assert key
    stripe_client.v1.payment_intents.create(PARAMS, {"idempotency_key": key})
    assert stripe_fake.keys(PAYMENT_INTENTS, method="POST") == [key]


def test_stripe_500_on_an_unkeyed_post_is_not_resent(
        vendorguard: Harness, stripe_fake: FakeStripe) -> None:
    """With idempotency_keys=False a 5xx on a POST is ambiguous (Stripe may have charged): a
    real one ends the call after one attempt, and so must an injected one."""
    policy_vendor("stripe")
    client = StripeClient("sk_test_x", base_addresses={"api": stripe_fake.url},
                          idempotency_keys=False)
    with vendorguard.inject("stripe", vendorguard.status(500)), \
            pytest.raises(stripe.APIError):
        client.v1.payment_intents.create(PARAMS)
    assert stripe_fake.count() == 0
    assert vendorguard.calls("stripe", "error", CREATE) == 1
    assert vendorguard.retries("stripe") == 0, "an injected 500 resent an unkeyed POST"


# --------------------------------------------------------------------------------------------
# httpx GuardedTransport and requests GuardedAdapter
# --------------------------------------------------------------------------------------------
@pytest.fixture
def http_fake() -> Iterator[FakeVendor]:
    server = FakeVendor().start()
    yield server
    server.stop()
    assert server.errors == []


@pytest.fixture(params=["httpx", "requests"])
def get(request: pytest.FixtureRequest, vendorguard: Harness,
        http_fake: FakeVendor) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(library, send)``: ``send()`` GETs the fake's /v1/thing through that library's guard
    (vendor "api", attempt timeout 0.2 s)."""
    policy_vendor("api", attempt=0.2)
    url = http_fake.url + THING
    if request.param == "httpx":
        client = httpx.Client(transport=GuardedTransport(vendors={"127.0.0.1": "api"}))
        yield "httpx", lambda: client.get(url)
        client.close()
    else:
        session = mount(requests.Session(), GuardedAdapter(vendors={"127.0.0.1": "api"}))
        yield "requests", lambda: session.get(url, timeout=5)
        session.close()


def test_http_503_reaches_the_client_as_a_response(
        vendorguard: Harness, get: tuple[str, Callable[[], Any]], http_fake: FakeVendor) -> None:
    """An injected 503 is retried (transient), then handed to the client as a 503 response,
    exactly as the vendor's own answer would be: not an exception."""
    _, send = get
    with vendorguard.inject("api", vendorguard.status(503, retry_after=0)):
        response = send()
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "0"
    assert response.json() == {"error": "injected"}
    assert http_fake.count() == 0
    assert vendorguard.retries("api") == ATTEMPTS - 1
    assert vendorguard.calls("api", "error", "get") == 1
    assert send().status_code == 200
    assert http_fake.count(THING) == 1


def test_http_outage_is_the_librarys_connect_error(
        vendorguard: Harness, get: tuple[str, Callable[[], Any]], http_fake: FakeVendor) -> None:
    """An injected outage is httpx.ConnectError / requests' ConnectionError: nothing was
    sent, so it is retried."""
    library, send = get
    expected = httpx.ConnectError if library == "httpx" else requests.exceptions.ConnectionError
    with vendorguard.inject("api", vendorguard.outage()), pytest.raises(expected):
        send()
    assert http_fake.count() == 0
    assert vendorguard.retries("api") == ATTEMPTS - 1
    assert vendorguard.calls("api", "error", "get") == 1
    assert send().status_code == 200
    assert http_fake.count(THING) == 1


def test_http_hang_is_the_librarys_read_timeout(
        vendorguard: Harness, get: tuple[str, Callable[[], Any]], http_fake: FakeVendor) -> None:
    """An injected hang ends at the 0.2 s attempt timeout as httpx.ReadTimeout / requests'
    ReadTimeout; the call's outcome is timeout."""
    library, send = get
    expected = httpx.ReadTimeout if library == "httpx" else requests.exceptions.ReadTimeout
    started = time.monotonic()
    with vendorguard.inject("api", vendorguard.hang()), pytest.raises(expected):
        send()
    assert time.monotonic() - started < ATTEMPTS * 0.2 + MARGIN
    assert http_fake.count() == 0
    assert vendorguard.calls("api", "timeout", "get") == 1
    assert vendorguard.calls("api", "error", "get") == 0
    assert send().status_code == 200
    assert http_fake.count(THING) == 1


# --------------------------------------------------------------------------------------------
# Slack
# --------------------------------------------------------------------------------------------
@pytest.fixture
def slack_fake() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()
    assert server.errors == []


@pytest.fixture
def slack(vendorguard: Harness, slack_fake: FakeSlack) -> WebClient:
    policy_vendor("slack")
    return WebClient(token="xoxb-t", base_url=slack_fake.url + "/api/")


def test_slack_429_is_a_ratelimited_slack_api_error(
        vendorguard: Harness, slack: WebClient, slack_fake: FakeSlack) -> None:
    """An injected 429 is retried, then the SDK raises its own SlackApiError whose error is
    "ratelimited", with the status and Retry-After of the answer."""
    with vendorguard.inject("slack", vendorguard.status(429, retry_after=0)), \
            pytest.raises(SlackApiError) as info:
        slack.chat_postMessage(channel="C1", text="hi")
    assert info.value.response["error"] == "ratelimited"
    assert info.value.response.status_code == 429
    assert slack_fake.count() == 0
    assert vendorguard.retries("slack") == ATTEMPTS - 1
    assert vendorguard.calls("slack", "error", "chat.postMessage") == 1
    assert slack.chat_postMessage(channel="C1", text="hi")["ok"] is True
    assert slack_fake.count(POST_MESSAGE) == 1


def test_slack_outage_is_a_url_error(vendorguard: Harness, slack: WebClient,
                                     slack_fake: FakeSlack) -> None:
    """An injected outage is urllib's URLError for a refused connection, retried (nothing
    was sent)."""
    with vendorguard.inject("slack", vendorguard.outage()), \
            pytest.raises(urllib.error.URLError) as info:
        slack.chat_postMessage(channel="C1", text="hi")
    assert isinstance(info.value.reason, ConnectionRefusedError)
    assert slack_fake.count() == 0
    assert vendorguard.retries("slack") == ATTEMPTS - 1
    assert vendorguard.calls("slack", "error", "chat.postMessage") == 1
    assert slack.chat_postMessage(channel="C1", text="hi")["ok"] is True
    assert slack_fake.count(POST_MESSAGE) == 1
