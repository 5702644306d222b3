"""What the HTTP guards share: host -> vendor mapping, status classification, timeout clamps.

The guards for httpx, requests and urllib-based SDKs (Slack) see each HTTP request: its method,
its host, and the answer's status and headers. An answer the guard counts as a failure (429,
5xx) is raised inside the attempt as :class:`StatusFailure`, so that retry, breaker and metrics
react to it; when the guard is done, the SDK above gets the vendor's own last answer, never a
vendorguard exception in its place (only :class:`vendorguard.CircuitOpenError` and the other
rejections, which stand for "no request was sent").
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vendorguard.classify import Kind, Verdict
from vendorguard.fallback import MISSING
from vendorguard.pipeline import Guard
from vendorguard.policy import Backoff, Breaker, Policy, Retry, Timeout
from vendorguard.registry import Vendor, get_or_create
from vendorguard.retry import parse_retry_after
from vendorguard.timeouts import attempt_timeout

__all__ = ["IDEMPOTENT_METHODS", "POLICY", "HostGuards", "Operation", "StatusFailure",
           "bounded_timeout", "clamp", "classify_status", "connect_phase", "failure", "judged",
           "run", "run_async"]

POLICY = Policy(timeout=Timeout(attempt=10.0, total=30.0),
                retry=Retry(attempts=3, backoff=Backoff(initial=0.2, maximum=5.0)),
                breaker=Breaker(failures=5, reset_after=30.0))
"""The policy of a vendor the HTTP guards create (one registered first keeps its own)."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""Methods a retry may resend after the vendor could have acted (RFC 9110 §9.2.2)."""

Operation = Callable[[str, str, str], str]
"""``(method, host, path) -> operation name``; must return values from a small fixed set."""

_NAME = re.compile(r"^[a-z0-9_.-]{1,64}$")
_OPERATION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_HOSTS = 1024
MAX_OPERATIONS = 64
"""Distinct operation names per set of HTTP guards; later names are counted as ``other``."""


class StatusFailure(Exception):
    """An HTTP answer counted as a failure (429, 5xx, or a 4xx caller error).

    Raised inside an attempt and caught by the guard's caller, which hands ``response`` (the
    vendor's answer) to the SDK. Carries no URL, body or header values in its message.
    """

    def __init__(self, status: int, verdict: Verdict, response: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.verdict = verdict
        self.response = response


def judged(response: Any, status: int, headers: Any) -> Any:
    """``response`` when the guard counts it as a success; else raises
    :class:`StatusFailure` carrying it."""
    verdict = classify_status(status, headers)
    if verdict is None:
        return response
    raise StatusFailure(status, verdict, response)


def failure(status: int, headers: Any, response: Any) -> StatusFailure:
    """The :class:`StatusFailure` for an answer with a failing ``status`` (fault injection)."""
    return StatusFailure(status, classify_status(status, headers) or _CALLER, response)


def run(guard: Guard, attempt: Callable[[], Any]) -> Any:
    """``attempt()`` through ``guard``; the vendor's last answer when the guard gives up on
    an answer (a status failure), the guard's or transport's exception otherwise."""
    try:
        return guard.run_sync(attempt, (), {})
    except StatusFailure as failed:
        return failed.response


async def run_async(guard: Guard, attempt: Callable[[], Awaitable[Any]]) -> Any:
    """The async twin of :func:`run`."""
    try:
        return await guard.run_async(attempt, (), {})
    except StatusFailure as failed:
        return failed.response


def classify_status(status: int, headers: Any) -> Verdict | None:
    """The verdict on an answer with this status, ``None`` when it is not a failure.

    429 and 503 (the vendor did not process the request) are transient, with the vendor's
    ``Retry-After``; 408 is transient; other 4xx are caller errors; other 5xx are ambiguous:
    the vendor may have acted, so only an idempotent request is retried.
    """
    if status < 400:
        return None
    if status in (429, 503, 408):
        return Verdict(Kind.TRANSIENT, _retry_after(headers))
    if status < 500:
        return _CALLER
    return Verdict(Kind.AMBIGUOUS, _retry_after(headers))


_CALLER = Verdict(Kind.CALLER_ERROR)


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
    except (AttributeError, TypeError):
        return None
    return parse_retry_after(value)


_CONNECTING = frozenset({"ConnectTimeout", "NewConnectionError", "ConnectError",
                         "ClientConnectorError", "ConnectionRefusedError", "gaierror"})
_SENT = frozenset({"ReadTimeout", "ReadError", "RemoteProtocolError", "ProtocolError",
                   "ServerDisconnectedError", "RemoteDisconnected"})


def connect_phase(exc: BaseException | None) -> bool:
    """Whether a transport error (requests, urllib3, httpx, aiohttp, socket) happened while
    connecting, before any of the request was sent: found by the exception chain's types."""
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & _CONNECTING:
            return True
        if names & _SENT:
            return False
        reason = getattr(exc, "reason", None)
        nested = reason if isinstance(reason, BaseException) else next(
            (a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)), None)
        exc = nested or exc.__cause__ or exc.__context__
    return False


def _min(own: Any, bound: float) -> Any:
    if own is None:
        return bound
    if isinstance(own, (int, float)) and not isinstance(own, bool):
        return min(float(own), bound)
    if isinstance(own, tuple):
        return tuple(_min(part, bound) for part in own)
    return own


def clamp(own: Any, bound: float | None = None) -> Any:
    """A socket timeout (``None``, seconds, or a ``(connect, read)`` tuple) no longer than
    the current attempt's bound (``vendorguard.timeouts.attempt_timeout()``)."""
    if bound is None:
        bound = attempt_timeout()
        if bound is None:
            return own
    return _min(own, max(bound, 0.001))


def bounded_timeout(attr: str) -> property:
    """A property for an SDK object's timeout attribute: set as usual, read as no longer
    than the current attempt's bound. Thread-safe: the bound lives in a context variable."""

    def get(self: Any) -> Any:
        return clamp(self.__dict__.get(attr))

    def set_(self: Any, value: Any) -> None:
        self.__dict__[attr] = value

    return property(get, set_, doc=f"the SDK's {attr}, bounded by the guard's attempt")


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


class HostGuards:
    """Maps request hosts to vendors and (vendor, operation, safe) to guards, both cached.

    A host matches a key of ``vendors`` when it equals it or is a subdomain of it (the longest
    key wins); unmatched hosts go to ``default``, or pass through unguarded when it is
    ``None``. Guards are built on first use with the shared ``classifier``; ``safe`` requests
    (idempotent method, or an idempotency key) may be retried after ambiguous failures.
    """

    def __init__(self, vendors: Mapping[str, str] | None, default: str | None,
                 classifier: Callable[[Exception], Kind | Verdict], *,
                 operation: Operation | None = None, registry: Any = None,
                 policy: Policy = POLICY, idempotency_header: str | None = None) -> None:
        if idempotency_header is not None and not isinstance(idempotency_header, str):
            raise TypeError(f"idempotency_header must be a header name or None, "
                            f"got {idempotency_header!r}")
        mapping = dict(vendors or {})
        for host, name in mapping.items():
            if not isinstance(host, str) or not host:
                raise ValueError(f"vendors: a host must be a non-empty string, got {host!r}")
            _check_name(f"vendors[{host!r}]", name)
        if default is not None:
            _check_name("default", default)
        if operation is not None and not callable(operation):
            raise TypeError(f"operation must be callable (method, host, path) -> str, "
                            f"got {operation!r}")
        self._keys = sorted(((_host_key(h), n) for h, n in mapping.items()),
                            key=lambda item: -len(item[0]))
        self.default = default
        self.idempotency_header = idempotency_header
        self.classifier = classifier
        self.operation = operation
        self.registry = registry
        self.policy = policy
        self._hosts: dict[str, str | None] = {}
        self._guards: dict[tuple[str, str, bool], Guard] = {}
        self._ops: set[str] = set()
        self._lock = threading.Lock()

    def vendor_for(self, host: str | None) -> str | None:
        """The vendor name for ``host``, or ``None`` to pass the request through."""
        if not host:
            return self.default
        found = self._hosts.get(host, _UNSEEN)
        if found is not _UNSEEN:
            return found  # type: ignore[return-value]
        key = _host_key(host)
        name = self.default
        for suffix, vendor in self._keys:
            if key == suffix or key.endswith("." + suffix):
                name = vendor
                break
        if len(self._hosts) < _MAX_HOSTS:
            self._hosts[host] = name
        return name

    def for_request(self, method: str, host: str | None, path: str,
                    headers: Mapping[str, str]) -> Guard | None:
        """The guard of one request, or ``None`` to send it unguarded. A request is safe to
        resend when its method is idempotent or it carries the idempotency header."""
        vendor = self.vendor_for(host)
        if vendor is None:
            return None
        header = self.idempotency_header
        safe = method in IDEMPOTENT_METHODS or (header is not None and header in headers)
        return self.guard_for(vendor, method, host or "", path, safe)

    def guard_for(self, vendor: str, method: str, host: str, path: str, safe: bool) -> Guard:
        op = self.operation(method, host, path) if self.operation else method.lower()
        key = (vendor, op, safe)
        found = self._guards.get(key)
        if found is not None:
            return found
        if not isinstance(op, str) or not _OPERATION.match(op):
            raise ValueError(f"operation must return a name matching [A-Za-z0-9_.-]{{1,64}} "
                             f"(it becomes a metric label), got {op!r}")
        with self._lock:
            found = self._guards.get(key)
            if found is None:
                name = op if op in self._ops or len(self._ops) < MAX_OPERATIONS else "other"
                self._ops.add(name)
                found = self._guards.get((vendor, name, safe))
                if found is None:
                    found = self._vendor(vendor)._guard(name, MISSING, None, MISSING,
                                                        self.classifier, safe, "caller")
                    self._guards[vendor, name, safe] = found
                if len(self._guards) < _MAX_HOSTS:
                    self._guards[key] = found
        return found

    def _vendor(self, name: str) -> Vendor:
        p = self.policy
        return get_or_create(name, timeout=p.timeout, retry=p.retry, breaker=p.breaker,
                             bulkhead=p.bulkhead, registry=self.registry)


_UNSEEN = object()


def _check_name(field: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{field} must match [a-z0-9_.-]{{1,64}} (it becomes a metric "
                         f"label), got {value!r}")
