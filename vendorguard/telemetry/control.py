"""The control routes: ``POST /vendors/{name}/force-open|force-close|disable|reset``.

Only with a control token (``control_token=`` or the configuration's ``control.token_file``)
and ``Authorization: Bearer <token>``; the JSON body gives a ``reason`` (required) and an
``actor``. Without a token the paths do not exist (404). The checks run so that a client
without the token learns nothing about the vendors: 405, then 401/403 (the token compared in
constant time), then 404 for an unknown vendor, then 413/422. Neither the token, the
``Authorization`` header nor a body is ever logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus

from .. import audit
from ..registry import vendor
from .web import Request, Response, Throttle, answer, plain

__all__ = ["ACTIONS", "MAX_BODY", "MIN_TOKEN", "TokenSource", "handle", "route",
           "token_source"]

TokenSource = Callable[[], "str | None"]
MAX_BODY = 4096
"""Longer control request bodies are refused (413)."""
MIN_TOKEN = 16
"""Shorter control tokens are refused."""
ACTIONS = {"force-open": "force_open", "force-close": "force_close", "disable": "disable",
           "reset": "reset"}
"""The control paths' last segment, and the :class:`~vendorguard.Vendor` method it calls."""
DEFAULT_ACTOR = "control-endpoint"

_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what fits in a Bearer header
_BEARER = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e]+) *")
_CHALLENGE = ("WWW-Authenticate", 'Bearer realm="vendorguard"')
_log = logging.getLogger("vendorguard")
_refusals = Throttle(10.0)
_bad_config = Throttle(60.0)


def route(path: str) -> tuple[str, str] | None:
    """``(vendor name, action)`` when ``path`` is ``/vendors/<name>/<action>``."""
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "" and parts[1] == "vendors" and parts[2] \
            and parts[3] in ACTIONS:
        return parts[2], parts[3]
    return None


def handle(request: Request, secret: str, name: str, action: str) -> Response:
    """Authenticate, then apply ``action`` to vendor ``name``."""
    if request.method != "POST":
        return plain(HTTPStatus.METHOD_NOT_ALLOWED, ("Allow", "POST"))
    match = _BEARER.fullmatch(request.authorization or b"")
    if match is None:
        _refused(HTTPStatus.UNAUTHORIZED)
        return plain(HTTPStatus.UNAUTHORIZED, _CHALLENGE)
    # Digests of both: equal lengths, so the comparison time says nothing about the token.
    if not hmac.compare_digest(hashlib.sha256(match.group(1)).digest(),
                               hashlib.sha256(secret.encode()).digest()):
        _refused(HTTPStatus.FORBIDDEN)
        return plain(HTTPStatus.FORBIDDEN)
    try:
        target = vendor(name)
    except KeyError:
        return answer(404, {"error": "unknown vendor"})
    body = request.body()
    if body is None:
        return answer(413, {"error": f"body must be at most {MAX_BODY} bytes"})
    parsed = _control_body(request.content_type, body)
    if isinstance(parsed, str):
        return answer(422, {"error": parsed})
    reason, actor = parsed
    entry = getattr(target, ACTIONS[action])(reason, actor=actor)
    return answer(200, {"vendor": name, "action": entry.action, "before": entry.before,
                        "after": entry.after, "time": entry.time})


def _control_body(content_type: str, body: bytes) -> tuple[str, str] | str:
    """``(reason, actor)`` from a control request's body, or what is wrong with it."""
    if content_type.partition(";")[0].strip().lower() != "application/json":
        return "content type must be application/json"
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON or text; nesting too deep
        return "body must be a JSON object"
    if not isinstance(data, dict):
        return "body must be a JSON object"
    reason, actor = data.get("reason"), data.get("actor")
    if not isinstance(reason, str) or audit.clean(reason, "reason") is None:
        return "reason must be a non-empty string"
    if actor is not None and not isinstance(actor, str):
        return "actor must be a string"
    return reason, actor if actor and audit.clean(actor, "actor") else DEFAULT_ACTOR


def _refused(status: HTTPStatus) -> None:
    skipped = _refusals()
    if skipped is not None:
        _log.warning("vendorguard: control endpoint refused a request (%d)%s", status.value,
                     f"; {skipped} more refused before" if skipped else "")


def token_source(control_token: str | None) -> TokenSource:
    """Where the apps find the control token: the one given, else the configuration's."""
    if control_token is None:
        return _configured_token
    if control_token and not _usable(control_token):
        raise ValueError(f"control_token must be at least {MIN_TOKEN} characters of visible "
                         "ASCII (no spaces)")
    return lambda: control_token or None


def _configured_token() -> str | None:
    """The configuration's control token, read at each request; None when unusable."""
    token = importlib.import_module("vendorguard.config").control_token()
    if not token:
        return None
    if not isinstance(token, str) or not _usable(token):
        if _bad_config() is not None:
            _log.error("vendorguard: the configured control token is refused (it needs at "
                       "least %d characters of visible ASCII); control is off", MIN_TOKEN)
        return None
    return token


def _usable(token: str) -> bool:
    return len(token) >= MIN_TOKEN and _TOKEN.fullmatch(token) is not None
