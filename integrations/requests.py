"""Guard any HTTP vendor behind a requests session: an adapter that maps hosts to vendors.

For every SDK built on ``requests`` that exposes its session (Twilio's ``TwilioHttpClient``,
many REST clients) and for your own requests code::

    from vendorguard.integrations.requests import GuardedAdapter, mount

    session = requests.Session()
    mount(session, GuardedAdapter(vendors={"api.twilio.com": "twilio"}))

Each request to a mapped host (the host or a subdomain, the longest match wins; other hosts go
to ``default`` or pass through unguarded) is one call of that vendor's guard, operation
``get``/``post``/... or what ``operation(method, host, path)`` returns. The rules are those of
:mod:`vendorguard.integrations.httpx`: 429/503/408 transient with ``Retry-After``, other 4xx
caller errors, other 5xx ambiguous (retried only for idempotent methods or a request with an
``Idempotency-Key``), connect failures transient, read timeouts and dropped connections
ambiguous; the session gets the vendor's last answer or requests' own exception, or
:class:`vendorguard.CircuitOpenError` when the breaker is open.

Each attempt's ``timeout`` (connect and read) is clamped to the guard's attempt bound and the
remaining deadline: no thread. A body that is a file or an iterator is read into memory once,
so that a retry can resend it. The adapter refuses urllib3 retries (``max_retries``): one layer
retries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util import Timeout as Urllib3Timeout
except ImportError as exc:  # pragma: no cover - exercised only without requests
    raise ImportError("vendorguard.integrations.requests needs requests: "
                      "pip install 'vendorguard[requests]'") from exc

from prometheus_client import CollectorRegistry

from vendorguard.classify import Kind, Verdict
from vendorguard.errors import BulkheadFullError, CircuitOpenError
from vendorguard.policy import Policy
from vendorguard.testing.faults import Translator, register_translator
from vendorguard.timeouts import attempt_timeout

from ._http import (
    POLICY,
    HostGuards,
    Operation,
    StatusFailure,
    clamp,
    connect_phase,
    failure,
    judged,
    run,
)

__all__ = ["POLICY", "GuardedAdapter", "classify", "mount"]

_exc = requests.exceptions


def classify(exc: Exception) -> Kind | Verdict:
    """Classify a failed attempt of a requests call by what the vendor could have done."""
    if isinstance(exc, StatusFailure):
        return exc.verdict
    if isinstance(exc, (CircuitOpenError, BulkheadFullError)):
        return Kind.TRANSIENT
    if isinstance(exc, (_exc.ConnectTimeout, _exc.ProxyError)):
        return Verdict(Kind.TRANSIENT, None, isinstance(exc, _exc.Timeout))
    if isinstance(exc, _exc.Timeout):  # read timeout: the request went out
        return Verdict(Kind.AMBIGUOUS, None, True)
    if isinstance(exc, _exc.SSLError):
        return Kind.FATAL
    if isinstance(exc, _exc.ConnectionError):
        return Kind.TRANSIENT if connect_phase(exc) else Kind.AMBIGUOUS
    if isinstance(exc, (_exc.InvalidURL, _exc.MissingSchema, _exc.InvalidSchema,
                        _exc.InvalidHeader, TypeError, ValueError)):
        return Kind.CALLER_ERROR
    if isinstance(exc, _exc.RequestException):
        return Kind.AMBIGUOUS
    return Kind.FATAL


def _bounded(timeout: Any) -> Any:
    bound = attempt_timeout()
    if bound is None:
        return timeout
    if isinstance(timeout, Urllib3Timeout):  # its raw parts: reading read_timeout may raise
        total = timeout.total
        return Urllib3Timeout(connect=clamp(_seconds(getattr(timeout, "_connect", None)), bound),
                              read=clamp(_seconds(getattr(timeout, "_read", None)), bound),
                              total=None if total is None else min(total, bound))
    return clamp(timeout, bound)


def _seconds(value: Any) -> float | None:
    """A urllib3 timeout part as seconds, ``None`` for no bound (or urllib3's default)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _replayable(request: requests.PreparedRequest) -> None:
    """Read a file or iterator body into memory so that every attempt sends all of it."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return
    if hasattr(body, "read"):
        data = body.read()
    else:
        data = b"".join(part if isinstance(part, bytes) else str(part).encode()
                        for part in body)
    request.body = data.encode() if isinstance(data, str) else data


class GuardedAdapter(HTTPAdapter):
    """A requests ``HTTPAdapter`` that guards the requests to mapped hosts.

    Args:
        vendors: ``{host: vendor name}``; a host also covers its subdomains.
        default: the vendor of other hosts; ``None`` lets them pass unguarded.
        operation: ``(method, host, path) -> name``; default: the lowercase method.
        idempotency_header: a request carrying this header may be resent after an ambiguous
            failure (``None``: only idempotent methods).
        registry: Prometheus registry for vendors created here.
        policy: the policy of vendors created here.
        adapter_options: ``pool_connections``, ``pool_maxsize``, ``pool_block``.
    """

    def __init__(self, vendors: Mapping[str, str] | None = None, default: str | None = None,
                 *, operation: Operation | None = None,
                 idempotency_header: str | None = "Idempotency-Key",
                 registry: CollectorRegistry | None = None, policy: Policy = POLICY,
                 **adapter_options: Any) -> None:
        retries = adapter_options.pop("max_retries", 0)
        if retries not in (0, None):
            raise ValueError(f"max_retries must be 0 (vendorguard retries; two layers would "
                             f"multiply attempts), got {retries!r}")
        self.hosts = HostGuards(vendors, default, classify, operation=operation,
                                registry=registry, policy=policy,
                                idempotency_header=idempotency_header)
        super().__init__(**adapter_options)

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        url = urlsplit(request.url or "")
        send = super().send
        guard = self.hosts.for_request((request.method or "GET").upper(), url.hostname,
                                       url.path, request.headers)
        if guard is None:
            return send(request, stream, timeout, verify, cert, proxies)
        _replayable(request)
        last: list[requests.Response] = []

        def attempt() -> requests.Response:
            if last:
                last.pop().close()
            response = send(request, stream, _bounded(timeout), verify, cert, proxies)
            last.append(response)
            return judged(response, response.status_code, response.headers)

        return run(guard, attempt)  # type: ignore[no-any-return]


def mount(session: requests.Session, adapter: GuardedAdapter,
          prefixes: tuple[str, ...] = ("https://", "http://")) -> requests.Session:
    """Mount ``adapter`` on ``session`` for ``prefixes`` (both schemes by default); returns
    the session. Twilio: ``mount(TwilioHttpClient(timeout=10).session, adapter)``."""
    for prefix in prefixes:
        session.mount(prefix, adapter)
    return session


class _Faults(Translator):
    """Injected faults (:mod:`vendorguard.testing`) as requests and the vendor would show them."""

    def refused(self) -> BaseException:
        return _exc.ConnectionError(ConnectionRefusedError(111, "Connection refused (injected)"))

    def timed_out(self) -> BaseException:
        return _exc.ReadTimeout("Read timed out (injected)")

    def status(self, code: int, retry_after: float | None) -> BaseException:
        response = requests.Response()
        response.status_code = code
        response._content = b'{"error": "injected"}'
        response.headers["Content-Type"] = "application/json"
        if retry_after is not None:
            response.headers["Retry-After"] = f"{retry_after:g}"
        return failure(code, response.headers, response)


register_translator(classify, _Faults())
