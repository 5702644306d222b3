"""The status page, rendered by a real headless Chromium against a live endpoint."""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.services import require_binary
from vendorguard import audit
from vendorguard.telemetry.server import start_http_server

pytestmark = pytest.mark.services

REASON = "<img src=x onerror=alert(1)> incident #42"


class Elements(HTMLParser):
    """Every element of a document with its attributes, and the text under each id."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, attr: str) -> dict[str, dict[str, str | None]]:
        return {str(a[attr]): a for _, a in self.elements if attr in a}


def render(url: str, tmp_path: Path) -> Elements:
    """The DOM after Chromium ran the page's script for 5 s of virtual time."""
    binary = require_binary("chromium")
    result = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", url],
        capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    dom = Elements()
    dom.feed(result.stdout.decode())
    return dom


@pytest.fixture
def page() -> Iterator[str]:
    """Two vendors, one of them critical and forced open, behind a live endpoint."""
    reg = CollectorRegistry()
    payments = vg.Vendor("payments", registry=reg, critical=True)
    email = vg.Vendor("email", registry=reg)
    email.call("send", lambda: "sent")
    payments.force_open(reason=REASON)
    server, thread = start_http_server(0, registry=reg)
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_cards_show_each_vendor(page: str, tmp_path: Path) -> None:
    """One card per vendor, with status and breaker state hooks, and a down banner."""
    dom = render(page, tmp_path)
    cards = dom.having("data-vendor")
    assert set(cards) == {"payments", "email"}
    assert (cards["payments"]["data-status"], cards["payments"]["data-state"]) == (
        "down", "forced_open")
    assert cards["payments"]["data-critical"] == "true"
    assert (cards["email"]["data-status"], cards["email"]["data-state"]) == ("ok", "closed")
    ids = dom.having("id")
    assert ids["overall"]["data-status"] == "down"
    assert "hidden" in ids["error"]
    text = " ".join(dom.text)
    assert "critical vendor payments is down" in text
    assert "forced open" in text


def test_operator_text_is_not_markup(page: str, tmp_path: Path) -> None:
    """A control reason is shown as text; its markup never becomes an element."""
    dom = render(page, tmp_path)
    assert REASON in " ".join(dom.text)
    assert not [a for tag, a in dom.elements if tag == "img" or "onerror" in a]


def test_fetch_failure_is_announced(page: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """When /vendors fails, the page says so instead of showing stale or empty cards."""
    def boom() -> dict[str, Any]:
        raise RuntimeError("health is broken")

    monkeypatch.setattr(importlib.import_module("vendorguard.telemetry.health"), "health", boom)
    dom = render(page, tmp_path)
    ids = dom.having("id")
    assert "hidden" not in ids["error"]
    assert ids["overall"]["data-status"] == "unknown"
    assert not dom.having("data-vendor")
    assert "Cannot load vendor status (HTTP 500)" in " ".join(dom.text)


def test_actor_audit_trail_and_generation(page: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Control entries name their actor; the report's audit trail (its last 20 entries) and
    configuration generation are shown, as text."""
    vg.vendor("email").disable(reason="noisy", actor="<b>alice</b>")
    health_module = importlib.import_module("vendorguard.telemetry.health")
    real = health_module.health
    extra = [{"time": 1.0, "kind": "config", "action": "applied", "vendor": None,
              "actor": "config", "reason": f"old {i}"} for i in range(25)]

    trail: list[dict[str, Any]] = []

    def health() -> dict[str, Any]:
        trail[:] = extra + [e.as_dict() for e in audit.entries()]
        return {**real(), "config": {"generation": 7}, "audit": trail}

    monkeypatch.setattr(health_module, "health", health)
    dom = render(page, tmp_path)
    text = " ".join(dom.text)
    assert "disable by <b>alice</b> — noisy" in text
    ids = dom.having("id")
    assert "hidden" not in ids["audit"]
    assert "hidden" not in ids["generation"]
    assert "Configuration generation 7." in text
    assert "Audit trail" in text
    kinds = [a["data-kind"] for _, a in dom.elements if "data-kind" in a]
    assert kinds == [e["kind"] for e in reversed(trail[-20:])]  # newest first
    shown = {e["reason"] for e in trail[-20:]}
    assert [r for r in (e["reason"] for e in extra) if f"{r} " in text] == [
        r for r in (e["reason"] for e in extra) if r in shown]
    assert f"control force open payments — {REASON}" in " ".join(text.split())
    assert not [tag for tag, _ in dom.elements if tag in ("b", "img")]
