"""Guard any HTTP vendor behind an httpx client: a transport that maps hosts to vendors.

For every SDK that accepts an ``httpx.Client`` / ``httpx.AsyncClient`` (OpenAI, Anthropic and
many others), or your own httpx calls::

    from vendorguard.integrations.httpx import GuardedTransport, AsyncGuardedTransport

    transport = GuardedTransport(vendors={"api.openai.com": "openai"})
    client = httpx.Client(transport=transport)
    async_client = httpx.AsyncClient(transport=AsyncGuardedTransport(vendors={...}))

Each request to a mapped host (the host itself or a subdomain; the longest match wins; other
hosts go to ``default``, or pass through unguarded when it is ``None``) is one call of that
vendor's guard, operation ``get``/``post``/... (or what ``operation(method, host, path)``
returns: name operations in code, never from data). Vendors are created with
:data:`vendorguard.integrations._http.POLICY` unless registered first.

- Answers: 2xx/3xx are successes; 429 and 503 (and 408) are transient, retried no earlier than
  ``Retry-After``; other 4xx are caller errors (returned at once, not counted by the breaker);
  other 5xx are ambiguous: retried only for idempotent methods (GET, HEAD, OPTIONS, PUT,
  DELETE) or a request carrying ``idempotency_header``. When the guard is done the client gets
  the vendor's last answer, exactly as without the guard.
- Errors: a connect error or connect/pool timeout (nothing was sent) is transient; a read or
  write timeout or a dropped connection is ambiguous. The caller gets httpx's own exception,
  or :class:`vendorguard.CircuitOpenError` when the vendor's breaker is open (no request).
- Timeouts: each attempt's connect/read/write/pool timeouts are clamped to the guard's attempt
  bound and the remaining deadline, on the request itself: no thread. The async transport is
  also cancelled at the bound.

A request body is read into memory before the first attempt, so that a retry can resend it.
Turn off retries of the SDK above (``max_retries=0``), or both layers retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without httpx
    raise ImportError("vendorguard.integrations.httpx needs httpx: "
                      "pip install 'vendorguard[httpx]'") from exc

from prometheus_client import CollectorRegistry

from vendorguard.classify import Kind, Verdict
from vendorguard.errors import BulkheadFullError, CircuitOpenError, VendorTimeoutError
from vendorguard.policy import Policy
from vendorguard.testing.faults import Translator, register_translator
from vendorguard.timeouts import attempt_timeout

from ._http import (
    POLICY,
    HostGuards,
    Operation,
    StatusFailure,
    failure,
    judged,
    run,
    run_async,
)

__all__ = ["POLICY", "AsyncGuardedTransport", "GuardedTransport", "classify"]

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
             CircuitOpenError, BulkheadFullError)


def classify(exc: Exception) -> Kind | Verdict:
    """Classify a failed attempt of an httpx request by what the vendor could have done."""
    if isinstance(exc, StatusFailure):
        return exc.verdict
    if isinstance(exc, _NOT_SENT):
        return Verdict(Kind.TRANSIENT, None, isinstance(exc, httpx.TimeoutException))
    if isinstance(exc, (httpx.TimeoutException, VendorTimeoutError)):
        return Verdict(Kind.AMBIGUOUS, None, True)  # read, write, cut: the request went out
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError,
                        httpx.InvalidURL, TypeError, ValueError)):
        return Kind.CALLER_ERROR
    if isinstance(exc, httpx.TransportError):  # read/write error, dropped, protocol error
        return Kind.AMBIGUOUS
    return Kind.FATAL


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    return dict(request.extensions.get("timeout") or {})


def _bound(request: httpx.Request, own: dict[str, float | None]) -> None:
    """Clamp the request's timeouts to this attempt's bound (from the original values)."""
    bound = attempt_timeout()
    if bound is None:
        return
    bound = max(bound, 0.001)
    clamped = {k: bound if v is None else min(v, bound)
               for k, v in (own or dict.fromkeys(("connect", "read", "write", "pool"))).items()}
    request.extensions = {**request.extensions, "timeout": clamped}


def _hosts(vendors: Mapping[str, str] | None, default: str | None,
           operation: Operation | None, idempotency_header: str | None,
           registry: CollectorRegistry | None, policy: Policy) -> HostGuards:
    return HostGuards(vendors, default, classify, operation=operation, registry=registry,
                      policy=policy, idempotency_header=idempotency_header)


def _guard(hosts: HostGuards, request: httpx.Request) -> Any:
    url = request.url
    return hosts.for_request(request.method, url.host, url.path, request.headers)


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport that guards the requests to mapped hosts.

    Args:
        transport: the transport that sends (default: a new ``httpx.HTTPTransport()``).
        vendors: ``{host: vendor name}``; a host also covers its subdomains.
        default: the vendor of other hosts; ``None`` lets them pass unguarded.
        operation: ``(method, host, path) -> name``; default: the lowercase method.
        idempotency_header: a request carrying this header may be resent after an ambiguous
            failure (``None``: only idempotent methods).
        registry: Prometheus registry for vendors created here.
        policy: the policy of vendors created here.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None, *,
                 vendors: Mapping[str, str] | None = None, default: str | None = None,
                 operation: Operation | None = None,
                 idempotency_header: str | None = "Idempotency-Key",
                 registry: CollectorRegistry | None = None, policy: Policy = POLICY) -> None:
        self.hosts = _hosts(vendors, default, operation, idempotency_header, registry, policy)
        self.transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        guard = _guard(self.hosts, request)
        if guard is None:
            return self.transport.handle_request(request)
        request.read()  # a retry must be able to resend the body
        inner, own = self.transport, _timeouts(request)
        last: list[httpx.Response] = []

        def attempt() -> httpx.Response:
            if last:
                last.pop().close()
            _bound(request, own)
            response = inner.handle_request(request)
            last.append(response)
            return judged(response, response.status_code, response.headers)

        return run(guard, attempt)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.transport.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`GuardedTransport` (same arguments; ``transport`` defaults to
    a new ``httpx.AsyncHTTPTransport()``); attempts are also cancelled at their bound."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *,
                 vendors: Mapping[str, str] | None = None, default: str | None = None,
                 operation: Operation | None = None,
                 idempotency_header: str | None = "Idempotency-Key",
                 registry: CollectorRegistry | None = None, policy: Policy = POLICY) -> None:
        self.hosts = _hosts(vendors, default, operation, idempotency_header, registry, policy)
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        guard = _guard(self.hosts, request)
        if guard is None:
            return await self.transport.handle_async_request(request)
        await request.aread()
        inner, own = self.transport, _timeouts(request)
        last: list[httpx.Response] = []

        async def attempt() -> httpx.Response:
            if last:
                await last.pop().aclose()
            _bound(request, own)
            response = await inner.handle_async_request(request)
            last.append(response)
            return judged(response, response.status_code, response.headers)

        return await run_async(guard, attempt)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self.transport.aclose()


class _Faults(Translator):
    """Injected faults (:mod:`vendorguard.testing`) as httpx and the vendor would show them."""

    def refused(self) -> BaseException:
        return httpx.ConnectError("All connection attempts failed (injected)")

    def timed_out(self) -> BaseException:
        return httpx.ReadTimeout("timed out (injected)")

    def status(self, code: int, retry_after: float | None) -> BaseException:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        response = httpx.Response(code, headers=headers, json={"error": "injected"})
        return failure(code, response.headers, response)


register_translator(classify, _Faults())
