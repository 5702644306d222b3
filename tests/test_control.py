"""The control endpoint: POST /vendors/{name}/{action}, behind a bearer token."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import vendorguard as vg
from vendorguard import audit
from vendorguard.telemetry import control as control_routes
from vendorguard.telemetry.server import make_asgi_app, make_wsgi_app, start_http_server
from vendorguard.telemetry.web import Throttle

TOKEN = "vg-control-0123456789abcdefXYZ"
SAME_LENGTH = TOKEN[:-1] + "Q"
ACTIONS = ("force-open", "force-close", "disable", "reset")
REASON = "vendor incident #123"
Reply = tuple[int, dict[str, str], bytes]
config = importlib.import_module("vendorguard.config")


@pytest.fixture(autouse=True)
def _local(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib straight to loopback, and every refused request logged (no throttling)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(control_routes, "_refusals", Throttle(0.0))


def serve(metrics: CollectorRegistry, token: str | None) -> Iterator[str]:
    srv, thread = start_http_server(0, registry=metrics, control_token=token)
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


@pytest.fixture
def served(metrics: CollectorRegistry) -> Iterator[str]:
    """The endpoints with control on (token TOKEN); yields the base URL."""
    yield from serve(metrics, TOKEN)


@pytest.fixture
def sendgrid(metrics: CollectorRegistry) -> vg.Vendor:
    return vg.Vendor("sendgrid", registry=metrics, retry=None)


def request(url: str, body: Any = None, *, token: str | None = TOKEN, method: str = "POST",
            content_type: str = "application/json", authorization: str | None = None,
            ) -> Reply:
    """One HTTP request; ``body`` is JSON-encoded unless bytes. Errors are returned."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type}
    if authorization is not None or token is not None:
        headers["Authorization"] = authorization if authorization is not None \
            else f"Bearer {token}"
    req = urllib.request.Request(url, data=data if method == "POST" else None,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def control(base: str, action: str, vendor: str = "sendgrid", body: Any = None,
            **kwargs: Any) -> Reply:
    return request(f"{base}/vendors/{vendor}/{action}",
                   {"reason": REASON} if body is None else body, **kwargs)


def scraped(base: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` with ``labels``, from /metrics over HTTP."""
    status, _, body = request(base + "/metrics", method="GET", token=None)
    assert status == 200
    return sum(s.value for family in text_string_to_metric_families(body.decode())
               for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def secure(headers: dict[str, str]) -> None:
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


def controls() -> list[audit.Entry]:
    return [e for e in audit.entries() if e.kind == "control"]


# -- never reachable without a token ----------------------------------------------------------


@pytest.mark.parametrize("configured", [None, ""], ids=["none", "empty"])
@pytest.mark.parametrize("given", [None, ""], ids=["default", "off"])
def test_without_a_token_control_paths_are_unknown(
        metrics: CollectorRegistry, sendgrid: vg.Vendor, monkeypatch: pytest.MonkeyPatch,
        configured: str | None, given: str | None) -> None:
    """No token: every control route answers exactly like an unknown path, whatever is sent."""
    monkeypatch.setattr(config, "control_token", lambda: configured)
    for base in serve(metrics, given):
        unknown = request(base + "/vendors/sendgrid/nope")
        for action in ACTIONS:
            for method in ("POST", "GET", "DELETE"):
                status, headers, body = control(base, action, method=method)
                headers.pop("date", None)
                unknown[1].pop("date", None)
                assert (status, headers, body) == unknown
                assert status == 404
                assert "www-authenticate" not in headers
                assert "allow" not in headers
    assert sendgrid.state == "closed"
    assert controls() == []


def test_configured_token_is_read_per_request(
        metrics: CollectorRegistry, sendgrid: vg.Vendor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without control_token=, the configuration's token is read at each request."""
    monkeypatch.setattr(config, "control_token", lambda: None)
    for base in serve(metrics, None):
        assert control(base, "force-open")[0] == 404
        monkeypatch.setattr(config, "control_token", lambda: TOKEN)
        assert control(base, "force-open", token=SAME_LENGTH)[0] == 403
        assert control(base, "force-open")[0] == 200
        monkeypatch.setattr(config, "control_token", lambda: None)
        assert control(base, "force-close")[0] == 404
    assert sendgrid.state == "forced_open"


def test_token_from_the_configuration_file(metrics: CollectorRegistry, sendgrid: vg.Vendor,
                                          tmp_path: Path) -> None:
    """A token configured with control.token_file opens the endpoint of a running server."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for base in serve(metrics, None):
        assert control(base, "force-open")[0] == 404
        vg.configure({"control": {"token_file": str(token_file)}}, env=False)
        assert control(base, "force-open", token=SAME_LENGTH)[0] == 403
        assert control(base, "force-open")[0] == 200
    assert sendgrid.state == "forced_open"


def test_short_configured_token_turns_control_off(
        metrics: CollectorRegistry, sendgrid: vg.Vendor, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A configured token under 16 characters is refused: 404, and an error logged."""
    monkeypatch.setattr(config, "control_token", lambda: "short-token")
    monkeypatch.setattr(control_routes, "_bad_config", Throttle(0.0))
    with caplog.at_level(logging.ERROR, logger="vendorguard"):
        for base in serve(metrics, None):
            assert control(base, "force-open", token="short-token")[0] == 404
    assert sendgrid.state == "closed"
    assert "control token is refused" in caplog.text
    assert "short-token" not in caplog.text


@pytest.mark.parametrize("token", ["", "x" * 15, "0123456789abcdef ghij", "ünïcode-token-0123"],
                         ids=["empty-ok", "short", "space", "non-ascii"])
@pytest.mark.parametrize("build", [make_wsgi_app, make_asgi_app,
                                   lambda r, **kw: start_http_server(0, registry=r, **kw)],
                         ids=["wsgi", "asgi", "server"])
def test_bad_tokens_are_refused_at_build_time(
        metrics: CollectorRegistry, build: Callable[..., Any], token: str) -> None:
    """A control_token shorter than 16 characters, or unsendable, is a ValueError."""
    if not token:  # "" is allowed: it turns control off
        built = build(metrics, control_token=token)
        if isinstance(built, tuple):
            built[0].shutdown()
            built[0].server_close()
        return
    with pytest.raises(ValueError, match="control_token") as raised:
        build(metrics, control_token=token)
    assert token not in str(raised.value)


# -- authentication, before anything about vendors --------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_other_methods_get_405_allow_post(served: str, sendgrid: vg.Vendor, method: str
                                          ) -> None:
    """A control route answers only POST, and says so, before any authentication."""
    status, headers, body = control(served, "force-open", method=method, token=None)
    assert (status, headers["allow"]) == (405, "POST")
    assert body == (b"" if method == "HEAD" else b"Method Not Allowed\n")
    secure(headers)
    assert sendgrid.state == "closed"


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", f"Token {TOKEN}", TOKEN,
    f"Bearer {TOKEN[:8]} {TOKEN[8:]}",
], ids=["missing", "empty", "bare", "no-token", "basic", "other-scheme", "no-scheme", "space"])
def test_missing_or_malformed_authorization_is_401(
        served: str, sendgrid: vg.Vendor, caplog: pytest.LogCaptureFixture,
        authorization: str | None) -> None:
    """No usable bearer token: 401 with a Bearer challenge, a WARNING, nothing applied."""
    with caplog.at_level(logging.DEBUG):
        status, headers, body = control(served, "force-open", token=None,
                                        authorization=authorization)
    assert (status, body) == (401, b"Unauthorized\n")
    assert headers["www-authenticate"] == 'Bearer realm="vendorguard"'
    secure(headers)
    assert sendgrid.state == "closed"
    assert controls() == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "vendorguard: control endpoint refused a request (401)"]


@pytest.mark.parametrize("wrong", [SAME_LENGTH, "x", TOKEN + "x", TOKEN.lower(), TOKEN * 40],
                         ids=["same-length", "short", "longer", "case", "huge"])
def test_wrong_token_is_403_and_changes_nothing(
        served: str, sendgrid: vg.Vendor, metrics: CollectorRegistry, wrong: str) -> None:
    """A wrong token, of any length: 403, no audit entry, the vendor untouched."""
    for action in ACTIONS:
        status, headers, body = control(served, action, token=wrong)
        assert (status, body) == (403, b"Forbidden\n")
        assert "www-authenticate" not in headers
        secure(headers)
    assert sendgrid.state == "closed"
    assert controls() == []


def test_bearer_scheme_is_case_insensitive(served: str, sendgrid: vg.Vendor) -> None:
    """``bearer`` is the same scheme as ``Bearer`` (RFC 7235)."""
    assert control(served, "force-open", authorization=f"bearer {TOKEN}")[0] == 200
    assert sendgrid.state == "forced_open"


def test_unknown_vendor_needs_the_token_to_be_told(served: str) -> None:
    """Without the token an unknown vendor is 401, as a known one; with it, 404."""
    assert control(served, "force-open", vendor="nosuch", token=None)[0] == 401
    assert control(served, "force-open", vendor="nosuch", token=SAME_LENGTH)[0] == 403
    status, headers, body = control(served, "force-open", vendor="nosuch")
    assert (status, json.loads(body)) == (404, {"error": "unknown vendor"})
    secure(headers)


def test_unknown_action_is_404(served: str, sendgrid: vg.Vendor) -> None:
    """Only the four actions are routes; anything else is an unknown path."""
    for action in ("force_open", "open", "Force-Open", "force-open/", ""):
        assert control(served, action)[0] == 404
    assert sendgrid.state == "closed"


# -- the body ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "status", "error"), [
    (b"{not json", "application/json", 422, "body must be a JSON object"),
    (b"\xff\xfe\x00garbage", "application/json", 422, "body must be a JSON object"),
    (["reason"], "application/json", 422, "body must be a JSON object"),
    ("just a string", "application/json", 422, "body must be a JSON object"),
    (b"[" * 4000, "application/json", 422, "body must be a JSON object"),
    ({}, "application/json", 422, "reason must be a non-empty string"),
    ({"reason": ""}, "application/json", 422, "reason must be a non-empty string"),
    ({"reason": " \t\n"}, "application/json", 422, "reason must be a non-empty string"),
    ({"reason": 42}, "application/json", 422, "reason must be a non-empty string"),
    ({"reason": ["x"]}, "application/json", 422, "reason must be a non-empty string"),
    ({"reason": "ok", "actor": 7}, "application/json", 422, "actor must be a string"),
    ({"reason": "ok"}, "text/plain", 422, "content type must be application/json"),
    ({"reason": "ok"}, "application/x-www-form-urlencoded", 422,
     "content type must be application/json"),
    ({"reason": "x" * 5000}, "application/json", 413, "body must be at most 4096 bytes"),
], ids=["not-json", "not-utf8", "list", "string", "deep", "no-reason", "empty-reason",
        "blank-reason", "number-reason", "list-reason", "number-actor", "text-plain", "form",
        "too-large"])
def test_bad_bodies_are_refused(served: str, sendgrid: vg.Vendor, body: Any,
                                content_type: str, status: int, error: str) -> None:
    """A body that is not a JSON object with a reason is refused, naming the field, and
    nothing changes; the body is never echoed."""
    got, headers, reply = control(served, "force-open", body=body, content_type=content_type)
    assert (got, json.loads(reply)) == (status, {"error": error})
    assert headers["content-type"] == "application/json; charset=utf-8"
    secure(headers)
    assert b"xxxx" not in reply
    assert b"garbage" not in reply
    assert sendgrid.state == "closed"
    assert controls() == []


def test_body_limit_is_inclusive(served: str, sendgrid: vg.Vendor) -> None:
    """A body of exactly 4096 bytes is read; one byte more is 413."""
    def body(size: int) -> bytes:
        shell = json.dumps({"reason": "r", "pad": ""}).encode()
        return json.dumps({"reason": "r", "pad": "p" * (size - len(shell))}).encode()

    assert len(body(4097)) == 4097
    assert control(served, "disable", body=body(4097))[0] == 413
    assert sendgrid.state == "closed"
    assert control(served, "disable", body=body(4096))[0] == 200
    assert sendgrid.state == "disabled"


# -- the actions ------------------------------------------------------------------------------


def test_force_open_rejects_calls_and_is_audited(
        served: str, sendgrid: vg.Vendor, metrics: CollectorRegistry) -> None:
    """force-open: 200 with the change, later calls get the fallback and count as rejected."""
    send = sendgrid.guard("mail.send", fallback="queued")(lambda: "sent")
    assert send() == "sent"
    rejected = {"vendor": "sendgrid", "operation": "mail.send", "outcome": "rejected"}
    assert scraped(served, "vendorguard_calls_total", **rejected) == 0
    status, headers, body = control(served, "force-open",
                                    body={"reason": REASON, "actor": "alice"})
    reply = json.loads(body)
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    secure(headers)
    (entry,) = controls()
    assert reply == {"vendor": "sendgrid", "action": "force_open", "before": "closed",
                     "after": "forced_open", "time": entry.time}
    assert (entry.vendor, entry.action, entry.actor, entry.reason, entry.before,
            entry.after) == ("sendgrid", "force_open", "alice", REASON, "closed",
                             "forced_open")
    assert send() == "queued"
    assert scraped(served, "vendorguard_calls_total", **rejected) == 1
    assert scraped(served, "vendorguard_circuit_state", vendor="sendgrid",
                   state="forced_open") == 1
    assert scraped(served, "vendorguard_circuit_state", vendor="sendgrid", state="closed") == 0


@pytest.mark.parametrize("action", ["force-close", "reset"])
def test_force_close_and_reset_close_the_circuit(served: str, sendgrid: vg.Vendor,
                                                 action: str) -> None:
    """force-close and reset end a force-open: calls reach the vendor again."""
    send = sendgrid.guard("mail.send", fallback="queued")(lambda: "sent")
    assert control(served, "force-open")[0] == 200
    assert send() == "queued"
    status, _, body = control(served, action)
    assert status == 200
    assert json.loads(body)["action"] == action.replace("-", "_")
    assert (json.loads(body)["before"], json.loads(body)["after"]) == ("forced_open", "closed")
    assert sendgrid.state == "closed"
    assert send() == "sent"


def test_disable_stops_the_breaker_from_tripping(served: str, metrics: CollectorRegistry,
                                                 ) -> None:
    """disable: failures are observed but never open the circuit; reset arms it again."""
    flaky = vg.Vendor("flaky", registry=metrics, retry=None, breaker=vg.Breaker(failures=1))
    reached: list[int] = []

    def fail() -> str:
        reached.append(1)
        raise ConnectionError("vendor down")

    call = flaky.guard("op", fallback="fallback")(fail)
    reply = json.loads(control(served, "disable", vendor="flaky")[2])
    assert (reply["action"], reply["after"]) == ("disable", "disabled")
    assert [call() for _ in range(3)] == ["fallback"] * 3
    assert len(reached) == 3
    assert flaky.state == "disabled"
    assert control(served, "reset", vendor="flaky")[0] == 200
    assert call() == "fallback"
    assert flaky.state == "open"  # armed again: one failure trips it
    assert call() == "fallback"
    assert len(reached) == 4


def test_actor_defaults_and_the_report_shows_it(served: str, sendgrid: vg.Vendor) -> None:
    """Without an actor the entry says control-endpoint; /vendors lists the control entries."""
    assert control(served, "force-open", body={"reason": "first"})[0] == 200
    assert control(served, "reset", body={"reason": "second", "actor": "bob"})[0] == 200
    assert control(served, "disable", body={"reason": "third", "actor": "  "})[0] == 200
    status, _, body = request(served + "/vendors", method="GET", token=None)
    shown = json.loads(body)["vendors"]["sendgrid"]["control"]
    assert status == 200
    assert [(c["action"], c["actor"], c["reason"]) for c in shown] == [
        ("force_open", "control-endpoint", "first"), ("reset", "bob", "second"),
        ("disable", "control-endpoint", "third")]


def test_the_token_is_never_logged_or_shown(served: str, sendgrid: vg.Vendor,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Neither the token, the header nor a body reaches a log record or /vendors."""
    with caplog.at_level(logging.DEBUG):
        control(served, "force-open", token=SAME_LENGTH)
        control(served, "force-open", token=None, authorization=f"Basic {TOKEN}")
        control(served, "force-open", body={"reason": 5, "secret": "body-secret"})
        control(served, "force-open", vendor="nosuch")
        control(served, "force-open", body={"reason": REASON, "actor": "alice"})
        report = request(served + "/vendors", method="GET", token=None)[2].decode()
    logged = "\n".join([caplog.text, *(repr(r.args) for r in caplog.records)])
    for secret in (TOKEN, SAME_LENGTH, "Bearer", "body-secret"):
        assert secret not in logged
        assert secret not in report
    assert REASON in report  # what the operator typed is shown; the token is not
    assert sendgrid.state == "forced_open"


def test_internal_failure_is_a_bare_500(served: str, sendgrid: vg.Vendor,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """A control action that raises gives a plain 500; the log has the type, not the text."""
    def boom(self: vg.Vendor, reason: str | None = None, *, actor: str | None = None) -> None:
        raise RuntimeError(f"storage said {TOKEN}")

    monkeypatch.setattr(vg.Vendor, "force_open", boom)
    with caplog.at_level(logging.ERROR, logger="vendorguard"):
        status, headers, body = control(served, "force-open")
    assert (status, body) == (500, b"Internal Server Error\n")
    secure(headers)
    assert "RuntimeError" in caplog.text
    assert "/vendors/{name}/force-open" in caplog.text
    assert TOKEN not in caplog.text


# -- the apps in process ----------------------------------------------------------------------


def asgi_post(app: Any, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]],
              ) -> tuple[int, dict[str, str], bytes]:
    """Drive the ASGI app with one POST whose body arrives in ``chunks``."""
    inbox = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
             for i, chunk in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(b["body"] for b in bodies))


def test_asgi_refuses_without_authorization(metrics: CollectorRegistry,
                                            sendgrid: vg.Vendor) -> None:
    """ASGI: no Authorization header is 401 with the challenge."""
    app = make_asgi_app(metrics, control_token=TOKEN)
    status, headers, _ = asgi_post(app, "/vendors/sendgrid/force-open",
                                   [json.dumps({"reason": REASON}).encode()],
                                   [(b"content-type", b"application/json")])
    assert (status, headers["www-authenticate"]) == (401, 'Bearer realm="vendorguard"')
    assert sendgrid.state == "closed"


def test_asgi_applies_an_authorised_action(metrics: CollectorRegistry,
                                           sendgrid: vg.Vendor) -> None:
    """ASGI: a body split over several messages is gathered, and the action applied."""
    app = make_asgi_app(metrics, control_token=TOKEN)
    body = json.dumps({"reason": REASON, "actor": "carol"}).encode()
    status, headers, reply = asgi_post(
        app, "/vendors/sendgrid/force-open", [body[:5], b"", body[5:]],
        [(b"Content-Type", b"application/json"), (b"Authorization", f"Bearer {TOKEN}".encode())])
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert json.loads(reply)["after"] == "forced_open"
    assert [(e.action, e.actor) for e in controls()] == [("force_open", "carol")]


def test_asgi_bounds_the_body(metrics: CollectorRegistry, sendgrid: vg.Vendor) -> None:
    """ASGI: a body growing past 4096 bytes over several messages is 413."""
    app = make_asgi_app(metrics, control_token=TOKEN)
    status, _, _ = asgi_post(
        app, "/vendors/sendgrid/disable", [b'{"reason": "r", "pad": "', b"p" * 4096, b'"}'],
        [(b"content-type", b"application/json"), (b"authorization", f"Bearer {TOKEN}".encode())])
    assert status == 413
    assert sendgrid.state == "closed"


def test_wsgi_reads_no_more_than_content_length(metrics: CollectorRegistry,
                                                sendgrid: vg.Vendor) -> None:
    """WSGI: the body is read up to CONTENT_LENGTH only, and not at all when too long."""
    class Stream:
        def __init__(self, data: bytes) -> None:
            self.data, self.asked = data, 0

        def read(self, size: int) -> bytes:
            self.asked += size
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk

    app = make_wsgi_app(metrics, control_token=TOKEN)
    body = json.dumps({"reason": REASON}).encode()
    for length, expected, asked in ((len(body), "200 OK", len(body)),
                                    (1 << 20, "413 Request Entity Too Large", 0)):
        stream = Stream(body + b"trailing bytes that belong to no one")
        started: list[str] = []
        app({"REQUEST_METHOD": "POST", "PATH_INFO": "/vendors/sendgrid/force-open",
             "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(length),
             "HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "wsgi.input": stream},
            lambda status, headers, seen=started: seen.append(status))
        assert started == [expected]
        assert stream.asked == asked
    assert sendgrid.state == "forced_open"


@pytest.mark.parametrize(("length", "drained"), [(100, 100), (64 * 1024 + 1, 0)],
                         ids=["small", "over-the-drain-limit"])
def test_wsgi_drains_an_unread_body_within_bounds(metrics: CollectorRegistry, length: int,
                                                  drained: int) -> None:
    """WSGI: a refused request's unread body is read and dropped, up to 64 KiB, so that the
    server can close the connection without resetting it under the answer."""
    class Stream:
        asked = 0

        def read(self, size: int) -> bytes:
            self.asked += size
            return b"x" * size

    stream = Stream()
    started: list[str] = []
    make_wsgi_app(metrics, control_token=TOKEN)(
        {"REQUEST_METHOD": "POST", "PATH_INFO": "/vendors/sendgrid/force-open",
         "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(length),
         "wsgi.input": stream}, lambda status, headers: started.append(status))
    assert started == ["401 Unauthorized"]
    assert stream.asked == drained
