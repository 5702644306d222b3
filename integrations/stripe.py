"""Stripe drop-in: retries that cannot charge twice, declines that never trip the breaker.

Change one import line::

    from vendorguard.integrations.stripe import StripeClient     # was: from stripe import

    client = StripeClient(os.environ["STRIPE_SECRET_KEY"])      # same arguments as the SDK
    intent = client.v1.payment_intents.create({"amount": 1000, "currency": "usd"})
    intent = await client.v1.payment_intents.create_async({...})

or guard a client you already have: ``client = vendorguard.integrations.stripe.wrap(client)``;
or the module-level style (``stripe.PaymentIntent.create(...)``) with :func:`instrument` /
:func:`uninstrument`.

Every service method is an operation of the vendor ``stripe`` named by its resource and method
(``payment_intents.create``, ``customers.retrieve``, ``checkout.sessions.list``,
``v2.core.events.retrieve``), created with :data:`POLICY` unless you registered your own
``vg.Vendor("stripe", ...)``. One layer retries: the SDK's own retries are off.

- **One Idempotency-Key per logical call.** A POST gets a key generated once, before the first
  attempt, and every retry sends the same one, so Stripe runs the request at most once. A key
  you pass (``options={"idempotency_key": "order-42-pi"}``) is kept. When a call fails, the key
  is on the raised Stripe error as ``exc.idempotency_key``, to resume later with the same key.
- **Declines and bad requests are your business, not an outage.** ``CardError``,
  ``InvalidRequestError``, ``IdempotencyError``, ``AuthenticationError`` and
  ``PermissionError`` are raised at once: never retried, never counted by the breaker.
- **Retried:** ``RateLimitError`` (no earlier than ``Retry-After``), connection failures, 409 and
  5xx ``APIError`` — a POST only when it carries a key fixed for the whole call (always, unless
  ``idempotency_keys=False``); ``Stripe-Should-Retry: false`` is obeyed.
- **No silent fallback for money.** When Stripe is unavailable the caller gets the Stripe error
  or :class:`vendorguard.CircuitOpenError`. Only reads (``retrieve``, ``list``, ``search``) may
  have a fallback, e.g. ``fallbacks={"customers.retrieve": vg.LastGood(ttl=300)}``.
- **Bounded attempts without threads:** the SDK's socket timeout follows the guard's attempt
  bound and the remaining deadline (:class:`RequestsClient`); async calls are cancelled at it.

Metrics, spans and logs carry the operation name only: no key, amount, card or customer data.
Objects returned by a guarded call (and their ``auto_paging_iter``) make unguarded requests
unless :func:`instrument` is on. Supported: stripe 10 to 16 (``StripeClient`` and ``v1``/``v2``).
"""

from __future__ import annotations

import contextvars
import inspect
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

try:
    import stripe
    from stripe._api_requestor import _APIRequestor
    from stripe._http_client import new_http_client_async_fallback
    from stripe._stripe_service import StripeService
except ImportError as exc:  # pragma: no cover - exercised only without the SDK
    raise ImportError("vendorguard.integrations.stripe needs the Stripe SDK: "
                      "pip install 'vendorguard[stripe]'") from exc

import wrapt
from prometheus_client import CollectorRegistry

from vendorguard.classify import Kind, Verdict
from vendorguard.errors import BulkheadFullError, CircuitOpenError, VendorTimeoutError
from vendorguard.fallback import MISSING
from vendorguard.pipeline import Guard, is_async_callable
from vendorguard.policy import Backoff, Breaker, Policy, Retry, Timeout
from vendorguard.registry import Vendor, get_or_create
from vendorguard.retry import parse_retry_after
from vendorguard.testing.faults import Translator, register_translator

from ._http import bounded_timeout, connect_phase

__all__ = ["POLICY", "RequestsClient", "StripeClient", "StripeGuards", "classify",
           "instrument", "uninstrument", "wrap"]

POLICY = Policy(timeout=Timeout(attempt=10.0, total=30.0),
                retry=Retry(attempts=3, backoff=Backoff(initial=0.5, maximum=5.0)),
                breaker=Breaker(failures=5, reset_after=30.0))
"""The policy of a ``stripe`` vendor created by this module."""

READS = ("retrieve", "list", "search")
"""Method name prefixes of read operations (the only ones that may have a fallback)."""

_CALLER_ERRORS = (stripe.CardError, stripe.InvalidRequestError, stripe.IdempotencyError,
                  stripe.AuthenticationError, stripe.PermissionError,
                  stripe.SignatureVerificationError)


class RequestsClient(stripe.RequestsClient):  # type: ignore[misc]
    """``stripe.RequestsClient`` whose timeout never exceeds the guard's attempt bound."""

    _timeout = bounded_timeout("_timeout")


class _Call:
    """One logical call: its idempotency key, shared by every attempt. As a context manager
    it is the current call, and a failure leaving it carries the key it was sent with."""

    __slots__ = ("key", "keyed", "keys", "method", "read", "token")

    def __init__(self, keys: bool, read: bool = False) -> None:
        self.keys = keys
        self.read = read
        self.key: str | None = None
        self.keyed = False
        self.method: str | None = None

    def __enter__(self) -> _Call:
        self.token = _current.set(self)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        _current.reset(self.token)
        if self.keyed and isinstance(exc, (stripe.StripeError, VendorTimeoutError)):
            exc.idempotency_key = self.key  # type: ignore[union-attr]


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "vendorguard_stripe_call", default=None)


def _prepare(method: str, options: Mapping[str, Any] | None) -> Any:
    """The request options of one attempt: SDK retries off, the call's idempotency key."""
    call = _current.get()
    if call is None:
        return options
    opts = dict(options or {})
    opts["max_network_retries"] = 0
    call.method = method = method.lower()
    if method == "post":
        given = opts.get("idempotency_key")
        if given:
            call.key, call.keyed = str(given), True
        elif call.keys:
            if call.key is None:
                call.key = str(uuid.uuid4())
            opts["idempotency_key"], call.keyed = call.key, True
    return opts


def _with_options(args: tuple[Any, ...], kwargs: dict[str, Any],
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``_APIRequestor.request*(method, url, params=None, options=None, ...)`` arguments
    with the options of this attempt."""
    if len(args) >= 4:
        return (*args[:3], _prepare(args[0], args[3]), *args[4:]), kwargs
    return args, {**kwargs, "options": _prepare(args[0], kwargs.get("options"))}


class _Requestor(_APIRequestor):  # type: ignore[misc]
    """The requestor of a guarded client: each attempt's options from the logical call."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_options(args, kwargs)
        return super().request(*args, **kwargs)

    async def request_async(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_options(args, kwargs)
        return await super().request_async(*args, **kwargs)

    def request_stream(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_options(args, kwargs)
        return super().request_stream(*args, **kwargs)

    async def request_stream_async(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_options(args, kwargs)
        return await super().request_stream_async(*args, **kwargs)


# -- classification ------------------------------------------------------------------------

def _timed_out(exc: BaseException | None) -> bool:
    return exc is not None and ("Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError))


def _resendable() -> bool:
    """Whether the current call may be sent again after Stripe could have acted on it."""
    call = _current.get()
    return call is None or call.method != "post" or call.keyed


def classify(exc: Exception) -> Kind | Verdict:
    """Classify a failure of the Stripe SDK (research: the measured exception map)."""
    if isinstance(exc, _CALLER_ERRORS):
        return Kind.CALLER_ERROR
    if isinstance(exc, stripe.RateLimitError):
        return Verdict(Kind.TRANSIENT, _retry_after(exc))
    if isinstance(exc, stripe.APIConnectionError):
        cause = exc.__cause__
        if not exc.should_retry:
            return Kind.FATAL  # TLS verification failed: retrying will not fix it
        if connect_phase(cause):
            return Verdict(Kind.TRANSIENT, None, _timed_out(cause))
        kind = Kind.TRANSIENT if _resendable() else Kind.AMBIGUOUS
        return Verdict(kind, None, _timed_out(cause))
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        if status == 429:
            return Verdict(Kind.TRANSIENT, _retry_after(exc))
        if 400 <= status < 500 and status != 409:
            return Kind.CALLER_ERROR
        headers = exc.headers or {}
        if str(headers.get("Stripe-Should-Retry", "")).lower() == "false":
            return Kind.FATAL
        kind = Kind.TRANSIENT if _resendable() else Kind.AMBIGUOUS
        return Verdict(kind, _retry_after(exc))
    if isinstance(exc, VendorTimeoutError):  # an async attempt cancelled at its bound
        return Verdict(Kind.TRANSIENT if _resendable() else Kind.AMBIGUOUS, None, True)
    if isinstance(exc, (CircuitOpenError, BulkheadFullError)):
        return Kind.TRANSIENT
    if isinstance(exc, (TypeError, ValueError)):
        return Kind.CALLER_ERROR
    return Kind.FATAL


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None)
    return None if not headers else parse_retry_after(headers.get("Retry-After"))


# -- guards ----------------------------------------------------------------------------------

_OP = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def _is_read(operation: str) -> bool:
    return operation.rsplit(".", 1)[-1].startswith(READS)


class StripeGuards:
    """The guards of one guarded Stripe client: one per operation, built on first use.

    Args:
        vendor: the vendorguard vendor name (get-or-create with :data:`POLICY`).
        idempotency_keys: give every POST one key for all its attempts (default). ``False``
            leaves keys to the SDK (a new one per attempt), so a POST is not resent after a
            failure Stripe could have acted on.
        fallbacks: ``{operation: fallback}`` for read operations only.
        registry: Prometheus registry for a vendor created here.
    """

    def __init__(self, *, vendor: str = "stripe", idempotency_keys: bool = True,
                 fallbacks: Mapping[str, Any] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        if not isinstance(idempotency_keys, bool):
            raise TypeError(f"idempotency_keys must be a bool, got {idempotency_keys!r}")
        self.fallbacks = dict(fallbacks or {})
        for op in self.fallbacks:
            if not isinstance(op, str) or not _OP.match(op):
                raise ValueError(f"fallbacks: {op!r} is not an operation name such as "
                                 f"'customers.retrieve'")
            if not _is_read(op):
                raise ValueError(f"fallbacks[{op!r}]: only reads (retrieve, list, search) "
                                 f"may have a fallback; a payment write fails loudly")
        self.vendor: Vendor = get_or_create(vendor, timeout=POLICY.timeout, retry=POLICY.retry,
                                            breaker=POLICY.breaker, registry=registry)
        self.idempotency_keys = idempotency_keys
        self._guards: dict[str, Guard] = {}
        self._lock = threading.Lock()

    def guard(self, operation: str) -> Guard:
        found = self._guards.get(operation)
        if found is None:
            with self._lock:
                found = self._guards.get(operation)
                if found is None:
                    found = self.vendor._guard(operation, self.fallbacks.get(operation, MISSING),
                                               None, MISSING, classify, False, "caller")
                    self._guards[operation] = found
        return found

    def bind(self, operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` (a service method) guarded as ``operation``."""
        guard, keys, read = self.guard(operation), self.idempotency_keys, _is_read(operation)
        if is_async_callable(method):
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                with _Call(keys, read):
                    return await guard.run_async(method, args, kwargs)

            return guarded_async

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with _Call(keys, read):
                return guard.run_sync(method, args, kwargs)

        return guarded


class _Service(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """A Stripe service (``client.v1``, ``client.v1.payment_intents``, ...) whose methods are
    guarded; sub-services are wrapped the same way; everything else is the SDK's own."""

    def __init__(self, service: Any, guards: StripeGuards, path: tuple[str, ...]) -> None:
        super().__init__(service)
        self._self_guards = guards
        self._self_path = path
        self._self_cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            if name.startswith("_self_"):
                raise AttributeError(name)
            return getattr(self.__wrapped__, name)
        found = self._self_cache.get(name)
        if found is not None:
            return found
        value = getattr(self.__wrapped__, name)
        if isinstance(value, StripeService):
            found = _Service(value, self._self_guards, (*self._self_path, name))
        elif inspect.ismethod(value) and isinstance(value.__self__, StripeService):
            action = name[:-len("_async")] if name.endswith("_async") else name
            found = self._self_guards.bind(".".join((*self._self_path, action)), value)
        else:
            return value
        self._self_cache[name] = found
        return found


def _guarded_services(client: Any, guards: StripeGuards,
                      requestor: Any = None) -> dict[str, _Service]:
    """``{"v1": ..., "v2": ...}`` of ``client``, guarded (on ``requestor`` when given)."""
    found = {}
    for name, path in (("v1", ()), ("v2", ("v2",))):
        service = getattr(client, name, None)
        if isinstance(service, StripeService):
            if requestor is not None:
                service = type(service)(requestor)
            found[name] = _Service(service, guards, path)
    return found


class StripeClient(stripe.StripeClient):  # type: ignore[misc]
    """``stripe.StripeClient`` whose ``v1``/``v2`` service calls are guarded (a drop-in).

    Takes the SDK's arguments, plus ``vendor``, ``idempotency_keys``, ``fallbacks`` and
    ``registry`` (see :class:`StripeGuards`). Without ``http_client`` it uses a
    :class:`RequestsClient` bounded by the guard's attempt timeout. ``max_network_retries``
    must be 0 or absent: vendorguard retries.
    """

    def __init__(self, api_key: str, *, vendor: str = "stripe", idempotency_keys: bool = True,
                 fallbacks: Mapping[str, Any] | None = None,
                 registry: CollectorRegistry | None = None, **options: Any) -> None:
        retries = options.pop("max_network_retries", None)
        if retries not in (None, 0):
            raise ValueError(f"max_network_retries must be 0: vendorguard retries (with one "
                             f"idempotency key per call), got {retries!r}")
        guards = StripeGuards(vendor=vendor, idempotency_keys=idempotency_keys,
                              fallbacks=fallbacks, registry=registry)
        if options.get("http_client") is None:
            proxy = options.pop("proxy", None)
            verify = options.pop("verify_ssl_certs", True)
            options["http_client"] = RequestsClient(
                timeout=guards.vendor.timeout.attempt or POLICY.timeout.attempt,
                proxy=proxy, verify_ssl_certs=verify,
                async_fallback_client=new_http_client_async_fallback(
                    proxy=proxy, verify_ssl_certs=verify))
        super().__init__(api_key, max_network_retries=0, **options)
        self._requestor.__class__ = _Requestor
        self.vendorguard = guards
        for name, service in _guarded_services(self, guards).items():
            setattr(self, name, service)

    def with_stripe_context(self, stripe_context: Any) -> Any:
        """A client for another Stripe context, guarded by the same guards."""
        return _Wrapped(super().with_stripe_context(stripe_context), self.vendorguard)


class _Wrapped(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """An existing client whose ``v1``/``v2`` service calls are guarded."""

    def __init__(self, client: Any, guards: StripeGuards) -> None:
        super().__init__(client)
        requestor = client._requestor
        http = requestor._client
        if type(http) is stripe.RequestsClient:  # bounded copy; the client keeps its own
            bounded = object.__new__(RequestsClient)
            bounded.__dict__.update(http.__dict__)
            http = bounded
        own = _Requestor(options=requestor._options, client=http)
        self._self_guards = guards
        for name, service in _guarded_services(client, guards, own).items():
            setattr(self, "_self_" + name, service)

    @property
    def vendorguard(self) -> StripeGuards:
        return self._self_guards

    @property
    def v1(self) -> Any:
        return self._self_v1

    @property
    def v2(self) -> Any:
        return self._self_v2


def wrap(client: Any, **options: Any) -> Any:
    """Guard an existing ``stripe.StripeClient``; ``options`` are those of
    :class:`StripeGuards`. The original client is left unguarded and unchanged."""
    if isinstance(client, StripeClient):
        return client
    return _Wrapped(client, StripeGuards(**options))


from ._stripe_global import instrument, uninstrument  # noqa: E402 - uses the names above


class _Faults(Translator):
    """Injected faults (:mod:`vendorguard.testing`) as the Stripe SDK would raise them.

    An injected attempt sends nothing, so the call's method and key are settled here as the
    requestor would have: writes are POSTs with the call's key (unless keys are off)."""

    def prepare(self) -> None:
        call = _current.get()
        if call is not None and call.method is None:
            _prepare("get" if call.read else "post", None)

    def refused(self) -> BaseException:
        self.prepare()
        error = stripe.APIConnectionError("Unexpected error communicating with Stripe "
                                          "(injected)", should_retry=True)
        error.__cause__ = ConnectionRefusedError(111, "Connection refused")
        return error

    def timed_out(self) -> BaseException:
        self.prepare()
        error = stripe.APIConnectionError("Request timed out (injected)", should_retry=True)
        error.__cause__ = TimeoutError("Read timed out")
        return error

    def status(self, code: int, retry_after: float | None) -> BaseException:
        self.prepare()
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        message = f"injected HTTP {code}"
        kinds: dict[int, Any] = {400: stripe.InvalidRequestError, 404: stripe.InvalidRequestError,
                                 401: stripe.AuthenticationError, 403: stripe.PermissionError,
                                 429: stripe.RateLimitError}
        if code == 402:
            return stripe.CardError(message, None, "card_declined", http_status=402,
                                    headers=headers)
        if kinds.get(code) is stripe.InvalidRequestError:
            return stripe.InvalidRequestError(message, None, http_status=code, headers=headers)
        return kinds.get(code, stripe.APIError)(message, http_status=code, headers=headers)


register_translator(classify, _Faults())
