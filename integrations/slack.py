"""Slack drop-in: bounded, classified Web API calls that never post a message twice.

Slack's ``WebClient`` speaks urllib and takes no custom HTTP client, so the guard sits where
the SDK sends each request. Change one import line::

    from vendorguard.integrations.slack import WebClient      # was: from slack_sdk import

    slack = WebClient(token=os.environ["SLACK_BOT_TOKEN"])    # same arguments as the SDK
    slack.chat_postMessage(channel="C123", text="deploy finished")

or ``slack = vendorguard.integrations.slack.wrap(existing_client)``.

Each API method is an operation of the vendor ``slack`` (``chat.postMessage``,
``conversations.list``; at most 64 names, later ones count as ``other``), created with
:data:`vendorguard.integrations._http.POLICY` unless registered first.

- 429 ``ratelimited``, 503 and 408: transient, retried no earlier than ``Retry-After`` (the
  shared HTTP rules: the vendor said it did not act).
- A failed connect (nothing was sent): transient, retried.
- Other 5xx, read timeouts and dropped connections: ambiguous — Slack may have posted the message —
  so not retried (the SDK's default retry handler resends these; the drop-in turns SDK retry
  handlers off unless you pass your own).
- ``ok: false`` answers: caller errors (``channel_not_found``, ``not_in_channel``...), not
  counted by the breaker; ``invalid_auth``, ``token_revoked`` and ``account_inactive`` are
  failures that count (every call will fail until someone fixes the token).

The SDK raises its own ``SlackApiError`` exactly as without the guard, or the guard raises
:class:`vendorguard.CircuitOpenError` when the breaker is open. The socket timeout of each
attempt follows the guard's attempt bound and the remaining deadline: no thread.
``AsyncWebClient`` (aiohttp) is not covered.
"""

from __future__ import annotations

import copy
import http.client
import json
import urllib.error
from typing import Any
from urllib.parse import urlsplit

try:
    import slack_sdk
except ImportError as exc:  # pragma: no cover - exercised only without the SDK
    raise ImportError("vendorguard.integrations.slack needs slack_sdk: "
                      "pip install 'vendorguard[slack]'") from exc

from prometheus_client import CollectorRegistry

from vendorguard.classify import Kind, Verdict
from vendorguard.errors import BulkheadFullError, CircuitOpenError
from vendorguard.policy import Policy
from vendorguard.testing.faults import Translator, register_translator

from ._http import POLICY, HostGuards, StatusFailure, bounded_timeout, classify_status, run

__all__ = ["WebClient", "classify", "wrap"]

_FAILURES = frozenset({"invalid_auth", "token_revoked", "account_inactive", "not_authed"})
_TIMEOUTS = (TimeoutError,)


def classify(exc: Exception) -> Kind | Verdict:
    """Classify a failed attempt of a Slack Web API request (research: exception map)."""
    if isinstance(exc, StatusFailure):
        return exc.verdict
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return Verdict(Kind.TRANSIENT, None, isinstance(exc.reason, TimeoutError))
    if isinstance(exc, (CircuitOpenError, BulkheadFullError)):
        return Kind.TRANSIENT
    if isinstance(exc, ConnectionRefusedError):
        return Kind.TRANSIENT
    if isinstance(exc, (TimeoutError, ConnectionError, http.client.HTTPException, OSError)):
        return Kind.AMBIGUOUS
    if isinstance(exc, (TypeError, ValueError)):
        return Kind.CALLER_ERROR
    return Kind.FATAL


def _answer_verdict(response: dict[str, Any]) -> Verdict | None:
    status = int(response.get("status") or 0)
    verdict = classify_status(status, response.get("headers"))
    if verdict is not None or status != 200:
        return verdict
    body = response.get("body")
    if not isinstance(body, str) or '"ok":false' not in body.replace(" ", ""):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("ok") is not False:
        return None  # a success (a nested "ok": false is the message's business)
    error = data.get("error")
    if error == "ratelimited":
        return Verdict(Kind.TRANSIENT)
    return Verdict(Kind.FATAL if error in _FAILURES else Kind.CALLER_ERROR)


def _api_method(method: str, host: str, path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name if name else "other"


class _Guarded:
    """The guarded request path of a WebClient (mixed into the drop-in)."""

    timeout = bounded_timeout("timeout")
    _vg_hosts: HostGuards

    def _vg_setup(self, vendor: str, registry: CollectorRegistry | None,
                  policy: Policy) -> None:
        self._vg_hosts = HostGuards({}, vendor, classify, operation=_api_method,
                                    registry=registry, policy=policy)

    @property
    def vendorguard(self) -> HostGuards:
        return self._vg_hosts

    def _perform_urllib_http_request(self, *, url: str, args: dict[str, Any]) -> Any:
        parts = urlsplit(url)
        send = super()._perform_urllib_http_request  # type: ignore[misc]
        guard = self._vg_hosts.for_request("POST", parts.hostname, parts.path, {})
        if guard is None:  # pragma: no cover - the drop-in always has a vendor
            return send(url=url, args=args)

        def attempt() -> Any:
            response = send(url=url, args=args)
            verdict = _answer_verdict(response)
            if verdict is None:
                return response
            raise StatusFailure(int(response.get("status") or 0), verdict, response)

        return run(guard, attempt)


class WebClient(_Guarded, slack_sdk.WebClient):  # type: ignore[misc]
    """``slack_sdk.WebClient`` whose API calls are guarded (a drop-in).

    Takes the SDK's arguments, plus ``vendor``, ``registry`` and ``policy`` (for a vendor
    created here). ``retry_handlers`` defaults to none: vendorguard retries.
    """

    def __init__(self, *args: Any, vendor: str = "slack",
                 registry: CollectorRegistry | None = None, policy: Policy = POLICY,
                 **kwargs: Any) -> None:
        if kwargs.get("retry_handlers") is None:  # the SDK's default would resend posts
            kwargs["retry_handlers"] = []
        self._vg_setup(vendor, registry, policy)
        super().__init__(*args, **kwargs)


def wrap(client: Any, *, vendor: str = "slack", registry: CollectorRegistry | None = None,
         policy: Policy = POLICY) -> Any:
    """A guarded copy of an existing ``slack_sdk.WebClient`` (same token, URL and settings;
    its retry handlers are dropped, so that one layer retries). The original is unchanged."""
    if isinstance(client, _Guarded):
        return client
    guarded = copy.copy(client)
    guarded.retry_handlers = []
    guarded.__class__ = type("WebClient", (_Guarded, type(client)), {})
    guarded._vg_setup(vendor, registry, policy)
    return guarded


class _Faults(Translator):
    """Injected faults (:mod:`vendorguard.testing`) as slack_sdk and Slack would show them."""

    def refused(self) -> BaseException:
        return urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    def status(self, code: int, retry_after: float | None) -> BaseException:
        error = "ratelimited" if code == 429 else "injected"
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        answer = {"status": code, "headers": headers,
                  "body": json.dumps({"ok": False, "error": error})}
        return StatusFailure(code, _answer_verdict(answer) or Verdict(Kind.FATAL), answer)


register_translator(classify, _Faults())
