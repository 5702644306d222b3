"""The rules the HTTP guards share (integrations/_http.py) and the classifiers of the httpx,
requests and Slack integrations: pure unit tests, no request leaves the process (a few build
real exception chains by connecting to a loopback port nobody listens on)."""

from __future__ import annotations

import email.utils
import http.client
import socket
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
urllib3 = pytest.importorskip("urllib3")

from prometheus_client import CollectorRegistry  # noqa: E402
from vendorguard.integrations import _http  # noqa: E402
from vendorguard.integrations import httpx as vg_httpx  # noqa: E402
from vendorguard.integrations import requests as vg_requests  # noqa: E402
from vendorguard.integrations._http import (  # noqa: E402
    IDEMPOTENT_METHODS,
    MAX_OPERATIONS,
    POLICY,
    HostGuards,
    StatusFailure,
    bounded_timeout,
    clamp,
    classify_status,
    connect_phase,
)

import vendorguard as vg  # noqa: E402
from tests.integrations.fakehttp import refused_url  # noqa: E402
from vendorguard import timeouts  # noqa: E402
from vendorguard.classify import Kind, Verdict  # noqa: E402

TRANSIENT = Verdict(Kind.TRANSIENT)
AMBIGUOUS = Verdict(Kind.AMBIGUOUS)


@pytest.fixture
def bound() -> Iterator[Any]:
    """Set the current attempt's bound as a guard in caller mode does; reset afterwards."""
    tokens: list[Any] = []

    def set_bound(seconds: float | None) -> None:
        tokens.append(timeouts._attempt_bound.set(seconds))

    yield set_bound
    for token in reversed(tokens):
        timeouts._attempt_bound.reset(token)


def chain_of(exc: BaseException | None) -> list[str]:
    """The class names along the path connect_phase walks (for assertion messages)."""
    names = []
    while exc is not None and len(names) < 8:
        names.append(type(exc).__name__)
        reason = getattr(exc, "reason", None)
        nested = reason if isinstance(reason, BaseException) else next(
            (a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)), None)
        exc = nested or exc.__cause__ or exc.__context__
    return names


# --------------------------------------------------------------------------------------------
# classify_status
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [100, 200, 201, 204, 301, 302, 304, 399])
def test_answers_below_400_are_not_failures(status: int) -> None:
    """1xx/2xx/3xx answers are successes: no verdict, whatever the headers say."""
    assert classify_status(status, {"Retry-After": "5"}) is None


@pytest.mark.parametrize("status", [429, 503, 408])
def test_429_503_408_are_transient(status: int) -> None:
    """The vendor did not process the request: transient, no timeout flag."""
    assert classify_status(status, {}) == TRANSIENT


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 451, 499])
def test_other_4xx_are_caller_errors(status: int) -> None:
    """Any other 4xx is the caller's to fix, and carries no Retry-After."""
    verdict = classify_status(status, {"Retry-After": "5"})
    assert verdict == Verdict(Kind.CALLER_ERROR)


@pytest.mark.parametrize("status", [500, 501, 502, 504, 520, 599])
def test_other_5xx_are_ambiguous(status: int) -> None:
    """Other 5xx: the vendor may have acted, so ambiguous."""
    assert classify_status(status, {}) == AMBIGUOUS


@pytest.mark.parametrize("status", [429, 503, 408, 500, 502])
def test_retry_after_seconds_is_parsed(status: int) -> None:
    """Retry-After in delta-seconds (whole or fractional) becomes the verdict's wait."""
    assert classify_status(status, {"Retry-After": "3"}).retry_after == 3.0
    assert classify_status(status, {"Retry-After": "0.25"}).retry_after == 0.25
    assert classify_status(status, {"Retry-After": " 7 "}).retry_after == 7.0


def test_retry_after_http_date_is_parsed() -> None:
    """Retry-After as an HTTP-date becomes the seconds until that date (0 when past)."""
    future = email.utils.formatdate(time.time() + 120, usegmt=True)
    verdict = classify_status(503, {"Retry-After": future})
    assert verdict is not None
    assert verdict.retry_after is not None
    assert 118.0 <= verdict.retry_after <= 121.0
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert classify_status(429, {"Retry-After": past}) == Verdict(Kind.TRANSIENT, 0.0)


@pytest.mark.parametrize("headers", [
    {}, None, {"Retry-After": "soon"}, {"Retry-After": ""}, {"Retry-After": "nan"},
    {"X-Other": "5"}, ["Retry-After", "5"], object()],
    ids=["empty", "none", "garbage", "blank", "nan", "other-header", "list", "object"])
def test_missing_or_unusable_retry_after_is_none(headers: Any) -> None:
    """No header, no headers at all, an unparsable value or a headers object without
    ``get`` all give a verdict without a wait (never an exception)."""
    verdict = classify_status(503, headers)
    assert verdict == TRANSIENT
    assert verdict.retry_after is None


def test_negative_retry_after_is_zero() -> None:
    """A negative delta is never a negative wait."""
    assert classify_status(429, {"Retry-After": "-5"}).retry_after == 0.0


@pytest.mark.parametrize("headers", [
    {"retry-after": "2"}, httpx.Headers({"RETRY-AFTER": "2"}),
    requests.structures.CaseInsensitiveDict({"rEtRy-AfTeR": "2"}),
    http.client.parse_headers(__import__("io").BytesIO(b"Retry-After: 2\r\n\r\n"))],
    ids=["lowercase-dict", "httpx", "requests", "http.client"])
def test_retry_after_is_found_in_every_headers_type(headers: Any) -> None:
    """Plain dicts with the lowercase name, httpx, requests and http.client headers."""
    assert classify_status(429, headers).retry_after == 2.0


def test_status_failure_carries_the_answer_but_no_detail() -> None:
    """StatusFailure's message is the status only (no URL, body or header values)."""
    answer = object()
    failure = StatusFailure(503, TRANSIENT, answer)
    assert str(failure) == "HTTP 503"
    assert (failure.status, failure.verdict, failure.response) == (503, TRANSIENT, answer)


def test_idempotent_methods_follow_rfc_9110() -> None:
    """GET, HEAD, OPTIONS, TRACE, PUT, DELETE; never POST or PATCH."""
    assert {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} == IDEMPOTENT_METHODS
    assert "POST" not in IDEMPOTENT_METHODS
    assert "PATCH" not in IDEMPOTENT_METHODS


# --------------------------------------------------------------------------------------------
# clamp and bounded_timeout
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("own", [None, 5, 5.5, (1.0, 30.0), "weird"])
def test_clamp_without_any_bound_returns_the_value(own: Any) -> None:
    """Outside a guard's attempt (and without an explicit bound) nothing changes."""
    assert timeouts.attempt_timeout() is None
    assert clamp(own) == own


@pytest.mark.parametrize(("own", "limit", "expected"), [
    (None, 2.0, 2.0),
    (30, 2.0, 2.0),
    (30.0, 2.0, 2.0),
    (1, 2.0, 1.0),
    (0.5, 2.0, 0.5),
    ((1.0, 30.0), 2.0, (1.0, 2.0)),
    ((10, 30), 2.0, (2.0, 2.0)),
    ((None, None), 2.0, (2.0, 2.0)),
    ((None, 0.5), 2.0, (2.0, 0.5)),
])
def test_clamp_bounds_seconds_none_and_tuples(own: Any, limit: float, expected: Any) -> None:
    """``None`` (no timeout) becomes the bound; numbers and each part of a (connect, read)
    tuple are no longer than the bound; smaller ones are kept."""
    result = clamp(own, limit)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("limit", [0.0, -1.0, -0.0, 0.0001])
def test_clamp_floors_the_bound_at_a_millisecond(limit: float) -> None:
    """A spent or negative bound is 0.001 s, never 0 (which sockets read as non-blocking)
    or a negative value (which they reject)."""
    assert clamp(None, limit) == 0.001
    assert clamp(30, limit) == 0.001
    assert clamp((5, 5), limit) == (0.001, 0.001)


def test_clamp_leaves_unknown_timeout_objects_alone() -> None:
    """An object that is not None, a number or a tuple (and a bool) is returned as is."""
    marker = object()
    assert clamp(marker, 1.0) is marker
    assert clamp(True, 1.0) is True


def test_clamp_reads_the_current_attempt_bound(bound: Any) -> None:
    """Without an explicit bound, clamp uses vendorguard.timeouts.attempt_timeout()."""
    bound(0.3)
    assert clamp(30) == 0.3
    assert clamp(None) == 0.3
    assert clamp((5, 0.1)) == (0.3, 0.1)
    assert clamp(30, 2.0) == 2.0  # an explicit bound wins
    bound(None)
    assert clamp(30) == 30


class Sdk:
    timeout = bounded_timeout("timeout")


def test_bounded_timeout_outside_an_attempt_is_the_value_set() -> None:
    """Outside a guard the attribute reads exactly as set (or None when never set)."""
    sdk = Sdk()
    assert sdk.timeout is None
    sdk.timeout = 30
    assert sdk.timeout == 30
    assert sdk.__dict__["timeout"] == 30
    assert "attempt" in (type(sdk).timeout.__doc__ or "")


def test_bounded_timeout_inside_an_attempt_is_bounded(bound: Any) -> None:
    """Inside an attempt it reads as no longer than the bound; a smaller value is kept; a
    value set inside is stored unclamped."""
    sdk, small = Sdk(), Sdk()
    sdk.timeout, small.timeout = 30, 0.1
    bound(0.3)
    assert sdk.timeout == 0.3
    assert small.timeout == 0.1
    sdk.timeout = 60
    assert sdk.__dict__["timeout"] == 60
    assert sdk.timeout == 0.3
    unset = Sdk()
    assert unset.timeout == 0.3  # no timeout at all becomes the bound
    bound(None)
    assert sdk.timeout == 60


def test_bounded_timeout_is_per_thread(bound: Any) -> None:
    """The bound lives in a context variable: another thread reading the same object while
    this one is inside an attempt sees the configured value."""
    sdk = Sdk()
    sdk.timeout = 30
    bound(0.3)
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: seen.append(sdk.timeout))
    reader.start()
    reader.join(timeout=5)
    assert seen == [30]
    assert sdk.timeout == 0.3


# --------------------------------------------------------------------------------------------
# connect_phase
# --------------------------------------------------------------------------------------------
def raised(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


@pytest.fixture
def unresolvable(monkeypatch: pytest.MonkeyPatch) -> str:
    """A host name whose lookup fails at once, without asking any DNS server."""
    host = "api.unresolvable.test"
    real = socket.getaddrinfo

    def getaddrinfo(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name in (host, host.encode()):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return host


@pytest.fixture
def silent() -> Iterator[str]:
    """A loopback URL whose socket accepts connections (kernel backlog) but never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_connect_phase_requests_refused() -> None:
    """requests' ConnectionError(MaxRetryError(reason=NewConnectionError)) is connect phase."""
    exc = raised(lambda: requests.get(refused_url() + "/x", timeout=2))
    assert isinstance(exc, requests.exceptions.ConnectionError)
    assert connect_phase(exc), chain_of(exc)


def test_connect_phase_urllib3_refused() -> None:
    """urllib3's own errors: NewConnectionError bare (retries=False) or in MaxRetryError."""
    url = refused_url() + "/x"
    with urllib3.PoolManager() as pool:
        bare = raised(lambda: pool.request("GET", url, retries=False))
        wrapped = raised(lambda: pool.request("GET", url, retries=0))
    assert isinstance(bare, urllib3.exceptions.NewConnectionError)
    assert isinstance(wrapped, urllib3.exceptions.MaxRetryError)
    assert connect_phase(bare)
    assert connect_phase(wrapped)


def test_connect_phase_httpx_refused() -> None:
    """httpx.ConnectError (sync and the async client's) is connect phase."""
    exc = raised(lambda: httpx.get(refused_url() + "/x", timeout=2))
    assert isinstance(exc, httpx.ConnectError)
    assert connect_phase(exc)


def test_connect_phase_requests_dns_failure(unresolvable: str) -> None:
    """A host name that does not resolve was never connected to: nothing was sent. urllib3
    raises NameResolutionError (a NewConnectionError) inside requests' ConnectionError."""
    exc = raised(lambda: requests.post(f"http://{unresolvable}/x", timeout=2))
    assert isinstance(exc, requests.exceptions.ConnectionError)
    assert "NameResolutionError" in chain_of(exc)
    assert connect_phase(exc), chain_of(exc)


def test_connect_phase_httpx_dns_failure(unresolvable: str) -> None:
    """httpx reports a failed lookup as ConnectError: connect phase."""
    exc = raised(lambda: httpx.post(f"http://{unresolvable}/x", timeout=2))
    assert isinstance(exc, httpx.ConnectError)
    assert connect_phase(exc)


def test_connect_phase_read_timeouts_are_not(silent: str) -> None:
    """A socket that accepted the request and never answers: the request went out."""
    for exc in (raised(lambda: requests.get(silent, timeout=(1, 0.05))),
                raised(lambda: httpx.get(silent, timeout=httpx.Timeout(1, read=0.05)))):
        assert "ReadTimeout" in type(exc).__name__
        assert not connect_phase(exc), chain_of(exc)
    with urllib3.PoolManager() as pool:
        bare = raised(lambda: pool.request("GET", silent, retries=False, timeout=0.05))
    assert isinstance(bare, urllib3.exceptions.ReadTimeoutError)
    assert not connect_phase(bare), chain_of(bare)


def test_connect_phase_dropped_connections_are_not() -> None:
    """A connection closed after the request (as requests and urllib3 raise it)."""
    dropped = http.client.RemoteDisconnected("Remote end closed connection without response")
    protocol = urllib3.exceptions.ProtocolError("Connection aborted.", dropped)
    exc = requests.exceptions.ConnectionError(protocol)
    assert not connect_phase(exc)
    assert not connect_phase(protocol)
    assert not connect_phase(dropped)
    assert not connect_phase(httpx.RemoteProtocolError("Server disconnected"))
    assert not connect_phase(httpx.ReadError("reset"))


def test_connect_phase_explicit_chains() -> None:
    """Timeouts while connecting and aiohttp's names, by __cause__ and by args."""
    connect = urllib3.exceptions.ConnectTimeoutError(None, "connect timed out")
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 9)
    assert connect_phase(requests.exceptions.ConnectTimeout(
        urllib3.exceptions.MaxRetryError(pool, "/x", connect)))
    assert connect_phase(httpx.ConnectTimeout("timed out"))

    class ClientConnectorError(OSError):
        pass

    class ServerDisconnectedError(OSError):
        pass

    assert connect_phase(ClientConnectorError())
    assert not connect_phase(ServerDisconnectedError())
    outer = RuntimeError("wrapped")
    outer.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert connect_phase(outer)
    context = RuntimeError("while handling")
    context.__context__ = ConnectionRefusedError()
    assert connect_phase(context)


@pytest.mark.parametrize("exc", [None, OSError("x"), RuntimeError("x"), TimeoutError(),
                                 ConnectionResetError()])
def test_connect_phase_unknown_is_false(exc: BaseException | None) -> None:
    """Unknown failures are not assumed to be unsent."""
    assert connect_phase(exc) is False


def test_connect_phase_stops_on_cycles_and_deep_chains() -> None:
    """A cyclic chain ends (False), and the walk stops after 8 links."""
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert connect_phase(first) is False
    deep: BaseException = ConnectionRefusedError()
    for i in range(10):
        outer = RuntimeError(str(i))
        outer.__cause__ = deep
        deep = outer
    assert connect_phase(deep) is False


# --------------------------------------------------------------------------------------------
# HostGuards
# --------------------------------------------------------------------------------------------
def hosts(vendors: dict[str, str] | None = None, default: str | None = None,
          registry: CollectorRegistry | None = None, **options: Any) -> HostGuards:
    return HostGuards(vendors, default, vg_httpx.classify, registry=registry, **options)


def test_exact_host_maps_to_its_vendor() -> None:
    """The host equal to a key maps to that key's vendor."""
    guards = hosts({"api.stripe.com": "stripe", "api.twilio.com": "twilio"})
    assert guards.vendor_for("api.stripe.com") == "stripe"
    assert guards.vendor_for("api.twilio.com") == "twilio"


def test_subdomains_map_to_their_parent() -> None:
    """A subdomain (at any depth) maps like its parent; a look-alike name does not."""
    guards = hosts({"twilio.com": "twilio"})
    assert guards.vendor_for("api.twilio.com") == "twilio"
    assert guards.vendor_for("eu.api.twilio.com") == "twilio"
    assert guards.vendor_for("nottwilio.com") is None
    assert guards.vendor_for("twilio.com.evil.example") is None
    assert guards.vendor_for("wilio.com") is None


def test_longest_key_wins() -> None:
    """Of several matching keys the longest (most specific) one wins, in any order."""
    for vendors in ({"example.com": "web", "api.example.com": "api"},
                    {"api.example.com": "api", "example.com": "web"}):
        guards = hosts(vendors)
        assert guards.vendor_for("api.example.com") == "api"
        assert guards.vendor_for("v2.api.example.com") == "api"
        assert guards.vendor_for("www.example.com") == "web"
        assert guards.vendor_for("example.com") == "web"
        assert guards.vendor_for("xapi.example.com") == "web"


def test_case_and_trailing_dot_do_not_matter() -> None:
    """Host names compare case-insensitively and without a trailing dot, on both sides."""
    guards = hosts({"API.Example.COM.": "api"})
    for host in ("api.example.com", "API.EXAMPLE.COM", "api.example.com.", "Eu.Api.Example.Com"):
        assert guards.vendor_for(host) == "api", host


def test_unmatched_hosts_go_to_default_or_pass_through() -> None:
    """default names the vendor of every other host; without it they pass (None)."""
    assert hosts({"a.example": "a"}).vendor_for("b.example") is None
    assert hosts({"a.example": "a"}, "other").vendor_for("b.example") == "other"
    assert hosts(None, "other").vendor_for("anything.example") == "other"
    assert hosts().vendor_for("anything.example") is None


@pytest.mark.parametrize("host", ["", None])
def test_no_host_goes_to_default(host: str | None) -> None:
    """A request without a host name is the default vendor's (or passes)."""
    assert hosts({"a.example": "a"}, "other").vendor_for(host) == "other"
    assert hosts({"a.example": "a"}).vendor_for(host) is None


def test_host_cache_is_bounded() -> None:
    """Thousands of distinct hosts never grow the cache past its bound, and hosts beyond it
    are still mapped correctly."""
    guards = hosts({"example.com": "ex"}, "other")
    for i in range(_http._MAX_HOSTS + 500):
        assert guards.vendor_for(f"h{i}.example.com") == "ex"
        assert guards.vendor_for(f"h{i}.example.org") == "other"
    assert len(guards._hosts) == _http._MAX_HOSTS
    assert guards.vendor_for("late.example.com") == "ex"
    assert guards.vendor_for("late.example.net") == "other"


@pytest.mark.parametrize("vendors", [
    {"api.example.com": "Upper"}, {"api.example.com": "has space"},
    {"api.example.com": ""}, {"api.example.com": "x" * 65}, {"api.example.com": 5},
    {"api.example.com": None}, {"": "ok"}, {5: "ok"}])
def test_bad_vendor_mapping_is_refused(vendors: dict[Any, Any]) -> None:
    """Vendor names become metric labels ([a-z0-9_.-]{1,64}); hosts are non-empty strings."""
    with pytest.raises(ValueError, match="vendors"):
        hosts(vendors)


@pytest.mark.parametrize("default", ["Other", "a b", "", "x" * 65, 7])
def test_bad_default_is_refused(default: Any) -> None:
    """The default vendor name follows the same rule."""
    with pytest.raises(ValueError, match="default"):
        hosts({"api.example.com": "api"}, default)


def test_operation_must_be_callable() -> None:
    """operation is a function (method, host, path) -> name."""
    with pytest.raises(TypeError, match="operation"):
        hosts({"a.example": "a"}, operation="post")


def test_guard_for_names_operations_by_method(metrics: CollectorRegistry) -> None:
    """Without an operation function the operation is the lowercase method; guards are
    cached per (vendor, operation, safe); safe guards may retry ambiguous failures."""
    guards = hosts({"a.example": "alpha"}, registry=metrics)
    get = guards.guard_for("alpha", "GET", "a.example", "/x", True)
    post = guards.guard_for("alpha", "POST", "a.example", "/x", False)
    safe_post = guards.guard_for("alpha", "POST", "a.example", "/x", True)
    assert (get.name, get.operation, get.idempotent) == ("alpha", "get", True)
    assert (post.operation, post.idempotent) == ("post", False)
    assert safe_post.idempotent
    assert safe_post is not post
    assert guards.guard_for("alpha", "POST", "a.example", "/y", False) is post
    assert get.timeout_mode == "caller"
    assert get.classifier is vg_httpx.classify


def test_guard_for_creates_vendors_with_the_policy(metrics: CollectorRegistry) -> None:
    """A vendor the guards create gets ``policy``; one registered first keeps its own."""
    policy = vg.Policy(timeout=vg.Timeout(attempt=1.0), retry=vg.Retry(attempts=2),
                       breaker=vg.Breaker(failures=2))
    mine = vg.Vendor("mine", retry=vg.Retry(attempts=4), registry=metrics)
    guards = hosts({"a.example": "made", "b.example": "mine"}, registry=metrics,
                   policy=policy)
    made = guards.guard_for("made", "GET", "a.example", "/", True)
    assert made.vendor is vg.vendor("made")
    assert made.vendor.policy == policy
    assert guards.guard_for("mine", "GET", "b.example", "/", True).vendor is mine
    assert mine.retry == vg.Retry(attempts=4)


def test_default_policy_is_bounded() -> None:
    """The policy of created vendors bounds attempts and calls and has a breaker."""
    assert POLICY.timeout.attempt is not None
    assert POLICY.timeout.total is not None
    assert POLICY.retry is not None
    assert POLICY.retry.attempts > 1
    assert POLICY.breaker is not None


def test_operation_function_names_the_operation(metrics: CollectorRegistry) -> None:
    """operation(method, host, path) is called with the request's parts."""
    seen: list[tuple[str, str, str]] = []

    def operation(method: str, host: str, path: str) -> str:
        seen.append((method, host, path))
        return "messages.create"

    guards = hosts({"a.example": "alpha"}, registry=metrics, operation=operation)
    guard = guards.guard_for("alpha", "POST", "api.a.example", "/2010/Messages.json", False)
    assert guard.operation == "messages.create"
    assert seen == [("POST", "api.a.example", "/2010/Messages.json")]


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "a/b", "é", None, 5])
def test_bad_operation_names_are_refused(metrics: CollectorRegistry, name: Any) -> None:
    """An operation name becomes a metric label: [A-Za-z0-9_.-]{1,64} or ValueError."""
    guards = hosts({"a.example": "alpha"}, registry=metrics,
                   operation=lambda method, host, path: name)
    with pytest.raises(ValueError, match="operation"):
        guards.guard_for("alpha", "GET", "a.example", "/", True)


def test_operations_beyond_the_limit_are_other(metrics: CollectorRegistry) -> None:
    """The first 64 distinct names are kept; later ones share the guard ``other``; names
    seen before the limit keep their own."""
    guards = hosts({"a.example": "alpha"}, registry=metrics,
                   operation=lambda method, host, path: path.strip("/"))
    names = [guards.guard_for("alpha", "GET", "a.example", f"/op{i}", True).operation
             for i in range(MAX_OPERATIONS + 10)]
    assert names[:MAX_OPERATIONS] == [f"op{i}" for i in range(MAX_OPERATIONS)]
    assert names[MAX_OPERATIONS:] == ["other"] * 10
    assert guards.guard_for("alpha", "GET", "a.example", "/op3", True).operation == "op3"
    late = guards.guard_for("alpha", "GET", "a.example", f"/op{MAX_OPERATIONS + 1}", True)
    assert late is guards.guard_for("alpha", "GET", "a.example", "/op999", True)
    assert late.operation == "other"


# --------------------------------------------------------------------------------------------
# the classifiers
# --------------------------------------------------------------------------------------------
def circuit_open() -> vg.CircuitOpenError:
    return vg.CircuitOpenError("open", vendor="a", operation="get", retry_after=1.0)


def bulkhead_full() -> vg.BulkheadFullError:
    return vg.BulkheadFullError("full", vendor="a", operation="get")


def test_classifiers_pass_status_verdicts_through() -> None:
    """A StatusFailure's verdict is the classification, in every integration."""
    slack = pytest.importorskip("vendorguard.integrations.slack")
    verdict = Verdict(Kind.TRANSIENT, 2.0)
    for classify in (vg_httpx.classify, vg_requests.classify, slack.classify):
        assert classify(StatusFailure(429, verdict, None)) is verdict


@pytest.mark.parametrize(("exc", "expected"), [
    (httpx.ConnectError("refused"), Verdict(Kind.TRANSIENT, None, False)),
    (httpx.ConnectTimeout("timed out"), Verdict(Kind.TRANSIENT, None, True)),
    (httpx.PoolTimeout("no connection"), Verdict(Kind.TRANSIENT, None, True)),
    (httpx.ProxyError("proxy down"), Verdict(Kind.TRANSIENT, None, False)),
    (circuit_open(), Verdict(Kind.TRANSIENT, None, False)),
    (bulkhead_full(), Verdict(Kind.TRANSIENT, None, False)),
    (httpx.ReadTimeout("timed out"), Verdict(Kind.AMBIGUOUS, None, True)),
    (httpx.WriteTimeout("timed out"), Verdict(Kind.AMBIGUOUS, None, True)),
    (httpx.UnsupportedProtocol("ftp"), Kind.CALLER_ERROR),
    (httpx.LocalProtocolError("bad header"), Kind.CALLER_ERROR),
    (httpx.InvalidURL("bad url"), Kind.CALLER_ERROR),
    (TypeError("bad argument"), Kind.CALLER_ERROR),
    (ValueError("bad value"), Kind.CALLER_ERROR),
    (httpx.ReadError("reset"), Kind.AMBIGUOUS),
    (httpx.WriteError("broken pipe"), Kind.AMBIGUOUS),
    (httpx.RemoteProtocolError("disconnected"), Kind.AMBIGUOUS),
    (httpx.CloseError("close"), Kind.AMBIGUOUS),
    (RuntimeError("bug"), Kind.FATAL),
    (KeyError("bug"), Kind.FATAL),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None)
def test_httpx_classify(exc: Exception, expected: Kind | Verdict) -> None:
    """Each httpx exception by what the vendor could have done."""
    assert vg_httpx.classify(exc) == expected


def requests_error(kind: type[Exception], reason: Exception) -> Exception:
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 9)
    return kind(urllib3.exceptions.MaxRetryError(pool, "/x", reason))


_rx = requests.exceptions
_ux = urllib3.exceptions
_dropped = _ux.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed"))


@pytest.mark.parametrize(("exc", "expected"), [
    (circuit_open(), Kind.TRANSIENT),
    (bulkhead_full(), Kind.TRANSIENT),
    (requests_error(_rx.ConnectTimeout, _ux.ConnectTimeoutError(None, "timed out")),
     Verdict(Kind.TRANSIENT, None, True)),
    (requests_error(_rx.ProxyError, _ux.ProxyError("down", OSError())),
     Verdict(Kind.TRANSIENT, None, False)),
    (_rx.ReadTimeout("read timed out"), Verdict(Kind.AMBIGUOUS, None, True)),
    (_rx.Timeout("timed out"), Verdict(Kind.AMBIGUOUS, None, True)),
    (_rx.SSLError("bad certificate"), Kind.FATAL),
    (requests_error(_rx.ConnectionError, _ux.NewConnectionError(None, "refused")),
     Kind.TRANSIENT),
    (_rx.ConnectionError(_dropped), Kind.AMBIGUOUS),
    (_rx.ConnectionError("no detail"), Kind.AMBIGUOUS),
    (_rx.InvalidURL("bad"), Kind.CALLER_ERROR),
    (_rx.MissingSchema("no scheme"), Kind.CALLER_ERROR),
    (_rx.InvalidSchema("ftp"), Kind.CALLER_ERROR),
    (_rx.InvalidHeader("bad header"), Kind.CALLER_ERROR),
    (TypeError("bad argument"), Kind.CALLER_ERROR),
    (ValueError("bad value"), Kind.CALLER_ERROR),
    (_rx.ChunkedEncodingError("cut"), Kind.AMBIGUOUS),
    (_rx.ContentDecodingError("gzip"), Kind.AMBIGUOUS),
    (_rx.TooManyRedirects("loop"), Kind.AMBIGUOUS),
    (RuntimeError("bug"), Kind.FATAL),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None)
def test_requests_classify(exc: Exception, expected: Kind | Verdict) -> None:
    """Each requests exception by what the vendor could have done."""
    assert vg_requests.classify(exc) == expected


def test_requests_classify_real_refused_and_dns(unresolvable: str) -> None:
    """Real refused and unresolvable connects are transient (nothing was sent)."""
    refused = raised(lambda: requests.post(refused_url() + "/x", timeout=2))
    assert vg_requests.classify(refused) == Kind.TRANSIENT
    dns = raised(lambda: requests.post(f"http://{unresolvable}/x", timeout=2))
    assert vg_requests.classify(dns) == Kind.TRANSIENT, chain_of(dns)


def slack_classify() -> Any:
    return pytest.importorskip("vendorguard.integrations.slack").classify


@pytest.mark.parametrize(("exc", "expected"), [
    (urllib.error.URLError(ConnectionRefusedError(111, "refused")),
     Verdict(Kind.TRANSIENT, None, False)),
    (urllib.error.URLError(TimeoutError("timed out")), Verdict(Kind.TRANSIENT, None, True)),
    (urllib.error.URLError("unknown url type"), Verdict(Kind.TRANSIENT, None, False)),
    (urllib.error.HTTPError("http://x", 500, "boom", None, None), Kind.AMBIGUOUS),
    (circuit_open(), Kind.TRANSIENT),
    (bulkhead_full(), Kind.TRANSIENT),
    (ConnectionRefusedError(111, "refused"), Kind.TRANSIENT),
    (TimeoutError("timed out"), Kind.AMBIGUOUS),
    (http.client.RemoteDisconnected("closed"), Kind.AMBIGUOUS),
    (ConnectionResetError(104, "reset"), Kind.AMBIGUOUS),
    (http.client.IncompleteRead(b"partial"), Kind.AMBIGUOUS),
    (OSError("socket"), Kind.AMBIGUOUS),
    (TypeError("bad argument"), Kind.CALLER_ERROR),
    (ValueError("bad value"), Kind.CALLER_ERROR),
    (RuntimeError("bug"), Kind.FATAL),
], ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None)
def test_slack_classify(exc: Exception, expected: Kind | Verdict) -> None:
    """Each exception the Slack SDK lets through urllib, by what Slack could have done."""
    assert slack_classify()(exc) == expected
