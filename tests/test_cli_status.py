"""``vendorguard control`` and ``vendorguard status`` against a live endpoint."""

from __future__ import annotations

import getpass
import importlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.test_control import serve
from vendorguard import audit
from vendorguard.cli import main

TOKEN = "vg-cli-token-0123456789abcdefXYZ"
health_module = importlib.import_module("vendorguard.telemetry.health")


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def served(metrics: CollectorRegistry) -> Iterator[str]:
    """The endpoints with control on; yields the base URL."""
    yield from serve(metrics, TOKEN)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    return path


@pytest.fixture
def vendors(metrics: CollectorRegistry) -> tuple[vg.Vendor, vg.Vendor]:
    """sendgrid (one call made) and stripe."""
    sendgrid = vg.Vendor("sendgrid", registry=metrics)
    sendgrid.call("mail.send", lambda: "sent")
    return sendgrid, vg.Vendor("stripe", registry=metrics)


def output(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return out, err


def controls() -> list[audit.Entry]:
    return [e for e in audit.entries() if e.kind == "control"]


def refused_port() -> int:
    """A loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- vendorguard control ----------------------------------------------------------------------


def test_control_applies_the_action(served: str, token_file: Path,
                                    vendors: tuple[vg.Vendor, vg.Vendor],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """control force-open prints the change; the vendor is forced open, audited as the actor."""
    status = main(["control", "--url", served, "--token-file", str(token_file), "force-open",
                   "sendgrid", "--reason", "incident #7", "--actor", "alice"])
    out, _ = output(capsys)
    assert status == 0
    assert out == "sendgrid: force_open (closed -> forced_open)\n"
    assert vendors[0].state == "forced_open"
    assert vendors[1].state == "closed"
    assert [(e.vendor, e.action, e.actor, e.reason) for e in controls()] == [
        ("sendgrid", "force_open", "alice", "incident #7")]


@pytest.mark.parametrize(("user", "expected"), [("dana", "dana"), (None, "cli")],
                         ids=["login-name", "no-login-name"])
def test_control_actor_defaults_to_the_user(
        served: str, token_file: Path, vendors: tuple[vg.Vendor, vg.Vendor],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        user: str | None, expected: str) -> None:
    """Without --actor the actor is the login name, or "cli" when there is none."""
    def getuser() -> str:
        if user is None:
            raise OSError("no user name")
        return user

    monkeypatch.setattr(getpass, "getuser", getuser)
    assert main(["control", "--url", served + "/", "--token-file", str(token_file),
                 "disable", "stripe", "--reason", "noisy"]) == 0
    assert output(capsys)[0] == "stripe: disable (closed -> disabled)\n"
    assert [(e.vendor, e.actor) for e in controls()] == [("stripe", expected)]


def test_control_with_the_wrong_token_fails(served: str, tmp_path: Path,
                                            vendors: tuple[vg.Vendor, vg.Vendor],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong token: exit 1 with the status, the vendor untouched."""
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token-0123456789")
    status = main(["control", "--url", served, "--token-file", str(wrong), "force-open",
                   "sendgrid", "--reason", "x"])
    out, err = output(capsys)
    assert status == 1
    assert out == ""
    assert "HTTP 403" in err
    assert "not-the-token" not in err
    assert vendors[0].state == "closed"
    assert controls() == []


def test_control_unknown_vendor_shows_the_server_error(
        served: str, token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An error answer's ``error`` field is shown."""
    assert main(["control", "--url", served, "--token-file", str(token_file), "reset",
                 "nosuch", "--reason", "x"]) == 1
    assert output(capsys)[1] == "vendorguard: HTTP 404 Not Found: unknown vendor\n"


@pytest.mark.parametrize("problem", ["missing", "empty", "directory", "binary", "two-lines"])
def test_control_without_a_readable_token_fails(
        served: str, tmp_path: Path, vendors: tuple[vg.Vendor, vg.Vendor],
        capsys: pytest.CaptureFixture[str], problem: str) -> None:
    """A missing, empty, unreadable token file: exit 1 naming the file; nothing is sent."""
    path = tmp_path / "token"
    if problem == "empty":
        path.write_text(" \n")
    elif problem == "directory":
        path.mkdir()
    elif problem == "binary":
        path.write_bytes(b"\xff\xfe" + TOKEN.encode())
    elif problem == "two-lines":
        path.write_text(f"{TOKEN}\r\nX-Injected: 1\n")
    status = main(["control", "--url", served, "--token-file", str(path), "force-open",
                   "sendgrid", "--reason", "x"])
    out, err = output(capsys)
    assert status == 1
    assert out == ""
    assert str(path) in err
    assert err.startswith("vendorguard: ")
    assert vendors[0].state == "closed"
    assert controls() == []


def test_control_unreachable_endpoint_fails(token_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: exit 1 with a message."""
    url = f"http://127.0.0.1:{refused_port()}"
    assert main(["control", "--url", url, "--token-file", str(token_file), "reset",
                 "sendgrid", "--reason", "x"]) == 1
    assert output(capsys)[1].startswith(f"vendorguard: cannot reach {url}/vendors/sendgrid/")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "127.0.0.1:9464"])
def test_control_needs_an_http_url(token_file: Path, capsys: pytest.CaptureFixture[str],
                                   url: str) -> None:
    """A URL that is not http(s) is a usage error."""
    assert main(["control", "--url", url, "--token-file", str(token_file), "reset",
                 "sendgrid", "--reason", "x"]) == 2
    assert "--url must be an http:// or https:// URL" in output(capsys)[1]


def test_control_rejects_unknown_actions(token_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """ACTION is one of the four: anything else is a usage error."""
    assert main(["control", "--url", "http://127.0.0.1:1", "--token-file", str(token_file),
                 "explode", "sendgrid", "--reason", "x"]) == 2
    assert "invalid choice" in output(capsys)[1]


def test_control_does_not_follow_redirects(token_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A redirect is reported, not followed: the token is sent to the given URL only."""
    seen: list[tuple[str, str | None]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append((environ["PATH_INFO"], environ.get("HTTP_AUTHORIZATION")))
        start_response("302 Found", [("Location", "/elsewhere"), ("Content-Length", "0")])
        return [b""]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with make_server("127.0.0.1", 0, app, handler_class=Quiet) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            status = main(["control", "--url", f"http://127.0.0.1:{server.server_port}",
                           "--token-file", str(token_file), "reset", "sendgrid",
                           "--reason", "x"])
        finally:
            server.shutdown()
            thread.join(timeout=10)
    assert status == 1
    assert "HTTP 302" in output(capsys)[1]
    assert [path for path, _ in seen] == ["/vendors/sendgrid/reset"]


# -- vendorguard status -----------------------------------------------------------------------


def test_status_prints_a_table(served: str, vendors: tuple[vg.Vendor, vg.Vendor],
                               capsys: pytest.CaptureFixture[str]) -> None:
    """status: the overall line, then a row per vendor with its status and state."""
    vendors[1].force_open(reason="incident")
    assert main(["status", "--url", served]) == 0
    lines = output(capsys)[0].splitlines()
    assert lines[0] == "status: degraded (2 vendors; not ok: stripe)"
    assert lines[1].split() == ["VENDOR", "STATUS", "STATE", "CALLS/S", "ERROR", "%", "P99",
                                "MS", "FALLBACKS", "IN", "FLIGHT"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows["sendgrid"][:3] == ["sendgrid", "ok", "closed"]
    assert rows["sendgrid"][4] == "0.0"  # error rate, %
    assert rows["stripe"][:3] == ["stripe", "down", "forced_open"]
    assert rows["stripe"][-2:] == ["0", "0"]  # fallbacks, in flight
    assert lines[-1].endswith(" control force_open stripe (closed -> forced_open) - incident")


def test_status_json_is_the_report(served: str, vendors: tuple[vg.Vendor, vg.Vendor],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """status --json prints the /vendors report as JSON."""
    assert main(["status", "--url", served, "--json"]) == 0
    report = json.loads(output(capsys)[0])
    assert report["status"] == "ok"
    assert set(report["vendors"]) == {"sendgrid", "stripe"}
    assert report["vendors"]["sendgrid"]["calls_total"] == 1


def test_status_shows_config_generation_and_audit(
        served: str, vendors: tuple[vg.Vendor, vg.Vendor], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With config and audit in the report: the generation, and the last 10 audit entries."""
    real = health_module.health
    trail = [{"time": 1_700_000_000 + i, "kind": "control", "action": "force_open",
              "vendor": "stripe", "actor": f"actor{i}", "reason": f"reason {i}"}
             for i in range(12)]

    def health() -> dict[str, Any]:
        return {**real(), "config": {"generation": 7}, "audit": trail}

    monkeypatch.setattr(health_module, "health", health)
    assert main(["status", "--url", served]) == 0
    out = output(capsys)[0]
    assert "config generation: 7\n" in out
    audit_lines = out.split("audit (last 10):\n", 1)[1].splitlines()
    assert len(audit_lines) == 10
    assert "actor0 " not in out
    assert "actor1 " not in out
    assert audit_lines[-1].endswith("control force_open stripe by actor11 - reason 11")


def test_status_tolerates_missing_keys(served: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A sparse report (older or newer server) still prints, with dashes for the gaps."""
    monkeypatch.setattr(health_module, "health", lambda: {
        "vendors": {"bare": {}, "odd": {"status": "ok", "latency": None, "in_flight": "x",
                                        "error_rate": "high"}},
        "config": {}, "audit": [None, {"kind": "config"}]})
    assert main(["status", "--url", served]) == 0
    out = output(capsys)[0]
    lines = out.splitlines()
    assert lines[0] == "status: unknown (2 vendors; not ok: bare)"
    assert lines[2].split() == ["bare", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[3].split() == ["odd", "ok", "-", "-", "-", "-", "-", "-"]
    assert "config generation" not in out
    assert lines[-1] == "  - config - -"


def test_status_server_error_fails(served: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A 500 from /vendors: exit 1 with the status."""
    def boom() -> dict[str, Any]:
        raise RuntimeError("broken")

    monkeypatch.setattr(health_module, "health", boom)
    assert main(["status", "--url", served]) == 1
    out, err = output(capsys)
    assert (out, err) == ("", "vendorguard: HTTP 500 Internal Server Error\n")


def test_status_unreachable_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: exit 1 with a message."""
    url = f"http://127.0.0.1:{refused_port()}"
    assert main(["status", "--url", url]) == 1
    assert output(capsys)[1].startswith(f"vendorguard: cannot reach {url}/vendors: ")


def test_status_refuses_a_non_report(served: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """JSON that is not a report: exit 1."""
    monkeypatch.setattr(health_module, "health", lambda: {"vendors": ["a", "b"]})
    assert main(["status", "--url", served]) == 1
    assert "unexpected answer" in output(capsys)[1]
