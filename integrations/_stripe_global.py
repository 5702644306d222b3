"""Guards for the module-level Stripe style (``stripe.PaymentIntent.create(...)``).

:func:`instrument` wraps, reversibly, the few SDK functions every module-level call passes
through: ``APIResource._static_request`` (class methods such as ``create``, ``list``,
``modify``), ``StripeObject._request`` (instance methods such as ``intent.confirm()`` and
``retrieve``), their async twins, and ``_APIRequestor.request*`` (where each attempt gets the
call's idempotency key and SDK retries are switched off). Operations are named from the SDK's
own URL templates: ``payment_intents.create``, ``payment_intents.retrieve``,
``payment_intents.update`` (``modify``), ``payment_intents.confirm``, ``customers.delete``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import stripe
import wrapt
from stripe._api_requestor import _APIRequestor
from stripe._api_resource import APIResource
from stripe._stripe_object import StripeObject

from .stripe import POLICY, RequestsClient, StripeGuards, _with_options

__all__ = ["instrument", "uninstrument"]

_SEGMENT = re.compile(r"^[a-z_]{1,40}$")
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _resource(cls: Any) -> tuple[str, str] | None:
    """``(class url, resource name)``: ``("/v1/payment_intents", "payment_intents")``."""
    try:
        base = cls.class_url()
    except Exception:  # not every StripeObject is an API resource
        return None
    parts = [p for p in str(base).split("/") if p]
    if len(parts) < 2 or parts[0] != "v1" or not all(_SEGMENT.match(p) for p in parts[1:]):
        return None
    return str(base), ".".join(parts[1:])


_ONE = {"get": "retrieve", "post": "update", "delete": "delete"}
_MANY = {"get": "list", "post": "create"}


def operation(cls: Any, method: str, url: str) -> str:
    """The operation name of a module-level request (from code: the SDK's URL templates)."""
    found = _resource(cls)
    if found is None:
        return "other"
    base, name = found
    method = method.lower()
    path = str(url).split("?", 1)[0]
    if path == base:
        action = _MANY.get(method)
        return f"{name}.{action}" if action else "other"
    if not path.startswith(base + "/"):
        return "other"
    rest = path[len(base) + 1:].split("/")
    if rest == ["search"] and method == "get":
        return f"{name}.search"
    if len(rest) == 1:
        action = _ONE.get(method)
    elif len(rest) == 2 and _SEGMENT.match(rest[1]):
        sub = rest[1]
        action = {"post": sub, "get": f"{sub}.list", "delete": f"{sub}.delete"}.get(method)
    elif len(rest) == 3 and _SEGMENT.match(rest[1]):
        action = f"{rest[1]}.{_ONE[method]}" if method in _ONE else None
    else:
        action = None
    return f"{name}.{action}" if action else "other"


def _guarded(guards: StripeGuards, of_class: bool) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        cls = instance if of_class else type(instance)
        method = args[0] if args else kwargs.get("method_", kwargs.get("method", ""))
        url = args[1] if len(args) > 1 else kwargs.get("url_", kwargs.get("url", ""))
        return guards.bind(operation(cls, method, url), wrapped)(*args, **kwargs)

    return wrapper


def _prepared(wrapped: Any, instance: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
    args, kwargs = _with_options(args, kwargs)
    return wrapped(*args, **kwargs)


_TARGETS: tuple[tuple[Any, str, str], ...] = (
    (APIResource, "_static_request", "class"),
    (APIResource, "_static_request_async", "class"),
    (StripeObject, "_request", "instance"),
    (StripeObject, "_request_async", "instance"),
    (_APIRequestor, "request", "options"),
    (_APIRequestor, "request_async", "options"),
    (_APIRequestor, "request_stream", "options"),
    (_APIRequestor, "request_stream_async", "options"),
)


def instrument(**options: Any) -> StripeGuards:
    """Guard module-level Stripe calls (``stripe.Customer.create``, ``intent.confirm()``).

    ``options`` are those of :class:`~vendorguard.integrations.stripe.StripeGuards`. Also sets
    ``stripe.default_http_client`` to a bounded :class:`RequestsClient` when none is set.
    Calling it again while instrumented returns the guards in place. Undo with
    :func:`uninstrument`.
    """
    with _lock:
        if "guards" in _state:
            return _state["guards"]  # type: ignore[no-any-return]
        guards = StripeGuards(**options)
        originals = []
        for owner, name, kind in _TARGETS:
            original = owner.__dict__[name]
            wrapper = _prepared if kind == "options" else _guarded(guards, kind == "class")
            patched = wrapt.FunctionWrapper(original, wrapper)
            setattr(owner, name, patched)
            originals.append((owner, name, original))
        _state["originals"] = originals
        _state["guards"] = guards
        if stripe.default_http_client is None:
            stripe.default_http_client = RequestsClient(
                timeout=guards.vendor.timeout.attempt or POLICY.timeout.attempt)
            _state["http_client"] = stripe.default_http_client
        return guards


def uninstrument() -> None:
    """Undo :func:`instrument`: the SDK's own functions are back (identity preserved)."""
    with _lock:
        for owner, name, original in reversed(_state.pop("originals", [])):
            setattr(owner, name, original)
        _state.pop("guards", None)
        client = _state.pop("http_client", None)
        if client is not None and stripe.default_http_client is client:
            stripe.default_http_client = None
