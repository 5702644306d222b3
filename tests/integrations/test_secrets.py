"""No secret leaks out of a guard: through every integration, with vendors that echo secrets.

Each test drives guarded calls carrying recognisable fake secrets (API keys, tokens, an email
address, a card number, phone numbers) through the real vendor SDKs against loopback fakes
whose error answers quote those secrets back, then collects every place vendorguard writes to
and asserts that none of the secrets is there:

- ``/metrics``, ``/vendors`` and the status page, fetched over HTTP from
  ``vendorguard.telemetry.server.start_http_server``;
- every exported OpenTelemetry span: name, attributes, events and their attributes, status;
- the log records of the ``vendorguard`` loggers (DEBUG and up);
- the audit trail, in memory and in its JSON-lines file;
- the ``last_error`` kept for outbox messages (pending and dead letters).

A secret counts as leaked in any letter case and URL-encoded. Every test also checks that its
calls happened (requests the fake received, what the caller got) and that each sink carries
the test's vendor, so a test that did nothing cannot pass; ``test_sinks_catch_planted_secrets``
plants a secret in every sink and checks that each one is reported.

No secret literal appears outside the constants below: tracebacks quote source lines, and a
literal on a line that raises would be reported as a leak of the test itself.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import http.client
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, urlencode

import pytest

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
ldclient = pytest.importorskip("ldclient")
sendgrid = pytest.importorskip("sendgrid")
slack_sdk = pytest.importorskip("slack_sdk")
stripe = pytest.importorskip("stripe")
twilio = pytest.importorskip("twilio")

from ldclient import Config, Context  # noqa: E402
from ldclient.config import HTTPConfig  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import Status, StatusCode  # noqa: E402
from prometheus_client import CollectorRegistry, Counter  # noqa: E402
from python_http_client import exceptions as sg_errors  # noqa: E402
from sendgrid.helpers.mail import Mail  # noqa: E402
from slack_sdk.errors import SlackApiError  # noqa: E402
from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.http.http_client import TwilioHttpClient  # noqa: E402
from twilio.rest import Client as TwilioClient  # noqa: E402
from vendorguard.integrations import slack as vg_slack  # noqa: E402
from vendorguard.integrations.httpx import AsyncGuardedTransport, GuardedTransport  # noqa: E402
from vendorguard.integrations.launchdarkly import LDClient  # noqa: E402
from vendorguard.integrations.requests import GuardedAdapter, mount  # noqa: E402
from vendorguard.integrations.sendgrid import SendGridAPIClient  # noqa: E402
from vendorguard.integrations.stripe import StripeClient  # noqa: E402

import vendorguard as vg  # noqa: E402
from tests.conftest import sample, wait_until  # noqa: E402
from tests.integrations.fakehttp import (  # noqa: E402
    Answer,
    FakeVendor,
    Incoming,
    refused_url,
)
from tests.integrations.ld_fake import FakeLD, flag  # noqa: E402
from tests.integrations.slack_fake import POST_MESSAGE, FakeSlack  # noqa: E402
from tests.integrations.stripe_fake import PAYMENT_INTENTS, FakeStripe  # noqa: E402
from tests.integrations.twilio_fake import MESSAGES, FakeTwilio  # noqa: E402
from vendorguard import audit  # noqa: E402
from vendorguard.telemetry import tracing  # noqa: E402
from vendorguard.telemetry.server import start_http_server  # noqa: E402

# --------------------------------------------------------------------------------------------
# the secrets
# --------------------------------------------------------------------------------------------
SENDGRID_KEY = "SG.leakcheck-APIKEY-7f3a9c"
STRIPE_KEY = "sk_test_leakcheck_4242"
SLACK_TOKEN = "xoxb-leakcheck-token"
LD_SDK_KEY = "sdk-leakcheck-1234"
TWILIO_TOKEN = "twilio-leakcheck-authtoken-55aa"
HTTP_TOKEN = "tok_leakcheck_httpapi_77"
QUERY_KEY = "qk_leakcheck_query_31337"
EMAIL = "leak.victim@example.com"
CARD = "4242424242424242"
PHONE = "+15550104242"
SENDER_PHONE = "+15550109999"

TWILIO_ACCOUNT = "AC" + "0" * 32
"""Not a secret: the account SID is part of every Twilio URL."""
TWILIO_BASIC = base64.b64encode(f"{TWILIO_ACCOUNT}:{TWILIO_TOKEN}".encode()).decode()
"""Twilio's Basic credentials as they travel in the Authorization header."""

SECRETS = (SENDGRID_KEY, STRIPE_KEY, SLACK_TOKEN, LD_SDK_KEY, TWILIO_TOKEN, HTTP_TOKEN,
           QUERY_KEY, EMAIL, CARD, PHONE, SENDER_PHONE, TWILIO_BASIC)

ATTEMPT = 0.5
"""Attempt bound of the test policies (seconds): every call on loopback stays well under it."""
CONTROL_REASON = "maintenance window INC-2041"
"""An operator's reason for a control action: shown on purpose, and holding no secret."""


def _variants(secret: str) -> set[str]:
    """How a secret may appear: as is, URL-encoded (a query string or a form), any case."""
    return {v.lower() for v in (secret, quote(secret, safe=""), quote_plus(secret))}


def assert_no_secrets(where: str, text: str) -> None:
    """Fail when ``text`` (found in ``where``) holds any of :data:`SECRETS`, in any letter case
    or URL-encoded; the message names the secrets and quotes around the first one."""
    lowered = text.lower()
    found = []
    for secret in SECRETS:
        at = min((i for v in _variants(secret) if (i := lowered.find(v)) >= 0), default=-1)
        if at >= 0:
            found.append((secret, at))
    if found:
        secret, at = found[0]
        snippet = text[max(0, at - 100):at + len(secret) + 100].replace("\n", "\\n")
        raise AssertionError(f"{where} leaks {[s for s, _ in found]}: ...{snippet}...")


# --------------------------------------------------------------------------------------------
# the sinks
# --------------------------------------------------------------------------------------------
def fetch(port: int, path: str) -> str:
    """GET ``path`` from the vendorguard server on loopback (no proxy, bounded)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    assert response.status == 200, (path, response.status, body)
    return body


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == "vendorguard" or record.name.startswith("vendorguard.")


def _span_items(span: ReadableSpan) -> Iterator[tuple[str, str]]:
    """Every text of a span, each with where it is."""
    name = f"span {span.name!r}"
    yield f"{name} name", span.name
    yield f"{name} status description", span.status.description or ""
    for key, value in (span.attributes or {}).items():
        yield f"{name} attribute {key}", str(value)
    for event in span.events:
        yield f"{name} event name", event.name
        for key, value in (event.attributes or {}).items():
            yield f"{name} event {event.name!r} attribute {key}", str(value)
    for link in span.links:
        for key, value in (link.attributes or {}).items():
            yield f"{name} link attribute {key}", str(value)


@dataclasses.dataclass
class Sinks:
    """Everywhere vendorguard writes to during a test, and the check that no secret is there."""

    port: int
    exporter: InMemorySpanExporter
    provider: TracerProvider
    caplog: pytest.LogCaptureFixture
    audit_file: Path
    outboxes: list[vg.Outbox] = dataclasses.field(default_factory=list)
    closers: list[Callable[[], Any]] = dataclasses.field(default_factory=list)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def our_records(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if _is_ours(r)]

    def collect(self) -> list[tuple[str, str]]:
        """Every text in every sink, each with where it is."""
        items = [("/metrics", fetch(self.port, "/metrics")),
                 ("/vendors", fetch(self.port, "/vendors")),
                 ("/vendors/health", fetch(self.port, "/vendors/health")),
                 ("status page /", fetch(self.port, "/"))]
        for span in self.spans():
            items.extend(_span_items(span))
        # Only the vendorguard loggers: third-party SDK loggers (urllib3, slack_sdk, stripe,
        # python_http_client, twilio, ldclient) are the SDKs' own business, not vendorguard's.
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for record in self.our_records():
            # The formatted record: its message, exc_text (the formatted exception) and stack.
            items.append((f"log {record.name}:{record.levelname} {record.msg!r}",
                          formatter.format(record)))
        items.append(("audit entries",
                      json.dumps([e.as_dict() for e in audit.entries()], default=str)))
        text = self.audit_file.read_text() if self.audit_file.exists() else ""
        items.append((f"audit file {self.audit_file.name}", text))
        for box in self.outboxes:
            for message in [*box.pending(), *box.dead()]:
                items.append((f"outbox {message.state} message {message.id} last_error",
                              message.last_error or ""))
        return items

    def leaks(self) -> list[str]:
        """What :func:`assert_no_secrets` says about every sink (empty: nothing leaked)."""
        found = []
        for where, text in self.collect():
            try:
                assert_no_secrets(where, text)
            except AssertionError as leak:
                found.append(str(leak))
        return found

    def check(self, *vendors: str) -> None:
        """Assert that the sinks are live (each of ``vendors`` is in /metrics, /vendors and at
        least one span) and that no secret is in any of them; lists every leak at once."""
        metrics_text = fetch(self.port, "/metrics")
        report = json.loads(fetch(self.port, "/vendors"))
        names = {span.name.split(" ", 1)[0] for span in self.spans()}
        for vendor in vendors:
            assert f'vendor="{vendor}"' in metrics_text, vendor
            assert vendor in report["vendors"], (vendor, sorted(report["vendors"]))
            assert vendor in names, (vendor, sorted(names))
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


@pytest.fixture
def sinks(metrics: CollectorRegistry, caplog: pytest.LogCaptureFixture, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Sinks]:
    """Spans exported in memory, every log record at DEBUG, the audit file, and the vendorguard
    server on a free loopback port serving ``metrics``; all undone afterwards."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    caplog.set_level(logging.DEBUG)
    audit_file = tmp_path / "audit.jsonl"
    audit.set_file(audit_file)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    server, thread = start_http_server(0, registry=metrics)
    found = Sinks(server.server_port, exporter, provider, caplog, audit_file)
    try:
        with vg.testing_mode():  # no backoff sleeps, no Retry-After waits
            yield found
    finally:
        for close in reversed(found.closers):
            close()
        for box in found.outboxes:
            box.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        tracing.follow()
        provider.shutdown()
        audit.set_file(None)


def make_vendor(metrics: CollectorRegistry, name: str, *, failures: int = 50,
                attempts: int = 3) -> vg.Vendor:
    """A small test policy under the name an integration looks for."""
    return vg.Vendor(name, timeout=vg.Timeout(attempt=ATTEMPT, total=5.0),
                     retry=vg.Retry(attempts=attempts, budget=None,
                                    backoff=vg.Backoff(initial=0.001, maximum=0.002)),
                     breaker=vg.Breaker(failures=failures, reset_after=30.0),
                     registry=metrics)


def calls(metrics: CollectorRegistry, vendor: str, operation: str, outcome: str) -> float:
    return sample(metrics, "vendorguard_calls_total", vendor=vendor, operation=operation,
                  outcome=outcome)


# --------------------------------------------------------------------------------------------
# vendors that quote the request back
# --------------------------------------------------------------------------------------------
def echoed(request: Incoming) -> str:
    """Everything a request carried that a careless vendor may quote back in an error: header
    values (Basic credentials decoded), the query string and the body, URL-decoded."""
    parts = [f"{name}: {value}" for name, value in request.headers.items()]
    scheme, _, credentials = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() == "basic":
        parts.append(base64.b64decode(credentials).decode("utf-8", "replace"))
    parts.append(unquote_plus(request.query))
    parts.append(unquote_plus(request.body.decode("utf-8", "replace")))
    return " | ".join(parts)


def echo(status: int, render: Callable[[str], Any], headers: dict[str, str] | None = None
         ) -> Answer:
    """An error answer whose body is ``render(echoed(request))``."""
    return Answer(status, headers=dict(headers or {}), body=lambda request: render(
        echoed(request)))


class Echoing(FakeVendor):
    """A fake whose scripted answers may render their body from the request (see echo())."""

    def respond(self, request: Incoming, answer: Answer) -> Answer:
        if callable(answer.body):
            answer = dataclasses.replace(answer, body=answer.body(request))
        return super().respond(request, answer)


class EchoAPI(Echoing):
    """A generic JSON API."""

    name = "echo-api"


class EchoSendGrid(Echoing):
    """SendGrid's v3 mail send: 202 with an X-Message-Id on success (sg_fake.py answers errors
    with a fixed body, so it cannot echo)."""

    name = "echo-sendgrid"
    default_ok = Answer(202)

    def success(self, request: Incoming) -> Answer | Any:
        return Answer(202, headers={"X-Message-Id": "fake-1"}, body=b"")


class EchoStripe(Echoing, FakeStripe):
    pass


class EchoSlack(Echoing, FakeSlack):
    pass


class EchoTwilio(Echoing, FakeTwilio):
    pass


@pytest.fixture
def started() -> Iterator[Callable[[FakeVendor], Any]]:
    """Starts fakes and stops them (checking they never failed) after the test."""
    fakes: list[FakeVendor] = []

    def start(fake: FakeVendor) -> Any:
        fakes.append(fake.start())
        return fake

    yield start
    for fake in fakes:
        fake.stop()
    for fake in fakes:
        assert fake.errors == []


# --------------------------------------------------------------------------------------------
# plain guards
# --------------------------------------------------------------------------------------------
class VendorDown(Exception):
    """A vendor failure whose message quotes the call's arguments."""


def test_plain_guard_keeps_secrets_out(sinks: Sinks, metrics: CollectorRegistry) -> None:
    """Decorated functions raising exceptions that quote their secret arguments: a retry that
    recovers, a caller error, fallbacks (value, callable, async, one that raises), a call that
    exhausts its retries while the breaker opens, rejections, and runtime control."""
    vendor = make_vendor(metrics, "acme", failures=4)
    ran: collections.Counter[str] = collections.Counter()

    @vendor.guard("lookup")
    def lookup(email: str, api_key: str) -> str:
        ran["lookup"] += 1
        if ran["lookup"] == 1:
            raise VendorDown(f"lookup of {email} with key {api_key} timed out")
        return "found"

    @vendor.guard("validate")
    def validate(card: str) -> str:
        ran["validate"] += 1
        raise TypeError(f"card {card} is not a valid card number")

    @vendor.guard("notify", fallback="skipped", retry=None)
    async def notify(phone: str, email: str) -> str:
        ran["notify"] += 1
        raise VendorDown(f"cannot text {phone} nor mail {email}")

    def broken_fallback(failure: vg.Failure) -> str:
        raise ValueError(f"fallback failed too for {failure.args}")

    @vendor.guard("refund", fallback=broken_fallback, retry=None)
    def refund(card: str, email: str) -> str:
        ran["refund"] += 1
        raise VendorDown(f"refund to card {card} of {email} failed")

    @vendor.guard("charge")
    def charge(card: str, email: str, api_key: str) -> str:
        ran["charge"] += 1
        raise VendorDown(f"card {card} of {email} declined under key {api_key}")

    @vendor.guard("charge.queued", fallback=lambda failure: f"queued {len(failure.args)}")
    def charge_or_queue(card: str, email: str, api_key: str) -> str:
        ran["charge_or_queue"] += 1
        raise VendorDown(f"card {card} of {email} declined under key {api_key}")

    assert lookup(EMAIL, STRIPE_KEY) == "found"                # failed once, retried
    with pytest.raises(TypeError):
        validate(CARD)                                         # caller error: not counted
    assert asyncio.run(notify(PHONE, EMAIL)) == "skipped"      # 1 failure
    with pytest.raises(vg.FallbackError):
        refund(CARD, EMAIL)                                    # 2 failures
    with pytest.raises(VendorDown):
        charge(CARD, EMAIL, STRIPE_KEY)                        # 3, 4: the breaker opens
    assert vendor.state == "open"
    assert charge_or_queue(CARD, EMAIL, STRIPE_KEY) == "queued 3"   # rejected
    vendor.force_open(reason=CONTROL_REASON, actor="oncall")
    assert charge_or_queue(CARD, EMAIL, STRIPE_KEY) == "queued 3"   # rejected
    vendor.reset(reason=CONTROL_REASON + " over", actor="oncall")
    assert lookup(EMAIL, STRIPE_KEY) == "found"

    assert ran == {"lookup": 3, "validate": 1, "notify": 1, "refund": 1, "charge": 2}
    assert calls(metrics, "acme", "charge", "error") == 1
    assert calls(metrics, "acme", "charge.queued", "rejected") == 2
    assert sample(metrics, "vendorguard_retries_total", vendor="acme", operation="lookup",
                  reason="transient") == 1
    names = [s.name for s in sinks.spans()]
    assert "acme lookup attempt" in names
    assert any(e.name == "vendorguard.retry" for s in sinks.spans() for e in s.events)
    assert any(e.name == "vendorguard.rejected" for s in sinks.spans() for e in s.events)
    transitions = [e for e in audit.entries("acme") if e.kind == "transition"]
    assert [(e.before, e.after) for e in transitions] == [
        ("closed", "open"), ("open", "forced_open"), ("forced_open", "closed")]
    messages = [r.getMessage() for r in sinks.our_records()]
    assert any("closed -> open" in m for m in messages), messages
    assert any("fallback served" in m for m in messages), messages
    # Control reasons are operator text, shown on purpose.
    report = json.loads(fetch(sinks.port, "/vendors"))
    assert [c["reason"] for c in report["vendors"]["acme"]["control"]] == [
        CONTROL_REASON, CONTROL_REASON + " over"]
    sinks.check("acme")


# --------------------------------------------------------------------------------------------
# LaunchDarkly
# --------------------------------------------------------------------------------------------
def ld_config(url: str, **kw: Any) -> Config:
    return Config(LD_SDK_KEY, stream_uri=url, base_uri=url, events_uri=url, stream=True,
                  send_events=False, initial_reconnect_delay=0.1, diagnostic_opt_out=True,
                  http=HTTPConfig(connect_timeout=1, read_timeout=2), **kw)


def test_launchdarkly_keeps_secrets_out(sinks: Sinks, metrics: CollectorRegistry,
                                        started: Callable[[FakeVendor], Any]) -> None:
    """Evaluations for a context whose key, email, phone and card are secrets (successes,
    wrong type, unknown flag, a bad context, details, all flags, events); the data source
    interrupted; and a client whose data source is refused with a 401 quoting the SDK key."""
    fake = FakeLD({"f": flag("f", True), "color": flag("color", "blue",
                                                        variations=["blue", "green"])}).start()
    sinks.closers.append(fake.stop)
    ctx = (Context.builder(EMAIL).kind("user").name("Leak Victim").set("email", EMAIL)
           .set("phone", PHONE).set("card", CARD).build())
    assert ctx.valid
    client = LDClient(ld_config(fake.url), start_wait=5, spans=True,
                      last_good=True, registry=metrics)
    sinks.closers.append(client.close)
    assert client.is_initialized()
    assert client.variation("f", ctx, False) is True
    assert client.variation("color", ctx, 0) == 0                      # wrong type
    assert client.variation("no-such-flag", ctx, "dflt") == "dflt"     # flag not found
    assert client.variation("f", {"key": EMAIL, "card": CARD}, False) is False  # bad context
    assert client.variation_detail("color", ctx, "red").value == "blue"
    assert client.all_flags_state(ctx).valid
    client.track("checkout", ctx, {"card": CARD, "phone": PHONE}, 19.99)
    client.identify(ctx)
    client.flush()
    assert fake.count("GET", "/all") == 1

    fake.stop()                                                          # an outage
    assert wait_until(lambda: client.data_source_status_provider.status.state.value
                      == "interrupted")
    assert client.variation("color", ctx, "red") == "blue"               # last flags served

    refusing = started(EchoAPI()).script(echo(401, lambda text: {"message": text}))
    denied = LDClient(ld_config(refusing.url), start_wait=0.2, vendor="launchdarkly-denied",
                      registry=metrics)
    sinks.closers.append(denied.close)
    assert denied.variation("f", ctx, False) is False                    # not ready
    assert refusing.count() >= 1
    assert wait_until(lambda: vg.health()["vendors"]["launchdarkly-denied"]
                      ["data_source"]["error"])

    assert calls(metrics, "launchdarkly", "variation", "success") == 2
    assert calls(metrics, "launchdarkly", "variation", "caller_error") == 3
    assert calls(metrics, "launchdarkly-denied", "variation", "error") == 1
    assert calls(metrics, "launchdarkly", "track", "success") == 1
    report = vg.health()["vendors"]
    assert report["launchdarkly"]["data_source"]["state"] == "interrupted"
    assert "401" in report["launchdarkly-denied"]["data_source"]["error"]
    assert any("not initialised" in r.getMessage() for r in sinks.our_records())
    sinks.check("launchdarkly")


# --------------------------------------------------------------------------------------------
# SendGrid
# --------------------------------------------------------------------------------------------
def sendgrid_errors(text: str) -> dict[str, Any]:
    return {"errors": [{"message": f"invalid request: {text}", "field": "from", "help": None}]}


def secret_mail(subject: str) -> Mail:
    return Mail(from_email=EMAIL, to_emails=EMAIL, subject=subject,
                plain_text_content=f"Your card {CARD} was charged; call {PHONE}.")


def test_sendgrid_keeps_secrets_out(sinks: Sinks, metrics: CollectorRegistry,
                                    started: Callable[[FakeVendor], Any], tmp_path: Path) -> None:
    """Mail with secret addresses and content under a secret API key: sent, refused with a 400
    and failed with a 500 that quote the request; and with the outbox, kept after a 429 and
    dead-lettered by a quoting 400 on delivery."""
    make_vendor(metrics, "sendgrid")
    fake = started(EchoSendGrid())
    sg = SendGridAPIClient(SENDGRID_KEY, host=fake.url, registry=metrics)
    assert sg.send(secret_mail("one")).status_code == 202
    fake.script(echo(400, sendgrid_errors))
    with pytest.raises(sg_errors.BadRequestsError) as refused:
        sg.send(secret_mail("two"))
    assert EMAIL in refused.value.body.decode()                    # the vendor did quote it
    fake.script(echo(500, sendgrid_errors))
    with pytest.raises(sg_errors.InternalServerError):
        sg.client.mail.send.post(request_body=secret_mail("three").get())
    assert fake.count() == 3

    outbox = vg.Outbox(tmp_path / "outbox.db", backoff=0.05, registry=metrics)
    sinks.outboxes.append(outbox)
    kept = SendGridAPIClient(SENDGRID_KEY, host=fake.url, outbox=outbox, registry=metrics)
    fake.script(echo(429, sendgrid_errors, {"Retry-After": "3600"}), echo(400, sendgrid_errors))
    assert isinstance(kept.send(secret_mail("four")), vg.Receipt)
    assert outbox.drain() == 0
    [dead] = outbox.dead()
    assert dead.last_error == "BadRequestsError"
    assert fake.count() == 5

    assert calls(metrics, "sendgrid", "mail.send", "success") == 1
    assert calls(metrics, "sendgrid", "mail.send", "caller_error") == 2
    assert calls(metrics, "sendgrid", "mail.send", "error") == 2
    assert sample(metrics, "vendorguard_outbox_dead_total", vendor="sendgrid") == 1
    assert [e.action for e in audit.entries("sendgrid")] == ["dead_lettered"]
    sinks.check("sendgrid")


# --------------------------------------------------------------------------------------------
# Stripe
# --------------------------------------------------------------------------------------------
def stripe_error(type_: str, code: str | None = None) -> Callable[[str], Any]:
    def render(text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"type": type_, "message": f"Your request was refused: {text}"}
        if code is not None:
            body["code"] = code
        return {"error": body}

    return render


def test_stripe_keeps_secrets_out(sinks: Sinks, metrics: CollectorRegistry,
                                  started: Callable[[FakeVendor], Any]) -> None:
    """Card numbers, emails and phones in params under a secret API key: a customer created
    and read, a decline and a 401 that quote them, 500s retried until the breaker opens, a read
    served by its LastGood fallback, and a write rejected by the open breaker."""
    make_vendor(metrics, "stripe", failures=4)
    fake = started(EchoStripe())
    client = StripeClient(STRIPE_KEY, base_addresses={"api": fake.url}, registry=metrics,
                          fallbacks={"customers.retrieve": vg.LastGood()})
    params = {"amount": 1999, "currency": "usd", "receipt_email": EMAIL,
              "description": f"card {CARD}", "metadata": {"card": CARD, "phone": PHONE}}

    customer = client.v1.customers.create({"email": EMAIL, "phone": PHONE,
                                           "description": f"card {CARD}"})
    assert client.v1.customers.retrieve(customer.id).id == customer.id
    fake.script(echo(402, stripe_error("card_error", "card_declined")))
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(params)
    assert CARD in str(declined.value)                             # the vendor did quote it
    fake.script(echo(401, stripe_error("invalid_request_error")))
    with pytest.raises(stripe.AuthenticationError):
        client.v1.payment_intents.create(params)
    fake.script(echo(500, stripe_error("api_error")))
    with pytest.raises(stripe.APIError):
        client.v1.payment_intents.create(params)                   # 3 attempts, one key
    served = client.v1.customers.retrieve(customer.id)             # 1 failure: opens
    assert served.id == customer.id
    with pytest.raises(vg.CircuitOpenError):
        client.v1.payment_intents.create(params)

    assert fake.count(PAYMENT_INTENTS, method="POST") == 5
    assert len(set(fake.keys(PAYMENT_INTENTS, method="POST")[2:])) == 1
    assert fake.count("/v1/customers/*", method="GET") == 2
    assert calls(metrics, "stripe", "payment_intents.create", "caller_error") == 2
    assert calls(metrics, "stripe", "payment_intents.create", "error") == 1
    assert calls(metrics, "stripe", "payment_intents.create", "rejected") == 1
    assert sample(metrics, "vendorguard_fallbacks_total", vendor="stripe",
                  operation="customers.retrieve", reason="error") == 1
    assert [(e.before, e.after) for e in audit.entries("stripe")] == [("closed", "open")]
    sinks.check("stripe")


# --------------------------------------------------------------------------------------------
# httpx and requests
# --------------------------------------------------------------------------------------------
class HTTPCaller:
    """A guarded httpx client (sync or async) or requests session; ``request`` returns the
    response (status, text) or raises what the client raises."""

    def __init__(self, kind: str, vendor: str, metrics: CollectorRegistry) -> None:
        self.kind = kind
        mapping = {"127.0.0.1": vendor}
        if kind == "requests":
            self.session = mount(requests.Session(), GuardedAdapter(mapping, registry=metrics))
        elif kind == "httpx":
            self.client = httpx.Client(
                transport=GuardedTransport(vendors=mapping, registry=metrics), timeout=2.0)
        else:
            self.aclient = httpx.AsyncClient(
                transport=AsyncGuardedTransport(vendors=mapping, registry=metrics), timeout=2.0)
            self.loop = asyncio.new_event_loop()

    def request(self, method: str, url: str, *, body: Any = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {HTTP_TOKEN}", "X-Customer-Email": EMAIL}
        if self.kind == "requests":
            response = self.session.request(method, url, headers=headers, json=body,
                                            timeout=2.0)
            return response.status_code, response.text
        if self.kind == "httpx":
            answer = self.client.request(method, url, headers=headers, json=body)
            return answer.status_code, answer.text
        answer = self.loop.run_until_complete(
            self.aclient.request(method, url, headers=headers, json=body))
        return answer.status_code, answer.text

    def close(self) -> None:
        if self.kind == "requests":
            self.session.close()
        elif self.kind == "httpx":
            self.client.close()
        else:
            self.loop.run_until_complete(self.aclient.aclose())
            self.loop.close()


def api_error(text: str) -> dict[str, Any]:
    return {"error": f"rejected: {text}"}


@pytest.mark.parametrize("kind", ["httpx", "httpx_async", "requests"])
def test_http_guards_keep_secrets_out(sinks: Sinks, metrics: CollectorRegistry,
                                      started: Callable[[FakeVendor], Any], kind: str) -> None:
    """Secrets in the query string, the Authorization and another header, and the JSON body:
    a success, a quoting 400, 500s and 503s retried, and a refused connection."""
    make_vendor(metrics, "httpapi")
    fake = started(EchoAPI())
    caller = HTTPCaller(kind, "httpapi", metrics)
    sinks.closers.append(caller.close)
    query = "?" + urlencode({"api_key": QUERY_KEY, "email": EMAIL, "phone": PHONE})
    url = fake.url + "/v1/customers" + query
    body = {"email": EMAIL, "card": CARD, "phone": PHONE}

    assert caller.request("GET", url)[0] == 200
    fake.script(echo(400, api_error))
    status, text = caller.request("POST", url, body=body)
    assert status == 400
    assert all(secret in text for secret in (CARD, QUERY_KEY, HTTP_TOKEN))  # it did quote
    fake.script(echo(500, api_error))
    assert caller.request("GET", url)[0] == 500                       # 3 attempts (a GET)
    fake.script(echo(503, api_error, {"Retry-After": "0"}))
    assert caller.request("POST", url, body=body)[0] == 503           # 3 attempts (503)
    assert fake.count("/v1/customers") == 8
    refused = refused_url() + "/v1/customers" + query
    with pytest.raises((httpx.ConnectError, requests.exceptions.ConnectionError)):
        caller.request("POST", refused, body=body)                    # 3 attempts

    assert calls(metrics, "httpapi", "get", "success") == 1
    assert calls(metrics, "httpapi", "get", "error") == 1
    assert calls(metrics, "httpapi", "post", "caller_error") == 1
    assert calls(metrics, "httpapi", "post", "error") == 2
    for operation, reason in (("get", "ambiguous"), ("post", "rate_limited"),
                              ("post", "transient")):
        assert sample(metrics, "vendorguard_retries_total", vendor="httpapi",
                      operation=operation, reason=reason) == 2, (operation, reason)
    sinks.check("httpapi")


# --------------------------------------------------------------------------------------------
# Slack
# --------------------------------------------------------------------------------------------
def slack_error(error: str) -> Callable[[str], Any]:
    return lambda text: {"ok": False, "error": error, "detail": text}


def test_slack_keeps_secrets_out(sinks: Sinks, metrics: CollectorRegistry,
                                 started: Callable[[FakeVendor], Any]) -> None:
    """A secret token and messages holding an email, a card and a phone: posted, then
    ``ok: false`` answers (caller error, invalid_auth), a 500 and 429s, each quoting them."""
    make_vendor(metrics, "slack")
    fake = started(EchoSlack())
    slack = vg_slack.WebClient(token=SLACK_TOKEN, base_url=fake.url + "/api/", timeout=2,
                               registry=metrics)
    text = f"refund for {EMAIL}: card {CARD}, call {PHONE}"

    assert slack.chat_postMessage(channel="C1", text=text)["ok"] is True
    fake.script(echo(200, slack_error("channel_not_found")))
    with pytest.raises(SlackApiError) as refused:
        slack.chat_postMessage(channel="C404", text=text)
    assert SLACK_TOKEN in str(refused.value)                       # the vendor did quote it
    fake.script(echo(200, slack_error("invalid_auth")))
    with pytest.raises(SlackApiError):
        slack.chat_postMessage(channel="C1", text=text)
    fake.script(echo(500, slack_error("fatal_error")))
    with pytest.raises(SlackApiError):
        slack.chat_postMessage(channel="C1", text=text)
    fake.script(echo(429, slack_error("ratelimited"), {"Retry-After": "0"}))
    with pytest.raises(SlackApiError):
        slack.chat_postMessage(channel="C1", text=text)             # 3 attempts

    assert fake.count(POST_MESSAGE) == 7
    assert fake.posted() == 1
    op = "chat.postMessage"
    assert calls(metrics, "slack", op, "success") == 1
    assert calls(metrics, "slack", op, "caller_error") == 1
    assert calls(metrics, "slack", op, "error") == 3
    sinks.check("slack")


# --------------------------------------------------------------------------------------------
# Twilio through the requests adapter
# --------------------------------------------------------------------------------------------
def twilio_error(code: int) -> Callable[[str], Any]:
    return lambda text: {"code": code, "message": f"Invalid 'To' Phone Number: {text}",
                         "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": 400}


def test_twilio_keeps_secrets_out(sinks: Sinks, metrics: CollectorRegistry,
                                  started: Callable[[FakeVendor], Any]) -> None:
    """A secret auth token and phone numbers, a body with an email and a card: an SMS sent,
    then a 400, a 500 and 429s that quote the request (credentials decoded)."""
    make_vendor(metrics, "twilio")
    fake = started(EchoTwilio())
    http = TwilioHttpClient(timeout=2)
    mount(http.session, GuardedAdapter({"127.0.0.1": "twilio"}, registry=metrics))
    sinks.closers.append(http.session.close)
    client = TwilioClient(TWILIO_ACCOUNT, TWILIO_TOKEN, http_client=http)
    client.api.base_url = fake.url
    body = f"Receipt for {EMAIL}: card {CARD}"

    def send() -> Any:
        return client.messages.create(to=PHONE, from_=SENDER_PHONE, body=body)

    assert send().status == "queued"
    fake.script(echo(400, twilio_error(21211)))
    with pytest.raises(TwilioRestException) as refused:
        send()
    assert TWILIO_TOKEN in str(refused.value)                      # the vendor did quote it
    fake.script(echo(500, twilio_error(20500)))
    with pytest.raises(TwilioRestException):
        send()                                                    # a POST: not resent
    fake.script(echo(429, twilio_error(20429), {"Retry-After": "0"}))
    with pytest.raises(TwilioRestException):
        send()                                                    # 3 attempts

    assert fake.count(MESSAGES, method="POST") == 6
    assert fake.accepted() == 1
    assert calls(metrics, "twilio", "post", "success") == 1
    assert calls(metrics, "twilio", "post", "caller_error") == 1
    assert calls(metrics, "twilio", "post", "error") == 2
    sinks.check("twilio")


# --------------------------------------------------------------------------------------------
# the check itself
# --------------------------------------------------------------------------------------------
def test_assert_no_secrets_catches_every_variant() -> None:
    """Secrets are found as is, in other letter cases and URL-encoded; clean text passes."""
    assert_no_secrets("clean", "vendorguard_calls_total{vendor=\"acme\"} 1.0")
    for text in (f"key={SENDGRID_KEY}", SENDGRID_KEY.upper(), SENDGRID_KEY.lower(),
                 f"to={quote_plus(EMAIL)}", f"phone={quote(PHONE, safe='')}",
                 EMAIL.upper(), f"Authorization: Basic {TWILIO_BASIC}"):
        with pytest.raises(AssertionError, match="leaks"):
            assert_no_secrets("planted", text)


class sk_test_leakcheck_4242(Exception):  # named after a secret, on purpose
    """An exception whose *type name* is a secret: the outbox keeps type names."""


def test_sinks_catch_planted_secrets(sinks: Sinks, metrics: CollectorRegistry,
                                     tmp_path: Path) -> None:
    """A vendor named with no secret, and a secret planted in each sink (an operator's control
    reason, a metric label, a span's attribute, event and status, vendorguard log records and
    a logged exception, an outbox error type name): the check reports every one of those
    sinks, so the tests above cannot pass vacuously."""
    vendor = make_vendor(metrics, "planted")

    @vendor.guard("op")
    def op() -> str:
        return "ok"

    assert op() == "ok"
    assert sinks.leaks() == []                      # clean so far
    vendor.force_open(reason=f"call the customer back on {PHONE}", actor="oncall")
    Counter("planted_total", "A metric labelled with a secret.", ("key",),
            registry=metrics).labels(SENDGRID_KEY.upper()).inc()
    with sinks.provider.get_tracer("planted").start_as_current_span("planted") as span:
        span.set_attribute("email", EMAIL)
        span.add_event("planted", {"card": CARD})
        span.set_status(Status(StatusCode.ERROR, PHONE))
    planted_log = logging.getLogger("vendorguard.planted")
    planted_log.debug("card %s", CARD)
    try:
        raise VendorDown(SLACK_TOKEN)
    except VendorDown:
        planted_log.exception("planted failure")
    outbox = vg.Outbox(tmp_path / "planted.db", max_attempts=1, registry=metrics)
    sinks.outboxes.append(outbox)

    def deliver(payload: Any) -> None:
        raise sk_test_leakcheck_4242("no")

    outbox.register("planted-outbox", "op", deliver)  # not "planted": its circuit is open
    outbox.enqueue("planted-outbox", "op", {})
    assert outbox.drain() == 0

    leaks = "\n".join(sinks.leaks())
    for where in ("/metrics", "/vendors leaks", "span 'planted' attribute email",
                  "span 'planted' event 'planted' attribute card",
                  "span 'planted' status description", "log vendorguard:WARNING",
                  "log vendorguard.planted:DEBUG 'card %s'",
                  "log vendorguard.planted:ERROR 'planted failure'", "audit entries",
                  "audit file", "outbox dead message"):
        assert where in leaks, (where, leaks)
    with pytest.raises(AssertionError, match="secrets leaked"):
        sinks.check("planted")

