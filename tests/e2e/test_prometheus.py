"""A real Prometheus scrapes a vendorguard endpoint through an outage and sees what happened."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

import vendorguard as vg
from tests.conftest import sample, wait_until
from tests.integrations.fakehttp import free_port
from tests.services import require_binary
from vendorguard.telemetry.server import start_http_server

pytestmark = pytest.mark.services

T = TypeVar("T")
DEADLINE = 30.0
SUCCESSES, FAILURES, REJECTED = 5, 3, 4


def poll(check: Callable[[], T | None], what: str, deadline: float = DEADLINE,
         interval: float = 0.25) -> T:
    """Call ``check`` until it returns something other than None, for at most ``deadline``."""
    last: list[Exception] = []

    def attempt() -> tuple[T] | None:
        try:
            result = check()
        except (OSError, ValueError) as exc:  # not up yet, or a partial answer
            last[:] = [exc]
            return None
        return None if result is None else (result,)

    found = wait_until(attempt, timeout=deadline, interval=interval)
    if found is None:
        pytest.fail(f"timed out after {deadline:.0f} s waiting for {what} "
                    f"(last error: {last[0] if last else None!r})")
    return found[0]


@pytest.fixture
def outage() -> Iterator[tuple[CollectorRegistry, int]]:
    """A vendor driven through an outage until its breaker opened, served on a free port."""
    reg = CollectorRegistry()
    acme = vg.Vendor("acme", registry=reg, retry=None,
                     breaker=vg.Breaker(failures=FAILURES, reset_after=600.0))

    def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    for _ in range(SUCCESSES):
        assert acme.call("charge", lambda: "ok") == "ok"
    for _ in range(FAILURES):
        with pytest.raises(ConnectionRefusedError):
            acme.call("charge", refused)
    for _ in range(REJECTED):
        with pytest.raises(vg.CircuitOpenError):
            acme.call("charge", refused)
    assert sample(reg, "vendorguard_circuit_state", vendor="acme", circuit="acme",
                  state="open") == 1.0
    server, thread = start_http_server(0, registry=reg)
    try:
        yield reg, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def prometheus(outage: tuple[CollectorRegistry, int], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the endpoint every second; yields its base URL."""
    binary = require_binary("prometheus")
    _, target = outage
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: vendorguard\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target}']\n")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool | None:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n"
                            + (tmp_path / "prometheus.log").read_text()[-4000:])
            with urllib.request.urlopen(base + "/-/ready", timeout=5) as response:
                return True if response.status == 200 else None

        poll(ready, "prometheus to be ready")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log.close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The instant-vector result of ``promql``."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def values_by(base: str, promql: str, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in query(base, promql)}


def test_prometheus_sees_calls_by_outcome(prometheus: str) -> None:
    """Prometheus scrapes every outcome series, with the counts that were driven."""
    expected = {"success": SUCCESSES, "caller_error": 0, "error": FAILURES, "timeout": 0,
                "rejected": REJECTED}

    def scraped() -> dict[str, float] | None:
        found = values_by(prometheus, 'vendorguard_calls_total{vendor="acme",'
                                      'operation="charge",job="vendorguard"}', "outcome")
        return found if found == expected else None

    assert poll(scraped, f"calls by outcome == {expected}") == expected
    assert values_by(prometheus, 'up{job="vendorguard"}', "job") == {"vendorguard": 1.0}


def test_prometheus_sees_the_open_breaker(prometheus: str) -> None:
    """The one-hot circuit state shows open, and the transition was counted."""
    def opened() -> bool | None:
        states = values_by(prometheus, 'vendorguard_circuit_state{vendor="acme"}', "state")
        return True if states.get("open") == 1.0 else None

    poll(opened, 'vendorguard_circuit_state{state="open"} == 1')
    states = values_by(prometheus, 'vendorguard_circuit_state{vendor="acme",circuit="acme"}',
                       "state")
    assert states == {"closed": 0.0, "open": 1.0, "half_open": 0.0, "forced_open": 0.0,
                      "disabled": 0.0}
    assert query(prometheus, 'vendorguard_circuit_state{state="open"} == 1')
    opens = values_by(prometheus, 'vendorguard_circuit_transitions_total{vendor="acme",'
                                  'from_state="closed",to_state="open"}', "to_state")
    assert opens == {"open": 1.0}
