"""The SendGrid drop-in with the real SDK against a loopback fake: every measured failure mode,
its outcome, how many requests reached SendGrid, and what the caller got."""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest

sendgrid = pytest.importorskip("sendgrid")

import python_http_client  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from python_http_client import exceptions as sg_errors  # noqa: E402
from sendgrid.helpers.mail import Mail  # noqa: E402
from vendorguard.integrations import sendgrid as vg_sg  # noqa: E402
from vendorguard.integrations.sendgrid import SendGridAPIClient, wrap  # noqa: E402

import vendorguard as vg  # noqa: E402
from tests.conftest import sample, wait_until  # noqa: E402
from tests.integrations.fakehttp import refused_url  # noqa: E402
from tests.integrations.sg_fake import (  # noqa: E402
    BAD_REQUEST,
    DROP,
    FORBIDDEN,
    OK,
    SERVER_ERROR,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    Answer,
    FakeSendGrid,
    hang,
    rate_limited,
    unaccepting,
)

KEY = "SG.test-key-do-not-leak.0123456789"
SENDER, RECIPIENT = "sender@example.com", "ada.lovelace@example.org"
ATTEMPT = 0.3


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid().start()
    yield server
    server.stop()


def sendgrid_vendor(metrics: CollectorRegistry, *, attempts: int = 3, failures: int = 5,
                    reset_after: float = 30.0, attempt: float = ATTEMPT,
                    total: float = 10.0) -> vg.Vendor:
    """A small test policy under the name the drop-in looks for."""
    return vg.Vendor("sendgrid", timeout=vg.Timeout(attempt=attempt, total=total),
                     retry=vg.Retry(attempts=attempts,
                                    backoff=vg.Backoff(initial=0.01, maximum=0.02)),
                     breaker=vg.Breaker(failures=failures, reset_after=reset_after),
                     registry=metrics)


@pytest.fixture
def vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return sendgrid_vendor(metrics)


@pytest.fixture
def sg(vendor: vg.Vendor, fake: FakeSendGrid, metrics: CollectorRegistry) -> SendGridAPIClient:
    return SendGridAPIClient(KEY, host=fake.url, registry=metrics)


@pytest.fixture
def events() -> Iterator[list[vg.Event]]:
    seen: list[vg.Event] = []
    vg.add_observer(seen.append)
    yield seen
    vg.remove_observer(seen.append)


@pytest.fixture
def outbox(tmp_path: Any, metrics: CollectorRegistry) -> Iterator[vg.Outbox]:
    box = vg.Outbox(tmp_path / "outbox.db", backoff=0.05, registry=metrics)
    yield box
    box.close()


def mail(subject: str = "welcome") -> Mail:
    return Mail(from_email=SENDER, to_emails=RECIPIENT, subject=subject,
                plain_text_content="Hello Ada, your secret invite code is 4242.")


def calls(metrics: CollectorRegistry, outcome: str) -> float:
    return sample(metrics, "vendorguard_calls_total", vendor="sendgrid",
                  operation="mail.send", outcome=outcome)


def retries(metrics: CollectorRegistry, reason: str) -> float:
    return sample(metrics, "vendorguard_retries_total", vendor="sendgrid",
                  operation="mail.send", reason=reason)


def all_retries(metrics: CollectorRegistry) -> float:
    return sum(retries(metrics, r) for r in
               ("transient", "ambiguous", "fatal", "timeout", "rate_limited"))


def fallbacks(metrics: CollectorRegistry, reason: str) -> float:
    return sample(metrics, "vendorguard_fallbacks_total", vendor="sendgrid",
                  operation="mail.send", reason=reason)


def attempts_of(events: list[vg.Event]) -> list[int]:
    return [e.attempts for e in events if isinstance(e, vg.events.CallEnded)]




# --------------------------------------------------------------------------------------------
# answers from SendGrid
# --------------------------------------------------------------------------------------------
def test_accepted_mail_is_sent_once(sg: SendGridAPIClient, fake: FakeSendGrid,
                                    metrics: CollectorRegistry) -> None:
    """A 202 gives the SDK's Response, one request with the key, outcome success."""
    response = sg.send(mail("hello"))
    assert isinstance(response, python_http_client.client.Response)
    assert response.status_code == 202
    assert response.headers["X-Message-Id"] == "fake-1"
    assert fake.count("hello") == 1
    assert fake.requests[0].authorized
    assert calls(metrics, "success") == 1


@pytest.mark.parametrize(("answer", "error"), [
    (BAD_REQUEST, sg_errors.BadRequestsError), (UNAUTHORIZED, sg_errors.UnauthorizedError),
    (FORBIDDEN, sg_errors.ForbiddenError), (TOO_LARGE, sg_errors.PayloadTooLargeError)])
def test_caller_errors_are_raised_at_once(sg: SendGridAPIClient, fake: FakeSendGrid,
                                          metrics: CollectorRegistry, answer: Answer,
                                          error: type[Exception]) -> None:
    """400/401/403/413 raise the SDK's own class after one request, outcome caller_error."""
    fake.script(answer)
    with pytest.raises(error):
        sg.send(mail())
    assert fake.count() == 1
    assert calls(metrics, "caller_error") == 1
    assert all_retries(metrics) == 0


def test_caller_errors_never_open_the_breaker(sg: SendGridAPIClient, fake: FakeSendGrid,
                                              vendor: vg.Vendor) -> None:
    """More 400s than the breaker's failure threshold leave the circuit closed."""
    fake.script(BAD_REQUEST)
    for _ in range(7):
        with pytest.raises(sg_errors.BadRequestsError):
            sg.send(mail())
    assert vendor.circuit_for("mail.send").state == "closed"
    assert fake.count() == 7


def test_rate_limit_is_retried_after_its_reset(sg: SendGridAPIClient, fake: FakeSendGrid,
                                               metrics: CollectorRegistry,
                                               events: list[vg.Event]) -> None:
    """A 429 is retried no earlier than its X-RateLimit-Reset, then succeeds."""
    fake.script(rate_limited(reset_in=1.0), OK)
    response = sg.send(mail("limited"))
    assert response.status_code == 202
    first, second = fake.requests
    reset = float(first.headers["X-RateLimit-Reset"])
    assert second.wall >= reset - 0.01  # the retry waited for the advertised reset
    scheduled = [e for e in events if isinstance(e, vg.events.RetryScheduled)]
    assert len(scheduled) == 1
    assert scheduled[0].reason == "rate_limited"
    assert scheduled[0].delay >= reset - first.wall - 0.05
    assert fake.count("limited") == 2
    assert retries(metrics, "rate_limited") == 1
    assert calls(metrics, "success") == 1


def test_rate_limit_reset_far_ahead_ends_the_call(sg: SendGridAPIClient, fake: FakeSendGrid,
                                                  metrics: CollectorRegistry) -> None:
    """A 429 whose reset is an hour ahead raises TooManyRequestsError at once, unretried."""
    fake.script(rate_limited(reset_in=3600.0))
    start = time.monotonic()
    with pytest.raises(sg_errors.TooManyRequestsError):
        sg.send(mail())
    assert time.monotonic() - start < 1.0
    assert fake.count() == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "error") == 1


@pytest.mark.parametrize(("answer", "error"), [
    (SERVER_ERROR, sg_errors.InternalServerError),
    (UNAVAILABLE, sg_errors.ServiceUnavailableError)])
def test_server_errors_are_not_retried(sg: SendGridAPIClient, fake: FakeSendGrid,
                                       metrics: CollectorRegistry, answer: Answer,
                                       error: type[Exception]) -> None:
    """500/503 may mean the mail was accepted: one request, the SDK's error, outcome error."""
    fake.script(answer)
    with pytest.raises(error):
        sg.send(mail())
    assert fake.count() == 1
    assert calls(metrics, "error") == 1
    assert all_retries(metrics) == 0


# --------------------------------------------------------------------------------------------
# transport failures
# --------------------------------------------------------------------------------------------
def test_hang_is_bounded_by_the_attempt_timeout(sg: SendGridAPIClient, fake: FakeSendGrid,
                                                vendor: vg.Vendor,
                                                metrics: CollectorRegistry) -> None:
    """A hung SendGrid gives the SDK's TimeoutError at the attempt bound, on no extra thread."""
    fake.script(hang(3.0))
    start = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        sg.send(mail())
    took = time.monotonic() - start
    assert type(raised.value) is TimeoutError  # the SDK's bare socket timeout, unchanged
    assert ATTEMPT * 0.9 <= took < ATTEMPT + 0.5
    assert vendor._pool is None  # no worker thread: the SDK's own socket timeout bounded it
    assert not [t for t in threading.enumerate() if t.name == f"vendorguard-{vendor.name}"]
    assert fake.count() == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "timeout") == 1


def test_hang_is_retried_at_least_once(vendor: vg.Vendor, fake: FakeSendGrid,
                                       metrics: CollectorRegistry) -> None:
    """With at_least_once, read timeouts are retried: one request per attempt."""
    client = SendGridAPIClient(KEY, host=fake.url, at_least_once=True, registry=metrics)
    fake.script(hang(3.0))
    with vg.testing_mode(), pytest.raises(TimeoutError):
        client.send(mail("slow"))
    assert fake.count("slow") == 3
    assert retries(metrics, "timeout") == 2
    assert calls(metrics, "timeout") == 1


def test_smaller_client_timeout_still_applies(sg: SendGridAPIClient, fake: FakeSendGrid,
                                              vendor: vg.Vendor) -> None:
    """A client.timeout below the guard's attempt bound is the socket timeout used."""
    sendgrid_vendor_attempt = vendor.timeout.attempt
    assert sendgrid_vendor_attempt is not None
    assert sendgrid_vendor_attempt > 0.1
    sg.client.timeout = 0.1
    fake.script(hang(3.0))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        sg.send(mail())
    assert time.monotonic() - start < sendgrid_vendor_attempt


def test_drop_is_ambiguous_and_sent_once(sg: SendGridAPIClient, fake: FakeSendGrid,
                                         metrics: CollectorRegistry) -> None:
    """A connection closed after the request raises RemoteDisconnected after one request."""
    fake.script(DROP)
    with pytest.raises(http.client.RemoteDisconnected):
        sg.send(mail("dropped"))
    assert fake.count("dropped") == 1
    assert calls(metrics, "error") == 1
    assert all_retries(metrics) == 0


@pytest.mark.parametrize("answer", [UNAVAILABLE, DROP], ids=["503", "drop"])
def test_ambiguous_failure_is_retried_at_least_once(vendor: vg.Vendor, fake: FakeSendGrid,
                                                    metrics: CollectorRegistry,
                                                    answer: Any) -> None:
    """With at_least_once, a failure that may have sent the mail is resent (the duplicate the
    option allows) and the retry succeeds."""
    client = SendGridAPIClient(KEY, host=fake.url, at_least_once=True, registry=metrics)
    fake.script(answer, OK)
    with vg.testing_mode():
        assert client.send(mail("again")).status_code == 202
    assert fake.count("again") == 2
    assert retries(metrics, "ambiguous") == 1


def test_refused_is_retried(vendor: vg.Vendor, metrics: CollectorRegistry,
                            events: list[vg.Event]) -> None:
    """A refused connection (nothing sent) is retried up to the policy's attempts."""
    client = SendGridAPIClient(KEY, host=refused_url(), registry=metrics)
    with vg.testing_mode(), pytest.raises(urllib.error.URLError) as raised:
        client.send(mail())
    assert isinstance(raised.value.reason, ConnectionRefusedError)
    assert attempts_of(events) == [3]
    assert retries(metrics, "transient") == 2
    assert calls(metrics, "error") == 1


def test_connect_timeout_is_retried(metrics: CollectorRegistry,
                                    events: list[vg.Event]) -> None:
    """A connect that times out (nothing sent) is retried; the outcome is timeout."""
    sendgrid_vendor(metrics, attempts=2, attempt=0.2)
    with unaccepting() as url:
        client = SendGridAPIClient(KEY, host=url, registry=metrics)
        with vg.testing_mode(), pytest.raises(urllib.error.URLError) as raised:
            client.send(mail())
    assert isinstance(raised.value.reason, TimeoutError)
    assert attempts_of(events) == [2]
    assert retries(metrics, "timeout") == 1
    assert calls(metrics, "timeout") == 1


def test_open_breaker_rejects_without_a_request(metrics: CollectorRegistry,
                                                fake: FakeSendGrid) -> None:
    """After enough failures the next send is rejected with CircuitOpenError, unsent."""
    sendgrid_vendor(metrics, failures=3)
    fake.script(SERVER_ERROR)
    client = SendGridAPIClient(KEY, host=fake.url, registry=metrics)
    for _ in range(3):
        with pytest.raises(sg_errors.InternalServerError):
            client.send(mail())
    with pytest.raises(vg.CircuitOpenError):
        client.send(mail())
    assert fake.count() == 3
    assert calls(metrics, "rejected") == 1


# --------------------------------------------------------------------------------------------
# the other entry points
# --------------------------------------------------------------------------------------------
def test_fluent_post_is_guarded(sg: SendGridAPIClient, fake: FakeSendGrid,
                                metrics: CollectorRegistry) -> None:
    """sg.client.mail.send.post(request_body=...) is the same guarded mail.send."""
    fake.script(rate_limited(reset_in=0.0), OK)
    with vg.testing_mode():
        response = sg.client.mail.send.post(request_body=mail("fluent").get())
    assert response.status_code == 202
    assert fake.count("fluent") == 2
    assert retries(metrics, "rate_limited") == 1
    assert calls(metrics, "success") == 1


def test_fluent_post_timeout_argument_is_honoured(sg: SendGridAPIClient,
                                                  fake: FakeSendGrid) -> None:
    """A timeout= passed to post below the attempt bound bounds the attempt."""
    fake.script(hang(3.0))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        sg.client.mail.send.post(request_body=mail().get(), timeout=0.1)
    assert time.monotonic() - start < ATTEMPT


def test_other_endpoints_pass_through(sg: SendGridAPIClient, fake: FakeSendGrid,
                                      metrics: CollectorRegistry) -> None:
    """Endpoints other than mail.send are the SDK's own, unguarded and uncounted."""
    with pytest.raises(sg_errors.NotFoundError):
        sg.client.templates.post(request_body={"name": "t"})
    assert calls(metrics, "error") == 0
    assert calls(metrics, "caller_error") == 0
    assert isinstance(sg.client, python_http_client.Client)


def test_wrap_guards_an_existing_client(vendor: vg.Vendor, fake: FakeSendGrid,
                                        metrics: CollectorRegistry) -> None:
    """wrap() keeps isinstance and guards both send and the fluent post."""
    raw = sendgrid.SendGridAPIClient(KEY, host=fake.url)
    client = wrap(raw, registry=metrics)
    assert isinstance(client, sendgrid.SendGridAPIClient)
    fake.script(rate_limited(reset_in=0.0), OK)
    with vg.testing_mode():
        assert client.send(mail("wrapped")).status_code == 202
        assert client.client.mail.send.post(request_body=mail("w2").get()).status_code == 202
    assert fake.count("wrapped") == 2
    assert fake.count("w2") == 1
    assert calls(metrics, "success") == 2
    assert retries(metrics, "rate_limited") == 1


def test_drop_in_creates_the_vendor_with_its_policy(fake: FakeSendGrid,
                                                    metrics: CollectorRegistry) -> None:
    """Without a registered "sendgrid" vendor, one is created with the SendGrid policy and
    shared by every drop-in client."""
    first = SendGridAPIClient(KEY, host=fake.url, registry=metrics)
    second = SendGridAPIClient(KEY, host=fake.url, registry=metrics)
    created = vg.vendor("sendgrid")
    assert first.vendorguard.vendor is created is second.vendorguard.vendor
    assert created.policy == vg_sg.POLICY
    first.send(mail())
    second.send(mail())
    assert calls(metrics, "success") == 2


def test_drop_in_uses_a_registered_vendor(metrics: CollectorRegistry) -> None:
    """A "sendgrid" vendor the user registered sets the policy (here: 2 attempts)."""
    sendgrid_vendor(metrics, attempts=2)
    client = SendGridAPIClient(KEY, host=refused_url(), registry=metrics)
    with vg.testing_mode(), pytest.raises(urllib.error.URLError):
        client.send(mail())
    assert retries(metrics, "transient") == 1


# --------------------------------------------------------------------------------------------
# the outbox
# --------------------------------------------------------------------------------------------
def test_outbox_keeps_an_unsent_mail(vendor: vg.Vendor, metrics: CollectorRegistry,
                                     outbox: vg.Outbox) -> None:
    """A refused send returns a Receipt and the request body waits in the outbox."""
    client = SendGridAPIClient(KEY, host=refused_url(), outbox=outbox, registry=metrics)
    with vg.testing_mode():
        receipt = client.send(mail("kept"))
    assert isinstance(receipt, vg.Receipt)
    assert (receipt.vendor, receipt.operation) == ("sendgrid", "mail.send")
    [kept] = outbox.pending()
    assert kept.id == receipt.id
    assert kept.payload["subject"] == "kept"
    assert fallbacks(metrics, "error") == 1


def test_outbox_raises_an_ambiguous_failure(sg: SendGridAPIClient, vendor: vg.Vendor,
                                            fake: FakeSendGrid, metrics: CollectorRegistry,
                                            outbox: vg.Outbox) -> None:
    """A dropped connection is raised, not kept: resending it could send the mail twice."""
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.script(DROP)
    with pytest.raises(http.client.RemoteDisconnected):
        client.send(mail())
    assert outbox.pending() == []
    assert fallbacks(metrics, "error") == 0


def test_outbox_keeps_an_ambiguous_failure_at_least_once(vendor: vg.Vendor,
                                                         fake: FakeSendGrid,
                                                         metrics: CollectorRegistry,
                                                         outbox: vg.Outbox) -> None:
    """With at_least_once, a mail whose 500 outlived the retries is kept."""
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, at_least_once=True,
                               registry=metrics)
    fake.script(SERVER_ERROR)
    with vg.testing_mode():
        assert isinstance(client.send(mail()), vg.Receipt)
    assert fake.count() == 3
    assert len(outbox.pending()) == 1


def test_outbox_raises_a_caller_error(vendor: vg.Vendor, fake: FakeSendGrid,
                                      metrics: CollectorRegistry, outbox: vg.Outbox) -> None:
    """A 400 is the caller's to fix: raised, never kept."""
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.script(BAD_REQUEST)
    with pytest.raises(sg_errors.BadRequestsError):
        client.send(mail())
    assert outbox.pending() == []


def test_kept_mail_rejected_on_delivery_is_dead(vendor: vg.Vendor, fake: FakeSendGrid,
                                                metrics: CollectorRegistry,
                                                outbox: vg.Outbox) -> None:
    """A kept mail that SendGrid answers with 400 on delivery is a dead letter at once."""
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.script(rate_limited(reset_in=3600.0), BAD_REQUEST)
    assert isinstance(client.send(mail("bad")), vg.Receipt)
    assert outbox.drain() == 0
    [dead] = outbox.dead()
    assert dead.attempts == 1
    assert dead.last_error == "BadRequestsError"
    assert fake.count("bad") == 2


def test_outage_is_absorbed_then_delivered_once(fake: FakeSendGrid, metrics: CollectorRegistry,
                                                outbox: vg.Outbox) -> None:
    """200 sends during an outage return receipts promptly; after recovery the outbox
    delivers each mail exactly once and nothing is dead."""
    vendor = sendgrid_vendor(metrics, failures=3, reset_after=0.1, attempt=0.5)
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.stop()  # SendGrid is down: its port refuses connections
    start = time.monotonic()
    receipts = [client.send(mail(f"welcome-{i}")) for i in range(200)]
    took = time.monotonic() - start
    assert all(isinstance(r, vg.Receipt) for r in receipts)
    assert took < 5.0, f"200 sends during the outage took {took:.2f}s"
    assert len(outbox.pending("sendgrid")) == 200
    assert fallbacks(metrics, "rejected") > 150  # the open breaker answered most of them
    assert fake.count() == 0

    fake.start()  # SendGrid is back on the same port
    circuit = vendor.circuit_for("mail.send")
    assert wait_until(lambda: not circuit.rejecting())
    assert wait_until(lambda: outbox.drain() >= 0 and not outbox.pending(), timeout=20.0)
    assert fake.count() == 200
    assert set(fake.subjects().values()) == {1}
    assert outbox.dead() == []
    assert sample(metrics, "vendorguard_outbox_delivered_total", vendor="sendgrid") == 200
    assert circuit.state == "closed"


def test_outbox_worker_delivers_after_recovery(fake: FakeSendGrid, metrics: CollectorRegistry,
                                               outbox: vg.Outbox) -> None:
    """The outbox's background worker delivers what was kept once SendGrid answers."""
    sendgrid_vendor(metrics)
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.script(rate_limited(reset_in=3600.0), OK)  # kept: the reset is beyond the retry cap
    assert isinstance(client.send(mail("later")), vg.Receipt)
    outbox.start(interval=0.05)
    try:
        assert wait_until(lambda: fake.count("later") == 2 and not outbox.pending())
    finally:
        outbox.stop()
    assert fake.count("later") == 2


# --------------------------------------------------------------------------------------------
# privacy
# --------------------------------------------------------------------------------------------
def test_no_key_address_or_content_in_metrics_or_logs(
        vendor: vg.Vendor, fake: FakeSendGrid, metrics: CollectorRegistry, outbox: vg.Outbox,
        caplog: pytest.LogCaptureFixture) -> None:
    """After successes, errors, retries, an outbox and the SDK's own debug logging, neither
    the metrics nor any log record holds the key, an address or the mail's content."""
    caplog.set_level(logging.DEBUG)
    client = SendGridAPIClient(KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.script(OK, BAD_REQUEST, rate_limited(reset_in=0.0), OK, rate_limited(3600.0), OK)
    with vg.testing_mode():
        client.send(mail("private-subject"))
        with pytest.raises(sg_errors.BadRequestsError):
            client.send(mail("private-subject"))
        client.client.mail.send.post(request_body=mail("private-subject").get())
        assert isinstance(client.send(mail("private-subject")), vg.Receipt)
        outbox.drain()
    assert fake.count() == 6
    exported = generate_latest(metrics).decode()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("python_http_client") for r in caplog.records)
    for secret in ("SG.", KEY, SENDER, RECIPIENT, "invite code", "private-subject"):
        assert secret not in exported
        assert secret not in logged


def test_data_residency_keeps_the_client_guarded(sg: SendGridAPIClient) -> None:
    """set_sendgrid_data_residency replaces the HTTP client; the new one is guarded too."""
    sg.set_sendgrid_data_residency("eu")
    assert sg.client.host == "https://api.eu.sendgrid.com"
    assert type(sg.client) is vg_sg._HTTP
    assert sg.vendorguard.http is sg.client.__wrapped__
