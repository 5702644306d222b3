"""SendGrid drop-in: bounded, classified, breaker-guarded mail sends (no duplicate emails).

Change one import line::

    from vendorguard.integrations.sendgrid import SendGridAPIClient  # was: from sendgrid import

    sg = SendGridAPIClient(os.environ["SENDGRID_API_KEY"])         # same arguments as the SDK
    sg.send(mail)                                   # or sg.client.mail.send.post(request_body=...)

or guard a client you already have: ``sg = vendorguard.integrations.sendgrid.wrap(sg)``.

Both send paths are the operation ``mail.send`` of the vendor ``sendgrid`` (created with
:data:`POLICY` unless you registered your own ``vg.Vendor("sendgrid", ...)``). Every attempt gets
the SDK's own socket timeout (``timeout=``, per connect and per read) from the guard's attempt
timeout: no worker thread. Each failure (the caller gets the SDK's own exception, unchanged):

- 4xx (400, 401, 403, 413, ...): caller error, raised at once; no retry, no breaker count.
- 429 ``TooManyRequestsError``: transient, retried no earlier than ``Retry-After`` or
  ``X-RateLimit-Reset``; a wait beyond ``Retry.max_retry_after`` or the deadline ends the call.
- connection refused, connect timeout (``URLError``): nothing was sent: transient, retried.
- 5xx, read timeout (bare ``TimeoutError``), dropped connection: ambiguous, the mail may have
  been accepted: not retried. An open breaker raises ``vg.CircuitOpenError`` without a request.

SendGrid has no idempotency key, so an ambiguous failure is retried only with
``at_least_once=True`` (duplicates possible). With ``outbox=vg.Outbox(path)`` a send that could
not reach SendGrid (not sent, rate limited, or rejected by an open breaker) is kept on disk and
``send`` returns a :class:`vendorguard.Receipt` instead of raising; the outbox redelivers the
request body later through the same guard. Ambiguous failures are not kept (they are raised)
unless ``at_least_once``. Only the body is kept: pass no per-call ``request_headers`` /
``query_params`` to an outboxed send. Metrics and logs carry no key, address or content; the
SDK's own debug log lines (payload, headers with the API key, bodies) are redacted.
Supported: sendgrid 6.x (python-http-client 3.x).
"""

from __future__ import annotations

import email.message
import http.client
import io
import logging
import math
import re
import time
import urllib.error
from typing import Any

try:
    import python_http_client
    import sendgrid
    from python_http_client.exceptions import HTTPError as SendGridHTTPError
except ImportError as exc:  # pragma: no cover - exercised only without the SDK
    raise ImportError("vendorguard.integrations.sendgrid needs the SendGrid SDK: "
                      "pip install 'vendorguard[sendgrid]'") from exc

import wrapt
from prometheus_client import CollectorRegistry

from vendorguard.classify import Kind, Verdict
from vendorguard.errors import BulkheadFullError, CircuitOpenError, VendorTimeoutError
from vendorguard.fallback import MISSING, Failure, FallbackStrategy, NoFallback
from vendorguard.policy import Backoff, Breaker, Policy, Retry, Timeout
from vendorguard.registry import Vendor, get_or_create
from vendorguard.retry import parse_retry_after
from vendorguard.testing.faults import Translator, register_translator
from vendorguard.timeouts import attempt_timeout

__all__ = ["OPERATION", "POLICY", "SendGridAPIClient", "SendGuard", "classify", "wrap"]

OPERATION = "mail.send"
POLICY = Policy(timeout=Timeout(attempt=5.0, total=15.0),
                retry=Retry(attempts=3, backoff=Backoff(initial=0.5, maximum=8.0)),
                breaker=Breaker(failures=5, reset_after=30.0))
"""The policy of a ``sendgrid`` vendor created by the drop-in."""

_RESET_IS_DELTA = 1e9  # an X-RateLimit-Reset below this is seconds from now, not an epoch


def _rate_limit_wait(headers: Any) -> float | None:
    """Seconds SendGrid asked us to wait: ``Retry-After``, else ``X-RateLimit-Reset``."""
    if headers is None:
        return None
    wait = parse_retry_after(headers.get("Retry-After"))
    if wait is not None:
        return wait
    try:
        reset = float(headers.get("X-RateLimit-Reset"))
    except (TypeError, ValueError):
        return None
    if not math.isfinite(reset):
        return None
    return max(0.0, reset if reset < _RESET_IS_DELTA else reset - time.time())


def classify(exc: Exception) -> Kind | Verdict:
    """Classify a failure of the SendGrid SDK by what SendGrid could have done (vendors.md)."""
    if isinstance(exc, SendGridHTTPError):
        status = int(getattr(exc, "status_code", 0) or 0)
        if status == 429:
            return Verdict(Kind.TRANSIENT, _rate_limit_wait(getattr(exc, "headers", None)))
        if 400 <= status < 500:
            return Kind.CALLER_ERROR
        return Kind.AMBIGUOUS  # 5xx: SendGrid may have accepted the mail
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        # urllib wraps only what fails while connecting and sending: nothing was processed.
        return Verdict(Kind.TRANSIENT, None, isinstance(exc.reason, TimeoutError))
    if isinstance(exc, (CircuitOpenError, BulkheadFullError)):
        return Kind.TRANSIENT  # an inner guard refused: not sent
    if isinstance(exc, (TimeoutError, ConnectionError, http.client.HTTPException, OSError)):
        return Kind.AMBIGUOUS  # read timeout, dropped connection: the request was sent
    if isinstance(exc, (TypeError, ValueError)):
        return Kind.CALLER_ERROR  # a body json cannot encode, a bad argument
    return Kind.FATAL


def _not_sent(exc: BaseException) -> bool:
    if isinstance(exc, VendorTimeoutError):  # the deadline passed before an attempt
        return True
    if not isinstance(exc, Exception):
        return False
    verdict = classify(exc)
    return (verdict.kind if isinstance(verdict, Verdict) else verdict) is Kind.TRANSIENT


class _KeepIfUnsent(FallbackStrategy):
    """The outbox's fallback, used only when the mail surely was not sent (or duplicates are
    accepted): an ambiguous failure is raised rather than queued for a second send."""

    def __init__(self, inner: FallbackStrategy, at_least_once: bool) -> None:
        self.inner, self.at_least_once = inner, at_least_once

    def serve(self, failure: Failure) -> Any:
        if self.at_least_once or _not_sent(failure.exception):
            return self.inner.serve(failure)
        raise NoFallback


class _RedactSDKLog(logging.Filter):
    """python-http-client logs payloads, headers (the API key) and bodies at DEBUG."""

    _ADDRESS = re.compile(r"[^/?\s]+@[^/?\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        redacted = "<redacted by vendorguard>"
        if text.startswith(("PAYLOAD", "HEADERS")):
            record.msg = f"{text.split(':', 1)[0]}: {redacted}"
        elif " Response: " in text:
            record.msg = " ".join([*text.split(" ")[:3], redacted])
        elif " Request: " in text:
            record.msg = self._ADDRESS.sub(redacted, text.split("?", 1)[0])
        record.args = ()
        return True


_REDACT = _RedactSDKLog()


def _vendor(name: str, registry: CollectorRegistry | None) -> Vendor:
    """The vendor called ``name``, created with :data:`POLICY` if it does not exist."""
    return get_or_create(name, timeout=POLICY.timeout, retry=POLICY.retry,
                         breaker=POLICY.breaker, registry=registry)


def _post(http: Any, body: Any, timeout: float | None, extra: dict[str, Any]) -> Any:
    """One attempt: the SDK's own post, its socket timeout the tighter of the caller's (or
    the client's) and the guard's attempt bound."""
    bound = attempt_timeout()
    own = timeout if timeout is not None else http.timeout
    if bound is not None and (own is None or bound < own):
        own = bound
    return http.post(request_body=body, timeout=own, **extra)


class SendGuard:
    """The guarded ``mail.send`` of one SendGrid client.

    Args:
        vendor: the vendorguard vendor name (get-or-create with :data:`POLICY`).
        outbox: a :class:`vendorguard.Outbox`: keep unsent mail and return a Receipt.
        at_least_once: retry (and keep) ambiguous failures too: duplicates possible.
        registry: Prometheus registry for a vendor created here.
    """

    def __init__(self, *, vendor: str = "sendgrid", outbox: Any = None,
                 at_least_once: bool = False, registry: CollectorRegistry | None = None) -> None:
        self.vendor = _vendor(vendor, registry)
        self.outbox = outbox
        self.at_least_once = bool(at_least_once)
        self.http: Any = None
        """The raw ``python_http_client.Client`` that outbox deliveries use."""
        timeout = self.vendor.timeout
        if timeout.attempt is None:  # always a socket bound: the SDK's default is none
            timeout = Timeout(attempt=POLICY.timeout.attempt, total=timeout.total)

        def guarded(fallback: Any) -> Any:
            return self.vendor.guard(OPERATION, fallback=fallback, timeout=timeout,
                                     classifier=classify, idempotent=self.at_least_once,
                                     timeout_mode="caller")(_post)

        self.deliver_now = guarded(MISSING)
        self.post = self.deliver_now
        if outbox is not None:
            keep = outbox.fallback(encode=lambda args, kwargs: args[1],
                                   keep_ambiguous=self.at_least_once)
            self.post = guarded(_KeepIfUnsent(keep, self.at_least_once))
            outbox.register(self.vendor.name, OPERATION, self.redeliver, classify=classify)
        logging.getLogger("python_http_client.client").addFilter(_REDACT)

    def redeliver(self, body: Any) -> Any:
        """Send a kept request body (the outbox calls this), through the guard, no fallback."""
        if self.http is None:
            raise RuntimeError("this SendGrid client has no HTTP client yet")
        return self.deliver_now(self.http.mail.send, body, None, {})

    def send(self, http: Any, message: Any) -> Any:
        body = message if isinstance(message, dict) else message.get()
        return self.post(http.mail.send, body, None, {})


class _HTTP(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """A ``python_http_client.Client`` (``sg.client`` and every segment below it) whose
    ``mail.send.post`` is guarded; everything else is the SDK's own."""

    def __init__(self, client: Any, guard: SendGuard) -> None:
        super().__init__(client)
        self._self_guard = guard

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_self_"):
            raise AttributeError(name)
        raw = self.__wrapped__
        if name == "post" and raw._url_path == ["mail", "send"]:
            return self._self_post
        value = getattr(raw, name)
        if isinstance(value, python_http_client.Client):
            return _HTTP(value, self._self_guard)
        if name in ("_", "version"):
            return lambda *args: _HTTP(value(*args), self._self_guard)
        return value

    def _self_post(self, request_body: Any = None, query_params: Any = None,
                   request_headers: Any = None, timeout: float | None = None,
                   **_: Any) -> Any:
        extra = {k: v for k, v in (("query_params", query_params),
                                   ("request_headers", request_headers)) if v is not None}
        return self._self_guard.post(self.__wrapped__, request_body, timeout, extra)


class SendGridAPIClient(sendgrid.SendGridAPIClient):  # type: ignore[misc]
    """``sendgrid.SendGridAPIClient`` whose mail sends are guarded (a drop-in)."""

    def __init__(self, api_key: str | None = None, host: str = "https://api.sendgrid.com",
                 impersonate_subuser: str | None = None, *, vendor: str = "sendgrid",
                 outbox: Any = None, at_least_once: bool = False,
                 registry: CollectorRegistry | None = None) -> None:
        self._vg = SendGuard(vendor=vendor, outbox=outbox, at_least_once=at_least_once,
                             registry=registry)
        self._vg_http: Any = None
        super().__init__(api_key, host, impersonate_subuser)

    @property
    def vendorguard(self) -> SendGuard:
        return self._vg

    @property
    def client(self) -> Any:
        return self._vg_http

    @client.setter
    def client(self, value: Any) -> None:
        raw = value.__wrapped__ if isinstance(value, _HTTP) else value
        self._vg.http = raw
        self._vg_http = _HTTP(raw, self._vg)

    def send(self, message: Any) -> Any:
        """Send a ``Mail`` (or its dict); a Response, or a Receipt when kept by the outbox."""
        return self._vg.send(self._vg.http, message)


class _Wrapped(wrapt.BaseObjectProxy):  # type: ignore[type-arg]
    """An existing client with guarded sends; everything else is the client's own."""

    def __init__(self, client: Any, guard: SendGuard) -> None:
        super().__init__(client)
        self._self_guard = guard
        self._self_http: Any = None

    @property
    def vendorguard(self) -> SendGuard:
        return self._self_guard

    @property
    def client(self) -> Any:
        raw = self.__wrapped__.client  # followed: set_sendgrid_data_residency replaces it
        if isinstance(raw, _HTTP):  # a drop-in wrapped again: guard its raw client once
            raw = raw.__wrapped__
        if self._self_http is None or self._self_http.__wrapped__ is not raw:
            self._self_guard.http = raw
            self._self_http = _HTTP(raw, self._self_guard)
        return self._self_http

    @client.setter
    def client(self, value: Any) -> None:
        self.__wrapped__.client = value.__wrapped__ if isinstance(value, _HTTP) else value

    def send(self, message: Any) -> Any:
        return self._self_guard.send(self.client.__wrapped__, message)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


def wrap(client: Any, **options: Any) -> Any:
    """Guard an existing ``sendgrid.SendGridAPIClient``; ``options`` are those of
    :class:`SendGuard`. ``isinstance(wrapped, sendgrid.SendGridAPIClient)`` holds."""
    wrapped = _Wrapped(client, SendGuard(**options))
    wrapped.client  # noqa: B018 - binds the outbox's deliveries to this client's HTTP client
    return wrapped


class _Faults(Translator):
    """Injected faults (:mod:`vendorguard.testing`) as the SendGrid SDK would raise them."""

    def refused(self) -> BaseException:
        return urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    def status(self, code: int, retry_after: float | None) -> BaseException:
        headers = email.message.Message()
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        body = io.BytesIO(b'{"errors": [{"message": "injected"}]}')
        error = urllib.error.HTTPError("https://api.sendgrid.com/v3/mail/send", code,
                                       "injected", headers, body)
        return python_http_client.exceptions.handle_error(error)


register_translator(classify, _Faults())
