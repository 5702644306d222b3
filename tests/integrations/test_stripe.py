"""The Stripe drop-in with the real SDK against a loopback fake: one idempotency key per logical
call, declines that never trip the breaker, what is retried and what is not, bounded attempts,
reads with fallbacks, the wrapped client, the module-level style, and no secrets in metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

stripe = pytest.importorskip("stripe")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from stripe._api_requestor import _APIRequestor  # noqa: E402
from stripe._api_resource import APIResource  # noqa: E402
from stripe._stripe_object import StripeObject  # noqa: E402
from vendorguard.integrations import stripe as vg_stripe  # noqa: E402
from vendorguard.integrations.stripe import (  # noqa: E402
    StripeClient,
    instrument,
    uninstrument,
    wrap,
)

import vendorguard as vg  # noqa: E402
from tests.conftest import sample  # noqa: E402
from tests.integrations.stripe_fake import (  # noqa: E402
    BAD_REQUEST,
    CARD_DECLINED,
    CONFLICT,
    DROP,
    IDEMPOTENCY_ERROR,
    OK,
    PAYMENT_INTENTS,
    SERVER_ERROR,
    SERVER_ERROR_NO_RETRY,
    UNAUTHORIZED,
    UNAVAILABLE,
    Answer,
    FakeStripe,
    error,
    hang,
    rate_limited,
    refused_url,
)

KEY = "sk_test_vendorguard_fake_0123456789"
ATTEMPT = 0.3
"""The attempt bound of the test policy (seconds)."""
ATTEMPTS = 3
HUNG = 5.0
"""How long a hanging answer hangs: far beyond ATTEMPT (the fake's stop() ends it early)."""
HANG_GUARD = 5.0
"""A generous upper bound on calls that must not hang: a hang guard, not a perf target."""
FORBIDDEN = error(403, "invalid_request_error",
                  "The provided key does not have the required permissions.")
REASONS = ("transient", "ambiguous", "fatal", "timeout", "rate_limited")
OUTCOMES = ("success", "caller_error", "error", "timeout", "rejected")
PARAMS = {"amount": 1000, "currency": "usd"}


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()
    assert server.errors == []  # the fake itself never failed while answering


def stripe_vendor(metrics: CollectorRegistry, *, attempts: int = ATTEMPTS, failures: int = 5,
                  attempt: float = ATTEMPT, total: float = 10.0) -> vg.Vendor:
    """A small test policy under the name the drop-in looks for."""
    return vg.Vendor("stripe", timeout=vg.Timeout(attempt=attempt, total=total),
                     retry=vg.Retry(attempts=attempts,
                                    backoff=vg.Backoff(initial=0.01, maximum=0.05)),
                     breaker=vg.Breaker(failures=failures, reset_after=30.0),
                     registry=metrics)


@pytest.fixture
def vendor(metrics: CollectorRegistry) -> vg.Vendor:
    return stripe_vendor(metrics)


@pytest.fixture
def client(vendor: vg.Vendor, fake: FakeStripe, metrics: CollectorRegistry) -> StripeClient:
    return StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)


@pytest.fixture
def events() -> Iterator[list[vg.Event]]:
    seen: list[vg.Event] = []
    vg.add_observer(seen.append)
    yield seen
    vg.remove_observer(seen.append)


@pytest.fixture
def stripe_globals(fake: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> FakeStripe:
    """The module-level configuration aimed at the fake (restored after the test), with the
    global SDK retries left at a non-zero value, as many applications have them."""
    monkeypatch.setattr(stripe, "api_key", KEY)
    monkeypatch.setattr(stripe, "api_base", fake.url)
    monkeypatch.setattr(stripe, "default_http_client", None)
    monkeypatch.setattr(stripe, "max_network_retries", 2)
    return fake


@pytest.fixture
def instrumented(stripe_globals: FakeStripe, vendor: vg.Vendor,
                 metrics: CollectorRegistry) -> Iterator[vg_stripe.StripeGuards]:
    guards = instrument(registry=metrics)
    try:
        yield guards
    finally:
        uninstrument()


def calls(metrics: CollectorRegistry, outcome: str,
          operation: str = "payment_intents.create") -> float:
    return sample(metrics, "vendorguard_calls_total", vendor="stripe", operation=operation,
                  outcome=outcome)


def all_calls(metrics: CollectorRegistry, operation: str = "payment_intents.create") -> float:
    return sum(calls(metrics, outcome, operation) for outcome in OUTCOMES)


def retries(metrics: CollectorRegistry, reason: str,
            operation: str = "payment_intents.create") -> float:
    return sample(metrics, "vendorguard_retries_total", vendor="stripe", operation=operation,
                  reason=reason)


def all_retries(metrics: CollectorRegistry, operation: str = "payment_intents.create") -> float:
    return sum(retries(metrics, reason, operation) for reason in REASONS)


def fallbacks(metrics: CollectorRegistry, reason: str, operation: str) -> float:
    return sample(metrics, "vendorguard_fallbacks_total", vendor="stripe", operation=operation,
                  reason=reason)


def circuit_closed(metrics: CollectorRegistry) -> float:
    return sample(metrics, "vendorguard_circuit_state", vendor="stripe", circuit="stripe",
                  state="closed")


def attempts_of(events: list[vg.Event]) -> list[int]:
    return [e.attempts for e in events if isinstance(e, vg.events.CallEnded)]


def one_key(fake: FakeStripe, path: str = PAYMENT_INTENTS) -> str:
    """The single Idempotency-Key every POST to ``path`` carried (fails if there were several,
    or none)."""
    keys = fake.keys(path, method="POST")
    assert keys, "no POST reached the fake"
    assert len(set(keys)) == 1, f"one logical call sent several keys: {keys}"
    assert keys[0] is not None, "the POST carried no Idempotency-Key"
    return keys[0]


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run one async scenario on a fresh event loop. Each async test builds its own client
    inside: the SDK's async HTTP client keeps pooled connections of the loop it first ran on."""
    return asyncio.run(main())


def is_fake_server_thread(thread: threading.Thread) -> bool:
    """A thread of the fake (its accept loop, or socketserver's per-connection handler)."""
    return thread.name == FakeStripe.name or "process_request_thread" in thread.name


# --------------------------------------------------------------------------------------------
# one Idempotency-Key per logical call
# --------------------------------------------------------------------------------------------
def test_retries_reuse_one_key_and_create_one_intent(client: StripeClient, fake: FakeStripe,
                                                     metrics: CollectorRegistry) -> None:
    """500, 500, 200: three POSTs with one Idempotency-Key, one intent created; the next
    logical call gets a key of its own."""
    fake.script(SERVER_ERROR, SERVER_ERROR, OK)
    intent = client.v1.payment_intents.create(PARAMS)
    assert isinstance(intent, stripe.PaymentIntent)
    assert intent.amount == 1000
    keys = fake.keys(PAYMENT_INTENTS, method="POST")
    assert len(keys) == 3
    first = one_key(fake)
    assert fake.created() == 1
    assert fake.charges() == 1
    assert retries(metrics, "transient") == 2
    assert calls(metrics, "success") == 1

    fake.clear()
    client.v1.payment_intents.create(PARAMS)
    second = one_key(fake)
    assert second != first
    assert fake.created() == 2


@pytest.mark.parametrize(("answer", "reason"), [
    (UNAVAILABLE, "transient"), (CONFLICT, "transient"), (DROP, "transient"),
    (hang(HUNG), "timeout")], ids=["503", "409", "drop", "hang"])
def test_failure_then_ok_is_retried_with_the_same_key(client: StripeClient, fake: FakeStripe,
                                                      metrics: CollectorRegistry,
                                                      answer: Answer, reason: str) -> None:
    """503, 409 lock_timeout, a dropped connection and a hang past the attempt bound are
    retried with the same key; the retry succeeds and Stripe charged once (a hang's POST was
    executed before the answer was lost: the retry is answered the stored result)."""
    fake.script(answer, OK)
    start = time.monotonic()
    intent = client.v1.payment_intents.create(PARAMS)
    assert time.monotonic() - start < HANG_GUARD
    assert len(fake.keys(PAYMENT_INTENTS, method="POST")) == 2
    one_key(fake)
    assert fake.charges() == 1
    assert fake.created() == 1
    assert intent.id == "pi_1"
    assert retries(metrics, reason) == 1
    assert all_retries(metrics) == 1
    assert calls(metrics, "success") == 1


def test_the_callers_key_is_kept_on_every_attempt(client: StripeClient, fake: FakeStripe,
                                                  metrics: CollectorRegistry) -> None:
    """options={"idempotency_key": "order-42"} is sent on each attempt, unchanged; calling
    again with it later is answered Stripe's stored result, not a second intent."""
    fake.script(SERVER_ERROR, UNAVAILABLE, OK)
    intent = client.v1.payment_intents.create(PARAMS, {"idempotency_key": "order-42"})
    assert fake.keys(PAYMENT_INTENTS, method="POST") == ["order-42"] * 3
    again = client.v1.payment_intents.create(PARAMS, {"idempotency_key": "order-42"})
    assert again.id == intent.id
    assert fake.created() == 1
    assert fake.charges() == 1
    assert calls(metrics, "success") == 2


def test_failed_call_carries_its_key_to_resume_with(vendor: vg.Vendor, fake: FakeStripe,
                                                    metrics: CollectorRegistry) -> None:
    """When every attempt timed out, the raised APIConnectionError carries the key all of them
    sent; resuming with it later replays what Stripe did, so the customer is charged once."""
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
    fake.script(hang(HUNG))
    with vg.testing_mode(), pytest.raises(stripe.APIConnectionError) as raised:
        client.v1.payment_intents.create(PARAMS)
    key = one_key(fake)
    assert raised.value.idempotency_key == key
    assert fake.created() == 1  # Stripe did the work; the answers were lost

    fake.script(OK)
    intent = client.v1.payment_intents.create(
        PARAMS, {"idempotency_key": raised.value.idempotency_key})
    assert intent.id == "pi_1"
    assert fake.created() == 1
    assert fake.charges() == 1


# --------------------------------------------------------------------------------------------
# declines and bad requests: the caller's business
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "raised_type"), [
    (CARD_DECLINED, stripe.CardError), (BAD_REQUEST, stripe.InvalidRequestError),
    (IDEMPOTENCY_ERROR, stripe.IdempotencyError), (UNAUTHORIZED, stripe.AuthenticationError),
    (FORBIDDEN, stripe.PermissionError)],
    ids=["card_declined", "bad_request", "idempotency_error", "unauthorized", "forbidden"])
def test_caller_errors_are_raised_at_once_and_never_open_the_breaker(
        vendor: vg.Vendor, fake: FakeStripe, metrics: CollectorRegistry, answer: Answer,
        raised_type: type[Exception]) -> None:
    """A decline (402), bad request (400), idempotency error, 401 or 403 is raised as the SDK's
    own class after exactly one request, outcome caller_error, no retry; more of them in a row
    than the breaker's threshold leave the circuit closed and the next call reaches Stripe."""
    threshold = vendor.policy.breaker.failures
    assert threshold is not None
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
    fake.script(answer)
    with pytest.raises(raised_type) as raised:
        client.v1.payment_intents.create(PARAMS)
    assert type(raised.value) is raised_type
    assert fake.count() == 1
    assert raised.value.idempotency_key == one_key(fake)
    assert calls(metrics, "caller_error") == 1
    assert all_retries(metrics) == 0

    declines = threshold * 2
    for _ in range(declines - 1):
        with pytest.raises(raised_type):
            client.v1.payment_intents.create(PARAMS)
    assert fake.count() == declines
    assert calls(metrics, "caller_error") == declines
    assert all_retries(metrics) == 0
    assert vendor.circuit_for("payment_intents.create").state == "closed"
    assert circuit_closed(metrics) == 1

    fake.script(OK)
    assert client.v1.payment_intents.create(PARAMS).status == "requires_payment_method"
    assert fake.count() == declines + 1
    assert calls(metrics, "success") == 1


# --------------------------------------------------------------------------------------------
# what is retried, and when
# --------------------------------------------------------------------------------------------
def test_rate_limit_is_retried_no_earlier_than_retry_after(
        client: StripeClient, fake: FakeStripe, metrics: CollectorRegistry,
        events: list[vg.Event]) -> None:
    """A 429 with Retry-After: 0.3 is retried with the same key, and the retry reaches Stripe
    at least 0.3 s after the first request."""
    fake.script(rate_limited(retry_after=0.3), OK)
    client.v1.payment_intents.create(PARAMS)
    first, second = fake.seen(PAYMENT_INTENTS, method="POST")
    assert first.status == 429
    assert second.status == 200
    assert second.at - first.at >= 0.3
    one_key(fake)
    scheduled = [e for e in events if isinstance(e, vg.events.RetryScheduled)]
    assert [e.reason for e in scheduled] == ["rate_limited"]
    assert scheduled[0].delay >= 0.3
    assert retries(metrics, "rate_limited") == 1
    assert all_retries(metrics) == 1
    assert calls(metrics, "success") == 1


@pytest.mark.parametrize(("answer", "raised_type"), [
    (SERVER_ERROR, stripe.APIError), (CONFLICT, stripe.APIError),
    (DROP, stripe.APIConnectionError)], ids=["500", "409", "drop"])
def test_unkeyed_post_is_not_resent(vendor: vg.Vendor, fake: FakeStripe,
                                    metrics: CollectorRegistry, answer: Answer,
                                    raised_type: type[Exception]) -> None:
    """With idempotency_keys=False a failure Stripe may have acted on ends the call: exactly
    one request, the SDK's error, outcome error, no retry, no key on the error."""
    client = StripeClient(KEY, base_addresses={"api": fake.url}, idempotency_keys=False,
                          registry=metrics)
    fake.script(answer, OK)
    with pytest.raises(raised_type) as raised:
        client.v1.payment_intents.create(PARAMS)
    assert type(raised.value) is raised_type
    assert fake.count() == 1
    assert not hasattr(raised.value, "idempotency_key")
    assert all_retries(metrics) == 0
    assert calls(metrics, "error") == 1
    assert fake.created() == 0


def test_keyed_post_is_resent_after_a_500(client: StripeClient, fake: FakeStripe,
                                          metrics: CollectorRegistry) -> None:
    """The contrast: with keys on (the default), the same 500 then 200 is retried and
    succeeds."""
    fake.script(SERVER_ERROR, OK)
    client.v1.payment_intents.create(PARAMS)
    assert fake.count() == 2
    one_key(fake)
    assert retries(metrics, "transient") == 1
    assert calls(metrics, "success") == 1


def test_should_retry_false_is_obeyed(client: StripeClient, fake: FakeStripe,
                                      metrics: CollectorRegistry) -> None:
    """A 500 with Stripe-Should-Retry: false is not retried, even with a key."""
    fake.script(SERVER_ERROR_NO_RETRY, OK)
    with pytest.raises(stripe.APIError) as raised:
        client.v1.payment_intents.create(PARAMS)
    assert fake.count() == 1
    assert raised.value.idempotency_key == one_key(fake)
    assert all_retries(metrics) == 0
    assert calls(metrics, "error") == 1


def test_refused_connection_is_retried_up_to_attempts(vendor: vg.Vendor,
                                                      metrics: CollectorRegistry,
                                                      events: list[vg.Event]) -> None:
    """Connection refused (nothing was sent) is transient: every attempt is made, then the
    SDK's APIConnectionError is raised, outcome error."""
    client = StripeClient(KEY, base_addresses={"api": refused_url()}, registry=metrics)
    with vg.testing_mode(), pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.create(PARAMS)
    assert attempts_of(events) == [ATTEMPTS]
    assert retries(metrics, "transient") == ATTEMPTS - 1
    assert calls(metrics, "error") == 1


def test_open_breaker_rejects_without_a_request(metrics: CollectorRegistry, fake: FakeStripe,
                                                events: list[vg.Event]) -> None:
    """After enough refused attempts the circuit opens; the next call raises CircuitOpenError
    and no request reaches Stripe, though it is listening again."""
    vendor = stripe_vendor(metrics, failures=ATTEMPTS)
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
    fake.stop()  # Stripe is down: its port refuses connections
    with vg.testing_mode(), pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.create(PARAMS)
    assert vendor.circuit_for("payment_intents.create").state == "open"
    fake.start()  # back on the same port, but the circuit is open
    with pytest.raises(vg.CircuitOpenError):
        client.v1.payment_intents.create(PARAMS)
    assert fake.count() == 0
    assert attempts_of(events) == [ATTEMPTS, 0]
    assert calls(metrics, "rejected") == 1
    assert circuit_closed(metrics) == 0


# --------------------------------------------------------------------------------------------
# reads
# --------------------------------------------------------------------------------------------
def test_retrieve_is_retried_without_a_key(client: StripeClient, fake: FakeStripe,
                                           metrics: CollectorRegistry) -> None:
    """A GET is idempotent by nature: retried after a 500, with no Idempotency-Key."""
    created = client.v1.payment_intents.create(PARAMS)
    fake.clear()
    fake.script(SERVER_ERROR, OK)
    intent = client.v1.payment_intents.retrieve(created.id)
    assert intent.id == created.id
    assert fake.keys(method="GET") == [None, None]
    assert fake.count() == 2
    assert retries(metrics, "transient", "payment_intents.retrieve") == 1
    assert calls(metrics, "success", "payment_intents.retrieve") == 1


def test_retrieve_fallback_serves_the_last_good_intent(vendor: vg.Vendor, fake: FakeStripe,
                                                       metrics: CollectorRegistry) -> None:
    """fallbacks={"payment_intents.retrieve": LastGood} serves the intent last retrieved when
    Stripe is down; a create during the outage still fails loudly."""
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics,
                          fallbacks={"payment_intents.retrieve": vg.LastGood(ttl=60)})
    created = client.v1.payment_intents.create({"amount": 4200, "currency": "eur"})
    fresh = client.v1.payment_intents.retrieve(created.id)
    fake.stop()  # Stripe is down
    with vg.testing_mode():
        served = client.v1.payment_intents.retrieve(created.id)
        with pytest.raises((stripe.APIConnectionError, vg.CircuitOpenError)):
            client.v1.payment_intents.create(PARAMS)
    assert served.id == fresh.id == created.id
    assert served.amount == 4200
    assert fallbacks(metrics, "error", "payment_intents.retrieve") == 1
    assert calls(metrics, "error") + calls(metrics, "rejected") == 1  # raised, not served


@pytest.mark.parametrize("operation", ["payment_intents.create", "payment_intents.confirm",
                                       "refunds.create", "customers.update"])
def test_fallback_on_a_write_is_refused(vendor: vg.Vendor, operation: str) -> None:
    """A fallback for a write is a ValueError at construction, naming the operation."""
    with pytest.raises(ValueError, match=operation.replace(".", r"\.")):
        StripeClient(KEY, fallbacks={operation: vg.LastGood(ttl=60)})


def test_list_is_guarded_and_may_have_a_fallback(vendor: vg.Vendor, fake: FakeStripe,
                                                 metrics: CollectorRegistry) -> None:
    """payment_intents.list is a read: it may have a fallback, is retried after a 500 without
    a key, and is counted under its own operation name."""
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics,
                          fallbacks={"payment_intents.list": vg.LastGood(ttl=60)})
    client.v1.payment_intents.create(PARAMS)
    fake.clear()
    fake.script(SERVER_ERROR, OK)
    listed = client.v1.payment_intents.list()
    assert [intent.id for intent in listed.data] == ["pi_1"]
    assert fake.keys(PAYMENT_INTENTS, method="GET") == [None, None]
    assert retries(metrics, "transient", "payment_intents.list") == 1
    assert calls(metrics, "success", "payment_intents.list") == 1


# --------------------------------------------------------------------------------------------
# one layer retries
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("retries_asked", [1, 2, 5])
def test_sdk_retries_are_refused(vendor: vg.Vendor, retries_asked: int) -> None:
    """max_network_retries other than 0 is a ValueError: vendorguard is the one retry layer."""
    with pytest.raises(ValueError, match="max_network_retries"):
        StripeClient(KEY, max_network_retries=retries_asked)
    StripeClient(KEY, max_network_retries=0)  # 0 is what the drop-in uses anyway


def test_default_vendor_makes_only_its_own_attempts(fake: FakeStripe,
                                                    metrics: CollectorRegistry) -> None:
    """Without a registered vendor the drop-in creates "stripe" with POLICY; a Stripe that
    keeps failing gets exactly POLICY's attempts, all with one key (no SDK retries inside)."""
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
    assert vg.vendor("stripe").policy == vg_stripe.POLICY
    fake.script(SERVER_ERROR)
    with vg.testing_mode(), pytest.raises(stripe.APIError):
        client.v1.payment_intents.create(PARAMS)
    assert fake.count() == vg_stripe.POLICY.retry.attempts
    one_key(fake)
    assert calls(metrics, "error") == 1


# --------------------------------------------------------------------------------------------
# async
# --------------------------------------------------------------------------------------------
def test_async_retries_reuse_one_key(vendor: vg.Vendor, fake: FakeStripe,
                                     metrics: CollectorRegistry) -> None:
    """create_async: 500, 503, 200 -> three POSTs with one key, one intent."""
    fake.script(SERVER_ERROR, UNAVAILABLE, OK)

    async def main() -> Any:
        client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
        return await client.v1.payment_intents.create_async(PARAMS)

    intent = run(main)
    assert intent.id == "pi_1"
    assert fake.count() == 3
    one_key(fake)
    assert fake.created() == 1
    assert retries(metrics, "transient") == 2
    assert calls(metrics, "success") == 1


def test_async_decline_is_not_retried(vendor: vg.Vendor, fake: FakeStripe,
                                      metrics: CollectorRegistry) -> None:
    """create_async answered 402: CardError after one request, outcome caller_error."""
    fake.script(CARD_DECLINED, OK)

    async def main() -> Any:
        client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
        return await client.v1.payment_intents.create_async(PARAMS)

    with pytest.raises(stripe.CardError) as raised:
        run(main)
    assert raised.value.code == "card_declined"
    assert fake.count() == 1
    assert raised.value.idempotency_key == one_key(fake)
    assert all_retries(metrics) == 0
    assert calls(metrics, "caller_error") == 1


def test_async_hang_is_cancelled_at_the_attempt_bound(vendor: vg.Vendor, fake: FakeStripe,
                                                      metrics: CollectorRegistry) -> None:
    """A Stripe that never answers: each async attempt is cancelled at its bound, the call
    ends well before the hang would, outcome timeout."""
    fake.script(hang(HUNG))

    async def main() -> Any:
        client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
        return await client.v1.payment_intents.create_async(PARAMS)

    start = time.monotonic()
    with vg.testing_mode(), pytest.raises((TimeoutError, stripe.APIConnectionError)):
        run(main)
    took = time.monotonic() - start
    assert ATTEMPT * 0.9 <= took < HANG_GUARD
    assert 1 <= fake.count() <= ATTEMPTS
    one_key(fake)
    assert calls(metrics, "timeout") == 1
    assert all_calls(metrics) == 1


def test_async_timeout_then_ok_is_retried_with_the_same_key(
        vendor: vg.Vendor, fake: FakeStripe, metrics: CollectorRegistry) -> None:
    """As in the sync path, an async attempt cancelled at its bound is a keyed POST that may be
    resent: the retry carries the same key and is answered the stored result."""
    fake.script(hang(HUNG), OK)

    async def main() -> Any:
        client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
        return await client.v1.payment_intents.create_async(PARAMS)

    with vg.testing_mode():
        intent = run(main)
    assert intent.id == "pi_1"
    assert fake.count() == 2
    one_key(fake)
    assert fake.created() == 1
    assert fake.charges() == 1
    assert retries(metrics, "timeout") == 1
    assert calls(metrics, "success") == 1


def test_async_timeout_carries_the_idempotency_key(vendor: vg.Vendor, fake: FakeStripe,
                                                   metrics: CollectorRegistry) -> None:
    """A keyed async POST that timed out may have been executed by Stripe (the fake created
    the intent): the raised error carries the key, to resume with it as after a sync timeout."""
    fake.script(hang(HUNG))

    async def main() -> Any:
        client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
        return await client.v1.payment_intents.create_async(PARAMS)

    with vg.testing_mode(), pytest.raises((vg.VendorTimeoutError,
                                           stripe.APIConnectionError)) as raised:
        run(main)
    assert fake.created() == 1
    assert getattr(raised.value, "idempotency_key", None) == one_key(fake)


# --------------------------------------------------------------------------------------------
# bounded attempts without threads
# --------------------------------------------------------------------------------------------
def test_attempt_timeout_bounds_the_socket_without_threads(fake: FakeStripe,
                                                           metrics: CollectorRegistry) -> None:
    """Stripe hangs 5 s; each sync attempt ends at its 0.3 s bound through the SDK's own socket
    timeout: APIConnectionError (ReadTimeout underneath), outcome timeout, no worker thread
    (the only new threads are the fake server's own connection handlers)."""
    vendor = stripe_vendor(metrics, attempt=0.3)
    client = StripeClient(KEY, base_addresses={"api": fake.url}, registry=metrics)
    fake.script(hang(HUNG))
    before = set(threading.enumerate())
    count_before = threading.active_count()
    start = time.monotonic()
    with vg.testing_mode(), pytest.raises(stripe.APIConnectionError) as raised:
        client.v1.payment_intents.create(PARAMS)
    took = time.monotonic() - start
    assert 0.3 * ATTEMPTS * 0.9 <= took < HANG_GUARD
    assert "Timeout" in type(raised.value.__cause__).__name__
    assert fake.count() == ATTEMPTS
    assert raised.value.idempotency_key == one_key(fake)
    assert calls(metrics, "timeout") == 1
    assert retries(metrics, "timeout") == ATTEMPTS - 1
    assert vendor._pool is None
    new = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in new if not is_fake_server_thread(t)] == []
    assert threading.active_count() - len(new) <= count_before


# --------------------------------------------------------------------------------------------
# wrap() and with_stripe_context()
# --------------------------------------------------------------------------------------------
def test_wrap_guards_a_view_and_leaves_the_client_alone(vendor: vg.Vendor, fake: FakeStripe,
                                                        metrics: CollectorRegistry) -> None:
    """wrap(stripe.StripeClient(...)) is a guarded view (one key across retries, counted) that
    is still a StripeClient; the original client, its services and HTTP client are unchanged
    and its calls are not counted."""
    raw = stripe.StripeClient(KEY, base_addresses={"api": fake.url})
    raw_v1, raw_requestor = raw.v1, raw._requestor
    raw_http = raw_requestor._client
    wrapped = wrap(raw, registry=metrics)
    assert isinstance(wrapped, stripe.StripeClient)

    fake.script(SERVER_ERROR, OK)
    intent = wrapped.v1.payment_intents.create(PARAMS)
    assert intent.id == "pi_1"
    assert fake.count() == 2
    one_key(fake)
    assert retries(metrics, "transient") == 1
    assert calls(metrics, "success") == 1

    assert raw.v1 is raw_v1
    assert raw._requestor is raw_requestor
    assert type(raw._requestor) is _APIRequestor
    assert raw._requestor._client is raw_http
    assert type(raw_http) is stripe.RequestsClient
    fake.clear()
    fake.script(SERVER_ERROR, OK)
    with pytest.raises(stripe.APIError):
        raw.v1.payment_intents.create(PARAMS)  # the SDK's own client: no retry, not counted
    assert fake.count() == 1
    assert all_calls(metrics) == 1
    assert all_retries(metrics) == 1
    assert wrap(StripeClient(KEY, registry=metrics)).vendorguard.vendor is vendor


def test_stripe_context_client_is_guarded(client: StripeClient, fake: FakeStripe,
                                          metrics: CollectorRegistry) -> None:
    """client.with_stripe_context(...) gives a client guarded by the same guards."""
    other = client.with_stripe_context("acct_123")
    assert other.vendorguard is client.vendorguard
    fake.script(SERVER_ERROR, OK)
    other.v1.payment_intents.create(PARAMS)
    assert fake.count() == 2
    one_key(fake)
    assert retries(metrics, "transient") == 1
    assert calls(metrics, "success") == 1


# --------------------------------------------------------------------------------------------
# the module-level style: instrument() / uninstrument()
# --------------------------------------------------------------------------------------------
def test_instrumented_create_is_retried_with_one_key(instrumented: vg_stripe.StripeGuards,
                                                     fake: FakeStripe,
                                                     metrics: CollectorRegistry) -> None:
    """stripe.PaymentIntent.create(...) with stripe.max_network_retries = 2: 500, 500, 200 is
    three requests (vendorguard's attempts, no SDK retries inside them), one key, one intent."""
    assert stripe.max_network_retries == 2
    fake.script(SERVER_ERROR, SERVER_ERROR, OK)
    intent = stripe.PaymentIntent.create(amount=1000, currency="usd")
    assert intent.id == "pi_1"
    assert fake.count() == 3
    one_key(fake)
    assert fake.created() == 1
    assert retries(metrics, "transient") == 2
    assert calls(metrics, "success") == 1

    fake.clear()
    fake.script(SERVER_ERROR)
    with vg.testing_mode(), pytest.raises(stripe.APIError) as raised:
        stripe.PaymentIntent.create(amount=1000, currency="usd", idempotency_key="order-7")
    assert fake.keys() == ["order-7"] * ATTEMPTS  # not ATTEMPTS x 3 with the SDK's retries
    assert raised.value.idempotency_key == "order-7"
    assert instrument() is instrumented  # instrumenting again keeps the guards in place


def test_instrumented_operation_names(instrumented: vg_stripe.StripeGuards, fake: FakeStripe,
                                      metrics: CollectorRegistry) -> None:
    """create, retrieve, modify and confirm (class and instance) are counted as
    payment_intents.create / .retrieve / .update / .confirm."""
    created = stripe.PaymentIntent.create(amount=1000, currency="usd")
    retrieved = stripe.PaymentIntent.retrieve(created.id)
    modified = stripe.PaymentIntent.modify(created.id, amount=2500)
    confirmed = stripe.PaymentIntent.confirm(created.id)
    assert retrieved.id == modified.id == confirmed.id == created.id
    assert modified.amount == 2500
    assert confirmed.status == "succeeded"
    assert retrieved.confirm().status == "succeeded"
    assert calls(metrics, "success", "payment_intents.create") == 1
    assert calls(metrics, "success", "payment_intents.retrieve") == 1
    assert calls(metrics, "success", "payment_intents.update") == 1
    assert calls(metrics, "success", "payment_intents.confirm") == 2
    assert [(s.method, s.path) for s in fake.seen()] == [
        ("POST", "/v1/payment_intents"), ("GET", "/v1/payment_intents/pi_1"),
        ("POST", "/v1/payment_intents/pi_1"), ("POST", "/v1/payment_intents/pi_1/confirm"),
        ("POST", "/v1/payment_intents/pi_1/confirm")]


def test_instrumented_decline_is_a_caller_error(instrumented: vg_stripe.StripeGuards,
                                                fake: FakeStripe,
                                                metrics: CollectorRegistry) -> None:
    """A decline of a module-level confirm is raised at once: one request, caller_error."""
    fake.script(CARD_DECLINED)
    with pytest.raises(stripe.CardError):
        stripe.PaymentIntent.confirm("pi_unknown")
    assert fake.count() == 1
    assert calls(metrics, "caller_error", "payment_intents.confirm") == 1
    assert all_retries(metrics, "payment_intents.confirm") == 0


def test_uninstrument_restores_the_sdk(stripe_globals: FakeStripe, vendor: vg.Vendor,
                                       metrics: CollectorRegistry) -> None:
    """uninstrument() puts back the SDK's own functions (the same objects) and the default HTTP
    client it had; module-level calls are no longer counted."""
    targets = [(APIResource, "_static_request"), (APIResource, "_static_request_async"),
               (StripeObject, "_request"), (StripeObject, "_request_async"),
               (_APIRequestor, "request"), (_APIRequestor, "request_async"),
               (_APIRequestor, "request_stream"), (_APIRequestor, "request_stream_async")]
    originals = [owner.__dict__[name] for owner, name in targets]
    original_static = APIResource.__dict__["_static_request"]
    instrument(registry=metrics)
    try:
        assert APIResource.__dict__["_static_request"] is not original_static
        assert isinstance(stripe.default_http_client, vg_stripe.RequestsClient)
        stripe.PaymentIntent.create(amount=1000, currency="usd")
        assert calls(metrics, "success") == 1
    finally:
        uninstrument()
    assert APIResource.__dict__["_static_request"] is original_static
    assert [owner.__dict__[name] for owner, name in targets] == originals
    assert all(owner.__dict__[name] is original
               for (owner, name), original in zip(targets, originals, strict=True))
    assert stripe.default_http_client is None

    stripe.PaymentIntent.retrieve("pi_1")
    stripe.PaymentIntent.create(amount=1000, currency="usd")
    assert stripe_globals.count() == 3
    assert all_calls(metrics, "payment_intents.retrieve") == 0
    assert all_calls(metrics) == 1
    uninstrument()  # a second time does nothing


# --------------------------------------------------------------------------------------------
# privacy
# --------------------------------------------------------------------------------------------
def test_no_api_key_or_idempotency_key_in_metrics(vendor: vg.Vendor, fake: FakeStripe,
                                                  metrics: CollectorRegistry,
                                                  events: list[vg.Event],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """After successes, retries, a decline and an exhausted call made with api key
    sk_test_SECRET123 and idempotency key order-SECRET, neither string (nor the amount) is in
    the exported metrics, vendorguard's events or vendorguard's log records."""
    caplog.set_level(logging.DEBUG, logger="vendorguard")
    secret_key, secret_idem, amount = "sk_test_SECRET123", "order-SECRET", 42424242
    client = StripeClient(secret_key, base_addresses={"api": fake.url}, registry=metrics)
    params = {"amount": amount, "currency": "usd"}
    fake.script(SERVER_ERROR, OK, CARD_DECLINED, rate_limited(0.0), OK, SERVER_ERROR)
    with vg.testing_mode():
        client.v1.payment_intents.create(params, {"idempotency_key": secret_idem})
        with pytest.raises(stripe.CardError):
            client.v1.payment_intents.confirm("pi_1", {}, {"idempotency_key": secret_idem + "1"})
        client.v1.payment_intents.update("pi_1", {"amount": amount},
                                         {"idempotency_key": secret_idem + "2"})
        with pytest.raises(stripe.APIError):
            client.v1.payment_intents.create(params, {"idempotency_key": secret_idem + "3"})
    assert fake.count() == 5 + ATTEMPTS
    exported = generate_latest(metrics).decode()
    assert 'operation="payment_intents.create"' in exported
    happened = "\n".join(repr(e) for e in events)
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.startswith("vendorguard"))
    for secret in (secret_key, "SECRET", secret_idem, str(amount)):
        assert secret not in exported
        assert secret not in happened
        assert secret not in logged
