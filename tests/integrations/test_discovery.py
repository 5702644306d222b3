"""Discovery against real HTTP clients and local servers: hosts, guarded or not, restored."""

from __future__ import annotations

import asyncio
import http.client
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest

import vendorguard as vg
from vendorguard import discovery, events
from vendorguard.telemetry.server import make_wsgi_app

from .fakehttp import OK, Answer, FakeVendor, refused_url

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def fake() -> Iterator[FakeVendor]:
    with FakeVendor() as vendor:
        yield vendor


@pytest.fixture
def on(metrics: CollectorRegistry) -> Iterator[CollectorRegistry]:
    discovery.reset()
    vg.discover(registry=metrics)
    try:
        yield metrics
    finally:
        vg.undiscover()
        discovery.reset()


def _host(name: str) -> dict[str, object]:
    return next(h for h in discovery.report()["hosts"] if h["host"] == name)


def _outbound(metrics: CollectorRegistry, host: str, guarded: str) -> float:
    value = metrics.get_sample_value("vendorguard_outbound_requests_total",
                                     {"host": host, "guarded": guarded})
    return 0.0 if value is None else value


def test_requests_guarded_and_unguarded(fake: FakeVendor, on: CollectorRegistry) -> None:
    """requests calls inside a guard count as guarded by that vendor; others as unguarded."""
    billing = vg.Vendor("billing", registry=on)
    session = requests.Session()

    @billing.guard("get")
    def guarded() -> int:
        return session.get(fake.url + "/v1/x", timeout=5).status_code

    assert guarded() == 200
    assert session.get(fake.url + "/v1/y", timeout=5).status_code == 200
    assert session.get(fake.url + "/v1/z", timeout=5).status_code == 200
    row = _host("127.0.0.1")
    assert (row["requests"], row["guarded"], row["unguarded"]) == (3, 1, 2)
    assert row["vendors"] == ["billing"]
    assert _outbound(on, "127.0.0.1", "true") == 1
    assert _outbound(on, "127.0.0.1", "false") == 2
    assert discovery.report()["unguarded_hosts"] == ["127.0.0.1"]


def test_thread_mode_guard_counts_as_guarded(fake: FakeVendor, on: CollectorRegistry) -> None:
    """A sync guard with a timeout runs the call on a worker thread: still guarded."""
    billing = vg.Vendor("billing", timeout=vg.Timeout(attempt=5.0), registry=on)

    @billing.guard("get")
    def guarded() -> int:
        return requests.get(fake.url + "/v1/x", timeout=5).status_code

    assert guarded() == 200
    assert _host("127.0.0.1")["guarded"] == 1


def test_http_client_and_urllib(fake: FakeVendor, on: CollectorRegistry) -> None:
    """Plain http.client and urllib requests are seen, with 5xx counted as errors."""
    fake.script(OK, Answer(503))
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    conn.request("GET", "/a")
    assert conn.getresponse().read() is not None
    conn.close()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(fake.url + "/b", timeout=5)
    row = _host("127.0.0.1")
    assert row["requests"] == 2
    assert row["errors"] == 1


def test_connection_refused_is_an_error(on: CollectorRegistry) -> None:
    """A request that cannot connect is recorded as an error of its host."""
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(refused_url() + "/x", timeout=5)
    row = _host("127.0.0.1")
    assert (row["requests"], row["errors"]) == (1, 1)


def test_httpx_sync_and_async(fake: FakeVendor, on: CollectorRegistry) -> None:
    """httpx's default transports are seen, sync and async, guarded or not."""
    maps = vg.Vendor("maps", registry=on)

    @maps.guard("get")
    async def guarded(client: httpx.AsyncClient) -> int:
        return (await client.get(fake.url.replace("127.0.0.1", "localhost") + "/m")).status_code

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            assert await guarded(client) == 200
            assert (await client.get(fake.url + "/n")).status_code == 200

    with httpx.Client() as client:
        assert client.get(fake.url + "/o").status_code == 200
    asyncio.run(run())
    assert _host("localhost")["guarded"] == 1
    assert _host("localhost")["vendors"] == ["maps"]
    assert _host("127.0.0.1")["unguarded"] == 2


def test_undiscover_restores_originals(fake: FakeVendor, metrics: CollectorRegistry) -> None:
    """After undiscover() every patched function is the original object again, and requests
    are no longer recorded."""
    originals = {(owner, name): owner.__dict__[name]
                 for owner, name, _ in discovery._targets()}
    vg.discover(registry=metrics)
    assert discovery.active()
    assert all(owner.__dict__[name] is not original
               for (owner, name), original in originals.items())
    vg.undiscover()
    assert not discovery.active()
    assert all(owner.__dict__[name] is original
               for (owner, name), original in originals.items())
    assert events.attempt_hook is None
    discovery.reset()
    requests.get(fake.url + "/after", timeout=5)
    assert discovery.report()["hosts"] == []


def test_hosts_are_capped(on: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_HOSTS distinct hosts, requests are counted under ``other``."""
    monkeypatch.setattr(discovery, "MAX_HOSTS", 2)
    for host in ("a.test", "b.test", "c.test", "d.test"):
        discovery._record(host, None, False, 0.001)
    hosts = {h["host"]: h["requests"] for h in discovery.report()["hosts"]}
    assert hosts == {"a.test": 1, "b.test": 1, "other": 2}


def test_nothing_but_the_host_is_kept(fake: FakeVendor, on: CollectorRegistry) -> None:
    """Paths, queries and headers never reach the report or the metrics."""
    requests.get(fake.url + "/users/ada@example.com?token=SECRET-TOKEN",
                 headers={"Authorization": "Bearer SECRET-KEY"}, timeout=5)
    text = str(discovery.report()) + generate_latest(on).decode()
    for secret in ("ada@example.com", "SECRET-TOKEN", "SECRET-KEY", "/users"):
        assert secret not in text


def test_vendors_endpoint_shows_outbound(fake: FakeVendor, on: CollectorRegistry) -> None:
    """While discovery is on, /vendors has an ``outbound`` section."""
    import json

    requests.get(fake.url + "/x", timeout=5)
    app = make_wsgi_app(on)
    statuses: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/vendors"},
                        lambda status, headers: statuses.append(status)))
    assert statuses[0].startswith("200")
    report = json.loads(body)
    assert report["outbound"]["hosts"][0]["host"] == "127.0.0.1"


def test_discover_cli_marks_the_unguarded_vendor() -> None:
    """``vendorguard discover -- python examples/two_vendors.py`` prints both hosts and marks
    the one nobody guarded; the program's own output and exit status are kept."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    done = subprocess.run([sys.executable, "-m", "vendorguard.cli", "discover", "--", "python",
                           str(EXAMPLES / "two_vendors.py")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "app: 3 invoices, 2 lookups" in done.stdout
    lines = {line.split()[0]: line for line in done.stderr.splitlines()
             if line.startswith(("127.0.0.1", "localhost"))}
    assert "billing" in lines["127.0.0.1"]
    assert "unguarded" not in lines["127.0.0.1"]
    assert lines["localhost"].rstrip().endswith("<- unguarded")


def test_discover_cli_passes_the_exit_status(tmp_path: Path) -> None:
    """A failing program's exit status comes back; the table is printed anyway."""
    script = tmp_path / "fails.py"
    script.write_text("import sys\nsys.exit(3)\n")
    done = subprocess.run([sys.executable, "-m", "vendorguard.cli", "discover", "--",
                           str(script)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 3
    assert "(no outbound HTTP requests)" in done.stderr


def test_discover_cli_needs_a_program() -> None:
    """Without a program the command is a usage error."""
    done = subprocess.run([sys.executable, "-m", "vendorguard.cli", "discover"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "give a program" in done.stderr


def test_aiohttp_is_seen(fake: FakeVendor, on: CollectorRegistry) -> None:
    """aiohttp's ClientSession requests are recorded, guarded or not."""
    aiohttp = pytest.importorskip("aiohttp")
    chat = vg.Vendor("chat", registry=on)

    @chat.guard("post")
    async def guarded(session: object) -> int:
        async with session.post(fake.url + "/p", json={}) as response:  # type: ignore[attr-defined]
            return int(response.status)

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            assert await guarded(session) == 200
            async with session.get(fake.url + "/g") as response:
                assert response.status == 200

    asyncio.run(run())
    row = _host("127.0.0.1")
    assert (row["requests"], row["guarded"], row["vendors"]) == (2, 1, ["chat"])


def test_failed_httpx_and_aiohttp_requests_are_errors(on: CollectorRegistry) -> None:
    """Requests that cannot connect are recorded as errors by every instrumented client."""
    aiohttp = pytest.importorskip("aiohttp")
    url = refused_url()

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url + "/a")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(url + "/b")

    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(url + "/c")
    asyncio.run(run())
    row = _host("127.0.0.1")
    assert (row["requests"], row["errors"], row["unguarded"]) == (3, 3, 3)


def test_run_command_in_process(fake: FakeVendor, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """run_command runs a script, or a module with -m, with discovery on only while it runs,
    and prints the table; a crashing program gives status 1 and still a table."""
    import io

    discovery.reset()
    (tmp_path / "calls.py").write_text(
        "import sys, requests\n"
        f"requests.get({fake.url!r} + '/s', timeout=5)\n"
        "print('argv', sys.argv[1:])\n")
    (tmp_path / "crashes.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = io.StringIO()
    assert discovery.run_command(["python", str(tmp_path / "calls.py"), "x"], out=out) == 0
    assert not discovery.active()
    assert "127.0.0.1" in out.getvalue()
    assert "<- unguarded" in out.getvalue()
    out = io.StringIO()
    assert discovery.run_command(["-m", "calls"], out=out) == 0
    assert _host("127.0.0.1")["requests"] == 2
    out = io.StringIO()
    assert discovery.run_command([str(tmp_path / "crashes.py")], out=out) == 1
    assert "outbound HTTP requests" in out.getvalue()
    assert discovery.run_command(["python"], out=io.StringIO()) == 2
    assert discovery.run_command(["-m"], out=io.StringIO()) == 2
    discovery.reset()
