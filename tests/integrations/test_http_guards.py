"""The HTTP guards (httpx sync and async transports, the requests adapter) against loopback
fakes: which vendor a request counts under, what is retried and when, what the client gets,
and how the breaker and the attempt timeout act — for each client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")

from prometheus_client import CollectorRegistry  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from urllib3.util import Timeout as Urllib3Timeout  # noqa: E402
from vendorguard.integrations.httpx import AsyncGuardedTransport, GuardedTransport  # noqa: E402
from vendorguard.integrations.requests import GuardedAdapter, mount  # noqa: E402

import vendorguard as vg  # noqa: E402
from tests.conftest import sample  # noqa: E402
from tests.integrations.fakehttp import (  # noqa: E402
    DROP,
    OK,
    Answer,
    FakeVendor,
    Incoming,
    hang,
    refused_url,
)

ATTEMPT = 0.3
HANG_GUARD = 2.5
"""A call that hangs on the vendor must fail well within this (the fake hangs 5 s, the
client's own timeout is 30 s)."""
KINDS = ["httpx", "httpx_async", "requests"]
MAPPING = {"127.0.0.1": "alpha", "localhost": "beta"}

REFUSED: dict[str, Any] = {"httpx": httpx.ConnectError, "httpx_async": httpx.ConnectError,
                           "requests": requests.exceptions.ConnectionError}
DROPPED: dict[str, Any] = {"httpx": httpx.RemoteProtocolError,
                           "httpx_async": httpx.RemoteProtocolError,
                           "requests": requests.exceptions.ConnectionError}
TIMED_OUT: dict[str, Any] = {"httpx": httpx.ReadTimeout,
                             "httpx_async": (httpx.TimeoutException, vg.VendorTimeoutError),
                             "requests": requests.exceptions.ReadTimeout}


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------
class BodyFake(FakeVendor):
    """A FakeVendor that also records each request's body length and framing (test data)."""

    record_headers = ("Content-Length", "Transfer-Encoding", "Idempotency-Key")

    def note(self, request: Incoming) -> dict[str, str]:
        return {"length": str(len(request.body)), "body": request.body.decode()}


@pytest.fixture
def fake() -> Iterator[BodyFake]:
    server = BodyFake().start()
    yield server
    server.stop()


def make_vendor(metrics: CollectorRegistry, name: str = "alpha", *, attempts: int = 3,
                failures: int = 3, attempt: float = ATTEMPT, total: float = 3.0) -> vg.Vendor:
    return vg.Vendor(name, timeout=vg.Timeout(attempt=attempt, total=total),
                     retry=vg.Retry(attempts=attempts,
                                    backoff=vg.Backoff(initial=0.01, maximum=0.05)),
                     breaker=vg.Breaker(failures=failures, reset_after=30),
                     registry=metrics)


@pytest.fixture
def alpha(metrics: CollectorRegistry) -> vg.Vendor:
    return make_vendor(metrics, "alpha")


@pytest.fixture
def beta(metrics: CollectorRegistry) -> vg.Vendor:
    return make_vendor(metrics, "beta")


class Caller:
    """One guarded client of ``kind``; ``request`` returns the status code or raises what the
    client raises. The async client runs on one event loop of its own."""

    def __init__(self, kind: str, vendors: dict[str, str] | None, default: str | None,
                 registry: CollectorRegistry, timeout: float | None, **options: Any) -> None:
        self.kind = kind
        self.timeout = timeout
        inner = options.pop("inner", None)
        if kind == "requests":
            adapter_class = options.pop("adapter_class", GuardedAdapter)
            self.adapter = adapter_class(vendors, default, registry=registry, **options)
            self.session = mount(requests.Session(), self.adapter)
            self.hosts = self.adapter.hosts
        elif kind == "httpx":
            self.transport = GuardedTransport(inner, vendors=vendors, default=default,
                                              registry=registry, **options)
            self.client = httpx.Client(transport=self.transport, timeout=timeout)
            self.hosts = self.transport.hosts
        else:
            self.loop = asyncio.new_event_loop()
            self.atransport = AsyncGuardedTransport(inner, vendors=vendors, default=default,
                                                    registry=registry, **options)
            self.aclient = httpx.AsyncClient(transport=self.atransport, timeout=timeout)
            self.hosts = self.atransport.hosts

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                body: Any = None) -> int:
        if self.kind == "requests":
            return int(self.session.request(method, url, headers=headers, data=body,
                                            timeout=self.timeout).status_code)
        if self.kind == "httpx":
            return self.client.request(method, url, headers=headers, content=body).status_code

        async def send() -> int:
            response = await self.aclient.request(method, url, headers=headers, content=body)
            return response.status_code

        return self.loop.run_until_complete(send())

    def close(self) -> None:
        if self.kind == "requests":
            self.session.close()
        elif self.kind == "httpx":
            self.client.close()
        else:
            self.loop.run_until_complete(self.aclient.aclose())
            self.loop.close()


Make = Callable[..., Caller]


@pytest.fixture
def make(metrics: CollectorRegistry) -> Iterator[Make]:
    made: list[Caller] = []

    def build(kind: str, vendors: dict[str, str] | None = None, default: str | None = None,
              *, timeout: float | None = 30.0, **options: Any) -> Caller:
        caller = Caller(kind, MAPPING if vendors is None else vendors, default, metrics,
                        timeout, **options)
        made.append(caller)
        return caller

    yield build
    for caller in made:
        caller.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def calls(metrics: CollectorRegistry, outcome: str, operation: str = "get",
          vendor: str = "alpha") -> float:
    return sample(metrics, "vendorguard_calls_total", vendor=vendor, operation=operation,
                  outcome=outcome)


def retries(metrics: CollectorRegistry, reason: str, operation: str = "get",
            vendor: str = "alpha") -> float:
    return sample(metrics, "vendorguard_retries_total", vendor=vendor, operation=operation,
                  reason=reason)


def all_calls(metrics: CollectorRegistry) -> float:
    """Every call counted, under any vendor, operation and outcome."""
    return sum(s.value for family in metrics.collect() if family.name == "vendorguard_calls"
               for s in family.samples if s.name == "vendorguard_calls_total")


def all_retries(metrics: CollectorRegistry) -> float:
    return sum(s.value for family in metrics.collect() if family.name == "vendorguard_retries"
               for s in family.samples if s.name == "vendorguard_retries_total")


def localhost(fake: FakeVendor) -> str:
    """The same fake under the host name ``localhost`` (another vendor in MAPPING)."""
    return f"http://localhost:{fake.port}"


def new_threads(before: set[threading.Thread]) -> list[str]:
    """Threads started since ``before`` that are still alive, except the fake's own
    per-connection server threads."""
    return [t.name for t in threading.enumerate()
            if t not in before and "process_request_thread" not in t.name]


# --------------------------------------------------------------------------------------------
# which vendor a request counts under
# --------------------------------------------------------------------------------------------
def test_each_host_counts_under_its_vendor(kind: str, make: Make, fake: BodyFake,
                                           alpha: vg.Vendor, beta: vg.Vendor,
                                           metrics: CollectorRegistry) -> None:
    """Requests to two hosts are two vendors' calls (the mapping is by host name)."""
    caller = make(kind)
    assert caller.request("GET", fake.url + "/a") == 200
    assert caller.request("GET", localhost(fake) + "/b") == 200
    assert caller.request("POST", localhost(fake) + "/c") == 200
    assert calls(metrics, "success", "get", "alpha") == 1
    assert calls(metrics, "success", "get", "beta") == 1
    assert calls(metrics, "success", "post", "beta") == 1
    assert calls(metrics, "success", "post", "alpha") == 0
    assert fake.count() == 3


def test_unmapped_host_passes_through_unguarded(kind: str, make: Make, fake: BodyFake,
                                                beta: vg.Vendor,
                                                metrics: CollectorRegistry) -> None:
    """With default=None a host no key matches is sent as without the guard: not counted,
    no vendor created, and a 503 is neither retried nor counted."""
    caller = make(kind, {"localhost": "beta"})
    assert caller.request("GET", fake.url + "/free") == 200
    fake.script(Answer(503))
    assert caller.request("POST", fake.url + "/free") == 503
    assert fake.count("/free") == 2
    assert all_calls(metrics) == 0
    assert [v.name for v in vg.vendors()] == ["beta"]


def test_unmapped_host_goes_to_the_default_vendor(kind: str, make: Make, fake: BodyFake,
                                                  metrics: CollectorRegistry) -> None:
    """With default="other" the unmapped host is counted under the vendor ``other``."""
    make_vendor(metrics, "other")
    caller = make(kind, {"localhost": "beta"}, "other")
    assert caller.request("GET", fake.url + "/x") == 200
    assert calls(metrics, "success", "get", "other") == 1
    assert calls(metrics, "success", "get", "beta") == 0


def test_subdomains_and_longest_match_pick_the_vendor(metrics: CollectorRegistry) -> None:
    """Through a real httpx client (answers from httpx.MockTransport, no sockets): a
    subdomain counts under its parent's vendor, the most specific key wins, case and a
    trailing dot do not matter, a look-alike host passes through."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(200, json={"ok": True})

    transport = GuardedTransport(httpx.MockTransport(answer), registry=metrics,
                                 vendors={"example.com": "web", "api.example.com": "api"})
    with httpx.Client(transport=transport) as client:
        for host in ("api.example.com", "eu.api.example.com", "API.Example.com.",
                     "www.example.com", "example.com", "notexample.com"):
            assert client.get(f"http://{host}/x").status_code == 200
    assert len(seen) == 6
    assert calls(metrics, "success", "get", "api") == 3
    assert calls(metrics, "success", "get", "web") == 2
    assert all_calls(metrics) == 5


def test_requests_adapter_maps_subdomains(metrics: CollectorRegistry) -> None:
    """The requests adapter uses the same host rules (checked on its mapping, no request)."""
    adapter = GuardedAdapter({"twilio.com": "twilio", "api.twilio.com": "twilio-api"},
                             registry=metrics)
    assert adapter.hosts.vendor_for("api.twilio.com") == "twilio-api"
    assert adapter.hosts.vendor_for("eu1.api.twilio.com") == "twilio-api"
    assert adapter.hosts.vendor_for("verify.twilio.com") == "twilio"
    assert adapter.hosts.vendor_for("nottwilio.com") is None


# --------------------------------------------------------------------------------------------
# answers: Retry-After, exhausted retries, caller errors, ambiguous 5xx
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured(kind: str, status: int, make: Make, fake: BodyFake,
                                 alpha: vg.Vendor, metrics: CollectorRegistry) -> None:
    """A 503/429 with Retry-After is retried (even a POST: the vendor did not process it) no
    earlier than Retry-After after the first request; the client gets the final 200."""
    fake.script(Answer(status, headers={"Retry-After": "0.2"}, body={"error": "busy"}), OK)
    assert make(kind).request("POST", fake.url + "/limited") == 200
    first, second = fake.seen("/limited")
    assert (first.status, second.status) == (status, 200)
    assert second.at - first.at >= 0.2
    assert retries(metrics, "rate_limited", "post") == 1
    assert calls(metrics, "success", "post") == 1


def test_retry_after_beyond_the_cap_ends_the_call(kind: str, make: Make, fake: BodyFake,
                                                   alpha: vg.Vendor,
                                                   metrics: CollectorRegistry) -> None:
    """A 429 asking for an hour (beyond Retry.max_retry_after) is not waited for: the client
    gets the 429 at once after one request."""
    fake.script(Answer(429, headers={"Retry-After": "3600"}))
    start = time.monotonic()
    assert make(kind).request("GET", fake.url + "/limited") == 429
    assert time.monotonic() - start < 1.0
    assert fake.count("/limited") == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "error") == 1


def test_exhausted_retries_return_the_last_answer(kind: str, make: Make, fake: BodyFake,
                                                  alpha: vg.Vendor,
                                                  metrics: CollectorRegistry) -> None:
    """When every attempt gets a 503 the client gets the vendor's 503 answer (not an
    exception); the call's outcome is error."""
    fake.script(Answer(503, body={"error": "down"}))
    assert make(kind).request("GET", fake.url + "/down") == 503
    assert fake.count("/down") == 3
    assert retries(metrics, "transient") == 2
    assert calls(metrics, "error") == 1


def test_exhausted_retries_give_the_answer_body(make: Make, fake: BodyFake, alpha: vg.Vendor,
                                                metrics: CollectorRegistry) -> None:
    """The last answer is readable by the client: status, headers and body."""
    fake.script(Answer(503, body={"error": "first"}), Answer(503, body={"error": "second"}),
                Answer(503, headers={"X-Last": "yes"}, body={"error": "last"}))
    caller = make("httpx")
    response = caller.client.get(fake.url + "/down")
    assert response.status_code == 503
    assert response.headers["X-Last"] == "yes"
    assert response.json() == {"error": "last"}
    session = make("requests").session
    fake.script(Answer(503, body={"error": "first"}), Answer(503, headers={"X-Last": "yes"},
                                                           body={"error": "last"}))
    make_vendor(metrics, "beta", failures=10)
    answer = session.get(localhost(fake) + "/down", timeout=30)
    assert answer.status_code == 503
    assert answer.json() == {"error": "last"}


@pytest.mark.parametrize("status", [400, 404])
def test_caller_errors_return_at_once_and_spare_the_breaker(
        kind: str, status: int, make: Make, fake: BodyFake, alpha: vg.Vendor,
        metrics: CollectorRegistry) -> None:
    """A 400/404 is returned after one request, outcome caller_error; more of them than the
    breaker's threshold leave the circuit closed."""
    caller = make(kind)
    fake.script(Answer(status, body={"error": "no"}))
    for _ in range(7):
        assert caller.request("GET", fake.url + "/missing") == status
    assert fake.count("/missing") == 7
    assert calls(metrics, "caller_error") == 7
    assert all_retries(metrics) == 0
    assert alpha.circuit_for("get").state == "closed"
    fake.script(OK)
    assert caller.request("GET", fake.url + "/missing") == 200


@pytest.mark.parametrize(("method", "headers", "options", "requests_sent"), [
    ("POST", None, {}, 1),
    ("PATCH", None, {}, 1),
    ("GET", None, {}, 3),
    ("PUT", None, {}, 3),
    ("DELETE", None, {}, 3),
    ("POST", {"Idempotency-Key": "order-42"}, {}, 3),
    ("POST", {"Idempotency-Key": "order-42"}, {"idempotency_header": None}, 1),
    ("POST", {"X-Request-Key": "order-42"}, {"idempotency_header": "X-Request-Key"}, 3),
    ("POST", {"Idempotency-Key": "order-42"}, {"idempotency_header": "X-Request-Key"}, 1),
], ids=["post", "patch", "get", "put", "delete", "post-with-key", "post-key-off",
        "post-custom-key", "post-other-key"])
def test_500_is_retried_only_when_safe(kind: str, method: str, headers: dict[str, str] | None,
                                       options: dict[str, Any], requests_sent: int,
                                       make: Make, fake: BodyFake, alpha: vg.Vendor,
                                       metrics: CollectorRegistry) -> None:
    """A 500 may mean the vendor acted: retried for idempotent methods and for requests that
    carry the idempotency header, sent once otherwise; the client gets the 500."""
    fake.script(Answer(500, body={"error": "boom"}))
    caller = make(kind, **options)
    assert caller.request(method, fake.url + "/pay", headers=headers, body=b"amount=5") == 500
    assert fake.count("/pay") == requests_sent
    assert retries(metrics, "ambiguous", method.lower()) == requests_sent - 1
    assert calls(metrics, "error", method.lower()) == 1
    if headers and "Idempotency-Key" in headers:
        assert {s.header("Idempotency-Key") for s in fake.seen("/pay")} == {"order-42"}


# --------------------------------------------------------------------------------------------
# transport failures
# --------------------------------------------------------------------------------------------
def test_refused_opens_that_vendors_breaker_only(kind: str, make: Make, alpha: vg.Vendor,
                                                 beta: vg.Vendor,
                                                 metrics: CollectorRegistry) -> None:
    """A refused connect (nothing sent) is retried, even for a POST, and the client gets its
    own connect error; after the threshold that vendor's breaker is open and calls are
    rejected with CircuitOpenError without any request, while the other host's vendor is
    closed and still answered."""
    url = refused_url()
    caller = make(kind)
    with pytest.raises(REFUSED[kind]):
        caller.request("POST", url + "/pay")
    assert retries(metrics, "transient", "post") == 2
    assert calls(metrics, "error", "post") == 1
    assert alpha.circuit_for("post").state == "open"

    port = int(url.rsplit(":", 1)[1])
    with BodyFake(port=port) as back:  # the vendor is back on that port; the breaker is open
        with pytest.raises(vg.CircuitOpenError) as raised:
            caller.request("POST", url + "/pay")
        assert raised.value.vendor == "alpha"
        assert back.count() == 0
        assert calls(metrics, "rejected", "post") == 1
        assert caller.request("GET", localhost(back) + "/other") == 200
        assert back.count("/other") == 1
    assert beta.circuit_for("get").state == "closed"
    assert calls(metrics, "success", "get", "beta") == 1


def test_unresolvable_host_is_retried(kind: str, make: Make, alpha: vg.Vendor,
                                      metrics: CollectorRegistry,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name that does not resolve was never connected to (nothing sent): like a
    refused connect it is retried, even for a POST."""
    host = "api.unresolvable.test"
    real = socket.getaddrinfo

    def getaddrinfo(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name in (host, host.encode()):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    caller = make(kind, {host: "alpha"})
    with vg.testing_mode(), pytest.raises(REFUSED[kind]):
        caller.request("POST", f"http://{host}/pay")
    assert retries(metrics, "transient", "post") == 2
    assert calls(metrics, "error", "post") == 1


def test_drop_on_post_is_not_retried(kind: str, make: Make, fake: BodyFake, alpha: vg.Vendor,
                                     metrics: CollectorRegistry) -> None:
    """A connection closed after a POST was sent is ambiguous: one request, the client's own
    error, outcome error."""
    fake.script(DROP)
    with pytest.raises(DROPPED[kind]):
        make(kind).request("POST", fake.url + "/pay", body=b"amount=5")
    assert fake.count("/pay") == 1
    assert all_retries(metrics) == 0
    assert calls(metrics, "error", "post") == 1


def test_drop_on_get_is_retried(kind: str, make: Make, fake: BodyFake, alpha: vg.Vendor,
                                metrics: CollectorRegistry) -> None:
    """A GET may be resent after a dropped connection: two requests, the second's 200."""
    fake.script(DROP, OK)
    assert make(kind).request("GET", fake.url + "/read") == 200
    assert fake.count("/read") == 2
    assert retries(metrics, "ambiguous") == 1
    assert calls(metrics, "success") == 1


@pytest.mark.parametrize("client_timeout", [30.0, None], ids=["30s", "none"])
def test_hang_is_bounded_by_the_attempt(kind: str, client_timeout: float | None, make: Make,
                                        fake: BodyFake, alpha: vg.Vendor,
                                        metrics: CollectorRegistry) -> None:
    """A vendor that hangs 5 s behind a client whose own timeout is 30 s (or none at all):
    the call fails at the attempt bound (0.3 s), well inside the hang guard; outcome
    timeout; a POST is not resent; the sync clients start no thread for it."""
    fake.script(hang(5.0))
    caller = make(kind, timeout=client_timeout)
    before = set(threading.enumerate())
    start = time.monotonic()
    with pytest.raises(TIMED_OUT[kind]):
        caller.request("POST", fake.url + "/slow", body=b"x")
    took = time.monotonic() - start
    assert ATTEMPT * 0.9 <= took < HANG_GUARD
    assert fake.count("/slow") == 1
    assert calls(metrics, "timeout", "post") == 1
    if kind != "httpx_async":
        assert new_threads(before) == []
        assert alpha._pool is None  # no worker pool: the client's own timeout bounded it


def test_deadline_shortens_the_attempt(kind: str, make: Make, fake: BodyFake,
                                      alpha: vg.Vendor, metrics: CollectorRegistry) -> None:
    """Inside vg.deadline(0.15) the attempt is bounded by what is left of the deadline, not
    by the longer attempt bound."""
    fake.script(hang(5.0))
    caller = make(kind)
    start = time.monotonic()
    with vg.deadline(0.15), pytest.raises(TIMED_OUT[kind]):
        caller.request("POST", fake.url + "/slow")
    assert 0.1 <= time.monotonic() - start < ATTEMPT
    assert calls(metrics, "timeout", "post") == 1


def test_hang_on_get_is_retried(kind: str, make: Make, fake: BodyFake,
                                metrics: CollectorRegistry) -> None:
    """A GET whose attempt timed out may be resent (a read timeout is ambiguous, GET is
    idempotent), the same for every client: one request per attempt, outcome timeout."""
    make_vendor(metrics, attempts=2, failures=10)
    fake.script(hang(5.0))
    start = time.monotonic()
    with pytest.raises(TIMED_OUT[kind]):
        make(kind).request("GET", fake.url + "/slow")
    assert time.monotonic() - start < HANG_GUARD
    assert fake.count("/slow") == 2
    assert retries(metrics, "timeout") == 1
    assert calls(metrics, "timeout") == 1


class _Recorder(httpx.BaseTransport):
    """An inner httpx transport that records the timeouts each attempt is sent with."""

    def __init__(self, seen: list[dict[str, float]]) -> None:
        self.inner, self.seen = httpx.HTTPTransport(), seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(dict(request.extensions["timeout"]))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _AsyncRecorder(httpx.AsyncBaseTransport):
    def __init__(self, seen: list[dict[str, float]]) -> None:
        self.inner, self.seen = httpx.AsyncHTTPTransport(), seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(dict(request.extensions["timeout"]))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _RecordingHTTPAdapter(HTTPAdapter):
    seen: list[Any]

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: Any = None) -> Any:
        self.seen.append(timeout)
        return super().send(request, stream, timeout, verify, cert, proxies)


class _RecordingAdapter(GuardedAdapter, _RecordingHTTPAdapter):
    """GuardedAdapter whose inner send (HTTPAdapter's) records the timeout it gets."""


def test_client_timeout_is_clamped_on_the_request(kind: str, make: Make, fake: BodyFake,
                                                  alpha: vg.Vendor) -> None:
    """The client's own 30 s timeouts reach the socket layer clamped to the attempt bound
    (on the request itself); outside the guard (an unmapped host) they are unchanged."""
    seen: list[Any] = []
    if kind == "requests":
        _RecordingAdapter.seen = seen
        caller = make(kind, {"127.0.0.1": "alpha"}, adapter_class=_RecordingAdapter)
    else:
        recorder = _Recorder(seen) if kind == "httpx" else _AsyncRecorder(seen)
        caller = make(kind, {"127.0.0.1": "alpha"}, inner=recorder)
    assert caller.request("GET", fake.url + "/x") == 200
    assert caller.request("GET", localhost(fake) + "/x") == 200  # passes through
    guarded, free = seen
    if kind == "requests":
        assert 0 < guarded <= ATTEMPT
        assert free == 30.0
    else:
        assert set(guarded) == {"connect", "read", "write", "pool"}
        assert all(0 < value <= ATTEMPT for value in guarded.values()), guarded
        assert free == dict.fromkeys(("connect", "read", "write", "pool"), 30.0)


def test_requests_tuple_timeout_is_clamped_per_part(make: Make, fake: BodyFake,
                                                    alpha: vg.Vendor) -> None:
    """A (connect, read) tuple is clamped part by part, keeping a smaller part."""
    seen: list[Any] = []
    _RecordingAdapter.seen = seen
    caller = make("requests", {"127.0.0.1": "alpha"}, adapter_class=_RecordingAdapter)
    caller.session.get(fake.url + "/x", timeout=(0.1, 30))
    ((connect, read),) = seen
    assert connect == 0.1
    assert 0 < read <= ATTEMPT


def test_requests_urllib3_timeout_is_clamped(make: Make, fake: BodyFake,
                                             alpha: vg.Vendor) -> None:
    """requests also takes a urllib3 Timeout: both its connect and read parts reach the
    socket layer bounded by the attempt, including a part left at urllib3's default (which
    means no timeout at all)."""
    seen: list[Any] = []
    _RecordingAdapter.seen = seen
    caller = make("requests", {"127.0.0.1": "alpha"}, adapter_class=_RecordingAdapter)
    for timeout in (Urllib3Timeout(connect=5, read=30), Urllib3Timeout(read=30),
                    Urllib3Timeout()):
        assert caller.session.get(fake.url + "/x", timeout=timeout).status_code == 200
    for sent in seen:
        assert isinstance(sent, Urllib3Timeout)
        assert isinstance(sent.connect_timeout, float), sent
        assert 0 < sent.connect_timeout <= ATTEMPT, sent
        assert 0 < sent.read_timeout <= ATTEMPT, sent


def test_requests_urllib3_total_timeout_works(make: Make, fake: BodyFake, alpha: vg.Vendor,
                                              metrics: CollectorRegistry) -> None:
    """A urllib3 Timeout(total=30), which requests accepts, is sent (bounded) like any
    other timeout: the request succeeds as it does without the adapter."""
    plain = requests.Session()
    assert plain.get(fake.url + "/x", timeout=Urllib3Timeout(total=30)).status_code == 200
    plain.close()
    caller = make("requests", {"127.0.0.1": "alpha"})
    answer = caller.session.get(fake.url + "/x", timeout=Urllib3Timeout(total=30))
    assert answer.status_code == 200
    assert fake.count("/x") == 2
    assert calls(metrics, "success") == 1


def test_async_attempt_is_cancelled_at_the_bound(make: Make, fake: BodyFake,
                                                 alpha: vg.Vendor,
                                                 metrics: CollectorRegistry) -> None:
    """The async transport's attempt is cancelled at the bound; the event loop is free at
    once for other work (a concurrent task runs while the call hangs)."""
    fake.script(hang(5.0), path="/slow")
    caller = make("httpx_async")

    async def both() -> tuple[Any, int, float]:
        start = time.monotonic()
        slow = asyncio.ensure_future(caller.aclient.post(fake.url + "/slow"))
        fast = await caller.aclient.get(localhost(fake) + "/fast")
        failed = await asyncio.gather(slow, return_exceptions=True)
        return failed[0], fast.status_code, time.monotonic() - start

    error, fast_status, took = caller.loop.run_until_complete(both())
    assert isinstance(error, TIMED_OUT["httpx_async"])
    assert fast_status == 200
    assert ATTEMPT * 0.9 <= took < HANG_GUARD
    assert calls(metrics, "timeout", "post") == 1
    for _ in range(3):  # the cancelled attempt left the client's pool usable
        assert caller.request("POST", fake.url + "/after") == 200


# --------------------------------------------------------------------------------------------
# request bodies
# --------------------------------------------------------------------------------------------
PARTS = [b"part-1;", b"part-2;", b"part-3"]
WHOLE = b"".join(PARTS)


def streamed(kind: str) -> Any:
    """The body as a one-shot generator (an async one for the async client)."""
    if kind == "httpx_async":
        async def agen() -> AsyncIterator[bytes]:
            for part in PARTS:
                yield part
        return agen()

    def gen() -> Iterator[bytes]:
        yield from PARTS
    return gen()


def test_streamed_body_is_resent_whole(kind: str, make: Make, fake: BodyFake,
                                       alpha: vg.Vendor, metrics: CollectorRegistry) -> None:
    """A POST body given as a generator is read once and resent whole after a 503."""
    fake.script(Answer(503), OK)
    assert make(kind).request("POST", fake.url + "/upload", body=streamed(kind)) == 200
    first, second = fake.seen("/upload")
    assert first.notes == second.notes == {"length": str(len(WHOLE)), "body": WHOLE.decode()}
    assert retries(metrics, "transient", "post") == 1


def test_file_body_is_resent_whole(make: Make, fake: BodyFake, alpha: vg.Vendor,
                                   tmp_path: Any) -> None:
    """requests: a file body is read once and every attempt sends all of it."""
    path = tmp_path / "upload.bin"
    path.write_bytes(WHOLE)
    fake.script(Answer(503), OK)
    session = make("requests").session
    with path.open("rb") as body:
        assert session.post(fake.url + "/upload", data=body, timeout=30).status_code == 200
    assert [s.notes["body"] for s in fake.seen("/upload")] == [WHOLE.decode()] * 2


# --------------------------------------------------------------------------------------------
# configuration errors and the operation label
# --------------------------------------------------------------------------------------------
def test_adapter_refuses_urllib3_retries(metrics: CollectorRegistry) -> None:
    """max_retries other than 0 would make two retry layers: ValueError naming it."""
    for retries_ in (3, requests.adapters.Retry(total=2)):
        with pytest.raises(ValueError, match="max_retries"):
            GuardedAdapter({"127.0.0.1": "alpha"}, registry=metrics, max_retries=retries_)
    GuardedAdapter({"127.0.0.1": "alpha"}, registry=metrics, max_retries=0)


BUILDERS: dict[str, Callable[..., Any]] = {
    "httpx": lambda vendors, default=None, **kw: GuardedTransport(
        vendors=vendors, default=default, **kw),
    "httpx_async": lambda vendors, default=None, **kw: AsyncGuardedTransport(
        vendors=vendors, default=default, **kw),
    "requests": lambda vendors, default=None, **kw: GuardedAdapter(vendors, default, **kw),
}


@pytest.mark.parametrize(("vendors", "default"), [
    ({"127.0.0.1": "Alpha"}, None), ({"127.0.0.1": "al pha"}, None), ({"127.0.0.1": ""}, None),
    ({"": "alpha"}, None), ({"127.0.0.1": "alpha"}, "Other!"), ({"127.0.0.1": "alpha"}, "")])
def test_bad_vendor_names_are_refused(kind: str, vendors: dict[str, str], default: str | None,
                                      metrics: CollectorRegistry) -> None:
    """Vendor names become metric labels: each client's guard refuses a bad one at once."""
    with pytest.raises(ValueError, match="must"):
        BUILDERS[kind](vendors, default, registry=metrics)


def test_bad_arguments_are_type_errors(kind: str, metrics: CollectorRegistry) -> None:
    """A non-callable operation or a non-string idempotency header is a TypeError."""
    with pytest.raises(TypeError, match="operation"):
        BUILDERS[kind]({"127.0.0.1": "alpha"}, operation="post", registry=metrics)
    with pytest.raises(TypeError, match="idempotency_header"):
        BUILDERS[kind]({"127.0.0.1": "alpha"}, idempotency_header=5, registry=metrics)


@pytest.mark.parametrize("name", ["has space", "", "x" * 65, None])
def test_bad_operation_name_is_refused_before_sending(kind: str, name: Any, make: Make,
                                                      fake: BodyFake, alpha: vg.Vendor,
                                                      metrics: CollectorRegistry) -> None:
    """An operation function returning a bad label raises ValueError; nothing is sent."""
    caller = make(kind, operation=lambda method, host, path: name)
    with pytest.raises(ValueError, match="operation"):
        caller.request("GET", fake.url + "/x")
    assert fake.count() == 0
    assert all_calls(metrics) == 0


def test_operation_function_names_the_calls(kind: str, make: Make, fake: BodyFake,
                                            alpha: vg.Vendor,
                                            metrics: CollectorRegistry) -> None:
    """operation(method, host, path) gives the label; operations beyond 64 distinct names
    are counted as ``other``."""
    caller = make(kind, operation=lambda method, host, path: "op" + path.rsplit("/", 1)[1])
    for i in range(70):
        assert caller.request("GET", f"{fake.url}/n/{i}") == 200
    assert calls(metrics, "success", "op0") == 1
    assert calls(metrics, "success", "op63") == 1
    assert calls(metrics, "success", "op64") == 0
    assert calls(metrics, "success", "other") == 6
    assert all_calls(metrics) == 70


# --------------------------------------------------------------------------------------------
# metrics after a mixed sequence
# --------------------------------------------------------------------------------------------
def test_metrics_per_vendor_after_a_mixed_sequence(kind: str, make: Make, fake: BodyFake,
                                                   alpha: vg.Vendor, beta: vg.Vendor,
                                                   metrics: CollectorRegistry) -> None:
    """calls_total per vendor, operation and outcome, and retries_total per reason, after
    successes, a caller error, a retried 503, an unretried 500 and another host's call."""
    caller = make(kind)
    fake.script(OK, OK, Answer(404), Answer(503, headers={"Retry-After": "0"}), OK,
                Answer(500), OK)
    assert caller.request("GET", fake.url + "/a") == 200
    assert caller.request("GET", fake.url + "/a") == 200
    assert caller.request("POST", fake.url + "/a") == 404
    assert caller.request("POST", fake.url + "/a") == 200  # after a 503
    assert caller.request("POST", fake.url + "/a") == 500
    assert caller.request("DELETE", localhost(fake) + "/a") == 200
    assert fake.count() == 7
    expected = {("alpha", "get", "success"): 2, ("alpha", "post", "caller_error"): 1,
                ("alpha", "post", "success"): 1, ("alpha", "post", "error"): 1,
                ("beta", "delete", "success"): 1}
    for vendor in ("alpha", "beta"):
        for operation in ("get", "post", "delete"):
            for outcome in ("success", "caller_error", "error", "timeout", "rejected"):
                assert calls(metrics, outcome, operation, vendor) == expected.get(
                    (vendor, operation, outcome), 0), (vendor, operation, outcome)
    assert retries(metrics, "rate_limited", "post") == 1
    assert all_retries(metrics) == 1
    assert sample(metrics, "vendorguard_circuit_state", vendor="alpha", circuit="alpha",
                  state="closed") == 1
