"""The real Slack and Twilio SDKs against loopback fakes: Slack through the drop-in
``vendorguard.integrations.slack.WebClient`` (and ``wrap``), Twilio through a
``GuardedAdapter`` mounted on ``TwilioHttpClient``'s requests session. For each failure mode:
how many requests reached the vendor, what the caller got, and the outcome counted."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
from collections.abc import Iterator

import pytest

slack_sdk = pytest.importorskip("slack_sdk")
twilio = pytest.importorskip("twilio")
requests = pytest.importorskip("requests")

from prometheus_client import CollectorRegistry  # noqa: E402
from slack_sdk.errors import SlackApiError  # noqa: E402
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler  # noqa: E402
from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.http.http_client import TwilioHttpClient  # noqa: E402
from twilio.rest import Client as TwilioClient  # noqa: E402
from vendorguard.integrations import slack as vg_slack  # noqa: E402
from vendorguard.integrations.requests import GuardedAdapter, mount  # noqa: E402

import vendorguard as vg  # noqa: E402
from tests.conftest import sample  # noqa: E402
from tests.integrations import slack_fake, twilio_fake  # noqa: E402
from tests.integrations.slack_fake import POST_MESSAGE, FakeSlack  # noqa: E402
from tests.integrations.twilio_fake import MESSAGES, FakeTwilio  # noqa: E402

ATTEMPT = 0.3
HANG_GUARD = 2.5
TOKEN = "xoxb-test"
ACCOUNT = "AC" + "0" * 32
OP = "chat.postMessage"


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
def make_vendor(metrics: CollectorRegistry, name: str, *, attempts: int = 3,
                failures: int = 3) -> vg.Vendor:
    """A small test policy under the name the integration looks for."""
    return vg.Vendor(name, timeout=vg.Timeout(attempt=ATTEMPT, total=5.0),
                     retry=vg.Retry(attempts=attempts,
                                    backoff=vg.Backoff(initial=0.01, maximum=0.05)),
                     breaker=vg.Breaker(failures=failures, reset_after=30),
                     registry=metrics)


def calls(metrics: CollectorRegistry, vendor: str, operation: str, outcome: str) -> float:
    return sample(metrics, "vendorguard_calls_total", vendor=vendor, operation=operation,
                  outcome=outcome)


def retries(metrics: CollectorRegistry, vendor: str, operation: str, reason: str) -> float:
    return sample(metrics, "vendorguard_retries_total", vendor=vendor, operation=operation,
                  reason=reason)


def all_retries(metrics: CollectorRegistry) -> float:
    return sum(s.value for family in metrics.collect() if family.name == "vendorguard_retries"
               for s in family.samples if s.name == "vendorguard_retries_total")


def no_worker_threads(vendor: str) -> bool:
    """No worker-pool thread of ``vendor`` is alive (other tests' vendors may have some)."""
    return not [t for t in threading.enumerate() if t.name == f"vendorguard-{vendor}"]


@pytest.fixture
def slack_site() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


@pytest.fixture
def slack_vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return make_vendor(metrics, "slack")


@pytest.fixture
def slack(slack_site: FakeSlack, slack_vendor: vg.Vendor,
          metrics: CollectorRegistry) -> vg_slack.WebClient:
    return vg_slack.WebClient(token=TOKEN, base_url=slack_site.url + "/api/", registry=metrics)


@pytest.fixture
def twilio_site() -> Iterator[FakeTwilio]:
    server = FakeTwilio().start()
    yield server
    server.stop()


@pytest.fixture
def twilio_vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return make_vendor(metrics, "twilio")


def twilio_client(base_url: str, metrics: CollectorRegistry) -> TwilioClient:
    http = TwilioHttpClient(timeout=10)
    mount(http.session, GuardedAdapter({"127.0.0.1": "twilio"}, registry=metrics))
    client = TwilioClient(ACCOUNT, "token", http_client=http)
    client.api.base_url = base_url
    return client


@pytest.fixture
def sms(twilio_site: FakeTwilio, twilio_vendor: vg.Vendor,
        metrics: CollectorRegistry) -> Iterator[TwilioClient]:
    client = twilio_client(twilio_site.url, metrics)
    yield client
    client.http_client.session.close()


def send(client: TwilioClient, body: str = "Order 42 shipped") -> object:
    return client.messages.create(to="+15550000001", from_="+15550000002", body=body)


# --------------------------------------------------------------------------------------------
# Slack: the drop-in
# --------------------------------------------------------------------------------------------
def test_slack_post_is_sent_once(slack: vg_slack.WebClient, slack_site: FakeSlack,
                                 metrics: CollectorRegistry) -> None:
    """A post gives the SDK's SlackResponse after one authorized request; the call is counted
    as success under the operation chat.postMessage."""
    answer = slack.chat_postMessage(channel="C1", text="deploy finished")
    assert isinstance(answer, slack_sdk.web.SlackResponse)
    assert answer["ok"] is True
    assert answer["channel"] == "C1"
    assert slack_site.posted() == 1
    [seen] = slack_site.seen(POST_MESSAGE)
    assert seen.authorized
    assert calls(metrics, "slack", OP, "success") == 1
    assert isinstance(slack, slack_sdk.WebClient)
    assert slack.retry_handlers == []


def test_slack_operation_is_the_api_method(slack: vg_slack.WebClient,
                                           metrics: CollectorRegistry) -> None:
    """Each Web API method is its own operation label."""
    slack.chat_postMessage(channel="C1", text="hi")
    slack.auth_test()
    slack.api_test()
    assert calls(metrics, "slack", "chat.postMessage", "success") == 1
    assert calls(metrics, "slack", "auth.test", "success") == 1
    assert calls(metrics, "slack", "api.test", "success") == 1


def test_slack_rate_limit_is_retried_after_retry_after(slack: vg_slack.WebClient,
                                                       slack_site: FakeSlack,
                                                       metrics: CollectorRegistry) -> None:
    """A 429 ratelimited is retried no earlier than its Retry-After; the caller gets the
    post; two POSTs, one message."""
    slack_site.script(slack_fake.rate_limited(0.2), slack_fake.OK)
    answer = slack.chat_postMessage(channel="C1", text="limited")
    assert answer["ok"] is True
    first, second = slack_site.seen(POST_MESSAGE)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.2
    assert slack_site.posted() == 1
    assert retries(metrics, "slack", OP, "rate_limited") == 1
    assert calls(metrics, "slack", OP, "success") == 1


def test_slack_exhausted_rate_limit_raises_the_sdk_error(slack: vg_slack.WebClient,
                                                         slack_site: FakeSlack,
                                                         metrics: CollectorRegistry) -> None:
    """When every attempt is rate limited the SDK raises its own SlackApiError with the
    last answer (its Retry-After readable); outcome error."""
    slack_site.script(slack_fake.rate_limited(0.01))
    with pytest.raises(SlackApiError) as raised:
        slack.chat_postMessage(channel="C1", text="limited")
    assert raised.value.response.status_code == 429
    assert raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "0.01"
    assert slack_site.count(POST_MESSAGE) == 3
    assert calls(metrics, "slack", OP, "error") == 1


def test_slack_drop_is_posted_at_most_once(slack: vg_slack.WebClient, slack_site: FakeSlack,
                                           metrics: CollectorRegistry) -> None:
    """A connection dropped after the POST may have posted the message: exactly one POST, the
    SDK's raw error, outcome error."""
    slack_site.script(slack_fake.DROP, slack_fake.OK)
    with pytest.raises(http.client.RemoteDisconnected):
        slack.chat_postMessage(channel="C1", text="once")
    assert slack_site.count(POST_MESSAGE) == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "slack", OP, "error") == 1


def test_explicit_default_handlers_still_post_at_most_once(slack_site: FakeSlack,
                                                           slack_vendor: vg.Vendor,
                                                           metrics: CollectorRegistry) -> None:
    """``retry_handlers=None`` is the SDK's spelling of "the default": the drop-in still
    turns the SDK's handlers off, so a drop is not resent (one POST, the raw error)."""
    client = vg_slack.WebClient(token=TOKEN, base_url=slack_site.url + "/api/",
                                retry_handlers=None, registry=metrics)
    slack_site.script(slack_fake.DROP, slack_fake.OK)
    with pytest.raises(http.client.RemoteDisconnected):
        client.chat_postMessage(channel="C1", text="once")
    assert slack_site.count(POST_MESSAGE) == 1
    assert client.retry_handlers == []


def test_plain_sdk_resends_after_a_drop(slack_site: FakeSlack) -> None:
    """Why the drop-in turns the SDK's retry handlers off: the plain WebClient with its
    default handlers resends the POST after a dropped connection (2 POSTs)."""
    plain = slack_sdk.WebClient(token=TOKEN, base_url=slack_site.url + "/api/")
    assert any(isinstance(h, ConnectionErrorRetryHandler) for h in plain.retry_handlers)
    slack_site.script(slack_fake.DROP, slack_fake.OK)
    assert plain.chat_postMessage(channel="C1", text="twice?")["ok"] is True
    assert slack_site.count(POST_MESSAGE) == 2


def test_slack_caller_errors_never_open_the_breaker(slack: vg_slack.WebClient,
                                                    slack_site: FakeSlack,
                                                    slack_vendor: vg.Vendor,
                                                    metrics: CollectorRegistry) -> None:
    """channel_not_found raises SlackApiError after one POST, outcome caller_error; more of
    them than the threshold leave the breaker closed."""
    slack_site.script(slack_fake.CHANNEL_NOT_FOUND)
    for _ in range(6):
        with pytest.raises(SlackApiError) as raised:
            slack.chat_postMessage(channel="C404", text="where")
        assert raised.value.response["error"] == "channel_not_found"
    assert slack_site.count(POST_MESSAGE) == 6
    assert calls(metrics, "slack", OP, "caller_error") == 6
    assert all_retries(metrics) == 0
    assert slack_vendor.circuit_for(OP).state == "closed"


def test_slack_invalid_auth_counts_as_an_error(slack: vg_slack.WebClient,
                                               slack_site: FakeSlack,
                                               slack_vendor: vg.Vendor,
                                               metrics: CollectorRegistry) -> None:
    """invalid_auth is a failure that counts (every call fails until the token is fixed):
    not retried, outcome error, and enough of them open the breaker."""
    slack_site.script(slack_fake.INVALID_AUTH)
    for _ in range(3):
        with pytest.raises(SlackApiError) as raised:
            slack.chat_postMessage(channel="C1", text="x")
        assert raised.value.response["error"] == "invalid_auth"
    assert slack_site.count(POST_MESSAGE) == 3
    assert calls(metrics, "slack", OP, "error") == 3
    assert all_retries(metrics) == 0
    assert slack_vendor.circuit_for(OP).state == "open"
    with pytest.raises(vg.CircuitOpenError):
        slack.chat_postMessage(channel="C1", text="x")
    assert slack_site.count(POST_MESSAGE) == 3


def test_slack_success_with_a_nested_ok_false_is_a_success(slack: vg_slack.WebClient,
                                                          slack_site: FakeSlack,
                                                          metrics: CollectorRegistry) -> None:
    """Only the answer's own top-level ``ok`` decides: a successful post whose echoed
    message carries ``"ok": false`` in its metadata is counted as a success."""
    slack_site.script(slack_fake.Answer(200, body={
        "ok": True, "channel": "C1", "ts": "1.000001",
        "message": {"type": "message", "ts": "1.000001", "text": "check",
                    "metadata": {"event_type": "health", "event_payload": {"ok": False}}}}))
    answer = slack.chat_postMessage(channel="C1", text="check")
    assert answer["ok"] is True
    assert calls(metrics, "slack", OP, "caller_error") == 0
    assert calls(metrics, "slack", OP, "success") == 1


def test_slack_server_error_is_not_retried(slack: vg_slack.WebClient, slack_site: FakeSlack,
                                           metrics: CollectorRegistry) -> None:
    """A 500 may have posted the message: one POST, the SDK's SlackApiError, outcome
    error."""
    slack_site.script(slack_fake.SERVER_ERROR, slack_fake.OK)
    with pytest.raises(SlackApiError) as raised:
        slack.chat_postMessage(channel="C1", text="x")
    assert raised.value.response.status_code == 500
    assert slack_site.count(POST_MESSAGE) == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "slack", OP, "error") == 1


def test_slack_outage_opens_the_breaker(slack: vg_slack.WebClient, slack_site: FakeSlack,
                                        slack_vendor: vg.Vendor,
                                        metrics: CollectorRegistry) -> None:
    """Slack down (connections refused): the call is retried (nothing was sent) and raises
    urllib's URLError; the breaker is then open and, with Slack back, the next call is
    rejected with CircuitOpenError without a request."""
    slack_site.stop()
    with pytest.raises(urllib.error.URLError) as raised:
        slack.chat_postMessage(channel="C1", text="x")
    assert isinstance(raised.value.reason, ConnectionRefusedError)
    assert retries(metrics, "slack", OP, "transient") == 2
    assert slack_vendor.circuit_for(OP).state == "open"
    slack_site.start()
    with pytest.raises(vg.CircuitOpenError):
        slack.chat_postMessage(channel="C1", text="x")
    assert slack_site.count() == 0
    assert calls(metrics, "slack", OP, "error") == 1
    assert calls(metrics, "slack", OP, "rejected") == 1


def test_slack_timeout_is_clamped_per_attempt(slack_site: FakeSlack, slack_vendor: vg.Vendor,
                                              metrics: CollectorRegistry) -> None:
    """A hung Slack behind WebClient(timeout=30): the call fails at the attempt bound with
    the SDK's bare TimeoutError, outcome timeout, one POST, no worker thread; outside a call
    client.timeout still reads 30."""
    client = vg_slack.WebClient(token=TOKEN, base_url=slack_site.url + "/api/", timeout=30,
                                registry=metrics)
    slack_site.script(slack_fake.hang(5.0))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        client.chat_postMessage(channel="C1", text="slow")
    took = time.monotonic() - start
    assert ATTEMPT * 0.9 <= took < HANG_GUARD
    assert client.timeout == 30
    assert slack_site.count(POST_MESSAGE) == 1
    assert calls(metrics, "slack", OP, "timeout") == 1
    assert slack_vendor._pool is None
    assert no_worker_threads("slack")


def test_wrap_gives_a_guarded_copy(slack_site: FakeSlack, slack_vendor: vg.Vendor,
                                   metrics: CollectorRegistry) -> None:
    """wrap(plain) is a guarded WebClient with no SDK retry handlers; the original keeps its
    own handlers and settings and its calls are not counted."""
    plain = slack_sdk.WebClient(token=TOKEN, base_url=slack_site.url + "/api/", timeout=12)
    handlers = list(plain.retry_handlers)
    guarded = vg_slack.wrap(plain, registry=metrics)
    assert guarded is not plain
    assert isinstance(guarded, slack_sdk.WebClient)
    assert guarded.retry_handlers == []
    assert plain.retry_handlers == handlers
    assert handlers
    assert guarded.timeout == plain.timeout == 12
    assert vg_slack.wrap(guarded) is guarded
    plain.chat_postMessage(channel="C1", text="plain")
    assert calls(metrics, "slack", OP, "success") == 0
    slack_site.script(slack_fake.rate_limited(0.01), slack_fake.OK)
    guarded.chat_postMessage(channel="C1", text="guarded")
    assert calls(metrics, "slack", OP, "success") == 1
    assert retries(metrics, "slack", OP, "rate_limited") == 1
    assert slack_site.posted() == 2
    assert type(plain) is slack_sdk.WebClient


def test_wrapped_client_timeout_is_clamped(slack_site: FakeSlack, slack_vendor: vg.Vendor,
                                           metrics: CollectorRegistry) -> None:
    """The wrapped copy's socket timeout follows the attempt bound too."""
    plain = slack_sdk.WebClient(token=TOKEN, base_url=slack_site.url + "/api/", timeout=30)
    guarded = vg_slack.wrap(plain, registry=metrics)
    slack_site.script(slack_fake.hang(5.0))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        guarded.chat_postMessage(channel="C1", text="slow")
    assert time.monotonic() - start < HANG_GUARD
    assert guarded.timeout == 30
    assert calls(metrics, "slack", OP, "timeout") == 1


# --------------------------------------------------------------------------------------------
# Twilio: the adapter on TwilioHttpClient's session
# --------------------------------------------------------------------------------------------
def test_twilio_message_is_sent(sms: TwilioClient, twilio_site: FakeTwilio,
                                metrics: CollectorRegistry) -> None:
    """A message is created with one authorized POST, counted as success under post."""
    message = send(sms)
    assert message.sid.startswith("SM")
    assert message.status == "queued"
    assert twilio_site.accepted() == 1
    [seen] = twilio_site.seen(MESSAGES, method="POST")
    assert seen.authorized
    assert calls(metrics, "twilio", "post", "success") == 1


def test_twilio_rate_limit_is_retried_after_retry_after(sms: TwilioClient,
                                                        twilio_site: FakeTwilio,
                                                        metrics: CollectorRegistry) -> None:
    """Twilio's exception carries no headers, but the adapter sees the 429's Retry-After:
    the POST is resent no earlier than it, and the message is sent once."""
    twilio_site.script(twilio_fake.rate_limited(0.2), twilio_fake.OK)
    assert send(sms).sid.startswith("SM")
    first, second = twilio_site.seen(MESSAGES)
    assert (first.status, second.status) == (429, 201)
    assert second.at - first.at >= 0.2
    assert twilio_site.accepted() == 1
    assert retries(metrics, "twilio", "post", "rate_limited") == 1


def test_twilio_server_error_is_sent_once(sms: TwilioClient, twilio_site: FakeTwilio,
                                          metrics: CollectorRegistry) -> None:
    """A 500 on the POST may have sent the SMS: one request, TwilioRestException 500,
    outcome error."""
    twilio_site.script(twilio_fake.SERVER_ERROR, twilio_fake.OK)
    with pytest.raises(TwilioRestException) as raised:
        send(sms)
    assert raised.value.status == 500
    assert raised.value.code == 20500
    assert twilio_site.count(MESSAGES) == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "twilio", "post", "error") == 1


def test_twilio_bad_number_is_a_caller_error(sms: TwilioClient, twilio_site: FakeTwilio,
                                             twilio_vendor: vg.Vendor,
                                             metrics: CollectorRegistry) -> None:
    """400 (21211, bad To): TwilioRestException at once, caller_error, breaker closed."""
    twilio_site.script(twilio_fake.BAD_TO)
    for _ in range(4):
        with pytest.raises(TwilioRestException) as raised:
            send(sms)
        assert (raised.value.status, raised.value.code) == (400, 21211)
    assert twilio_site.count(MESSAGES) == 4
    assert calls(metrics, "twilio", "post", "caller_error") == 4
    assert twilio_vendor.circuit_for("post").state == "closed"


def test_twilio_refused_is_retried(twilio_vendor: vg.Vendor,
                                   metrics: CollectorRegistry) -> None:
    """A refused connect (nothing sent) is retried; the SDK raises requests' own
    ConnectionError, unwrapped."""
    client = twilio_client(twilio_fake.refused_url(), metrics)
    with pytest.raises(requests.exceptions.ConnectionError):
        send(client)
    assert retries(metrics, "twilio", "post", "transient") == 2
    assert calls(metrics, "twilio", "post", "error") == 1


def test_twilio_one_layer_retries(sms: TwilioClient, twilio_site: FakeTwilio,
                                  metrics: CollectorRegistry) -> None:
    """With the adapter mounted, a 503 produces exactly ``attempts`` requests (3), and the
    SDK raises its exception for the last one."""
    twilio_site.script(twilio_fake.UNAVAILABLE)
    with pytest.raises(TwilioRestException) as raised:
        send(sms)
    assert raised.value.status == 503
    assert twilio_site.count(MESSAGES) == 3
    assert retries(metrics, "twilio", "post", "transient") == 2
    assert calls(metrics, "twilio", "post", "error") == 1


def test_twilio_timeout_is_clamped(sms: TwilioClient, twilio_site: FakeTwilio,
                                   metrics: CollectorRegistry) -> None:
    """TwilioHttpClient(timeout=10) against a hung Twilio fails at the attempt bound with
    requests' ReadTimeout; the POST is not resent (the SMS may be sent: it was)."""
    twilio_site.script(twilio_fake.hang(5.0))
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(sms)
    assert ATTEMPT * 0.9 <= time.monotonic() - start < HANG_GUARD
    assert twilio_site.count(MESSAGES) == 1
    assert twilio_site.accepted() == 1
    assert calls(metrics, "twilio", "post", "timeout") == 1
    assert sms.http_client.timeout == 10
