"""``vendorguard demo``: the whole timeline at high speed, on loopback only."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ldclient")
pytest.importorskip("sendgrid")
pytest.importorskip("stripe")

from tests.conftest import wait_until
from vendorguard import cli
from vendorguard.demo.fakes import FakeSendGrid, FakeStripe
from vendorguard.demo.runner import SDK_LOGGERS, Options, run
from vendorguard.demo.summary import p99
from vendorguard.demo.timeline import TIMELINE

FAST = ["demo", "--speed", "20", "--duration", "60"]
ROOT = Path(__file__).resolve().parent.parent
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def settled(before: set[threading.Thread], timeout: float = 5.0) -> list[str]:
    """Threads started since ``before`` that are still alive after joining each for up to
    ``timeout`` s in all."""
    end = time.monotonic() + timeout
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        thread.join(max(0.0, end - time.monotonic()))
    return [t.name for t in started if t.is_alive()]


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with DIRECT.open(url, timeout=timeout) as response:
        return response.status, response.read()


def demo_process(*args: str, tmpdir: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.Popen([sys.executable, "-m", "vendorguard.cli", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_vendors(port: int, proc: subprocess.Popen[str], timeout: float = 30.0
                     ) -> dict[str, Any]:
    """Poll /vendors (the demo is another process: nothing to wait on but its answers) until
    the demo's three vendors are listed."""

    def listed() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"the demo ended early (exit {proc.poll()})")
        try:
            status, body = get(f"http://127.0.0.1:{port}/vendors")
        except (urllib.error.URLError, OSError):
            return None
        report: dict[str, Any] = json.loads(body)
        wanted = {"launchdarkly", "sendgrid", "stripe"} <= report["vendors"].keys()
        return report if status == 200 and wanted else None

    report = wait_until(listed, timeout, interval=0.05)
    assert report is not None, "/vendors never listed the demo's vendors"
    return report


def check_summary(out: str) -> None:
    """The summary shows orders, no lost mail, no double charge, and every phase's p99."""
    orders = re.search(r"orders\s+(\d+) taken: (\d+) paid", out)
    assert orders is not None, out
    assert int(orders[1]) > 0
    assert re.search(r"at SendGrid: (\d+) of \1 accepted, 0 lost", out), out
    charges = re.search(r"(\d+) charges at Stripe for (\d+) paid orders, 0 orders charged twice",
                        out)
    assert charges is not None, out
    assert charges[1] == charges[2] == orders[2]
    for number, phase in enumerate(TIMELINE, 1):
        assert re.search(rf"{number}\. {re.escape(phase.name)}\s+\d+ orders\s+[\d.]+ m?s\n",
                         out), (phase.name, out)
    assert "result         OK" in out


def test_a_fast_run_keeps_its_invariants_and_leaves_nothing_behind(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At 20x in-process: exit 0, a full summary, no thread, vendor, file or setting left."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("NO_PROXY", raising=False)
    levels = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    before = set(threading.enumerate())

    status = cli.main([*FAST, "--port", "0", "--quiet"])

    out = capsys.readouterr().out
    assert status == 0, out
    check_summary(out)
    assert settled(before) == []
    assert list(tmp_path.iterdir()) == []
    import vendorguard as vg
    assert vg.vendors() == []
    assert "NO_PROXY" not in os.environ
    assert {name: logging.getLogger(name).level for name in SDK_LOGGERS} == levels


def test_the_status_page_answers_while_it_runs() -> None:
    """A subprocess serves /vendors, /metrics and / on the port it was given, then exits 0."""
    port = free_port()
    proc = demo_process(*FAST, "--port", str(port), "--quiet")
    try:
        report = wait_for_vendors(port, proc)
        assert report["vendors"]["stripe"]["critical"] is True
        status, metrics = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert b'vendorguard_calls_total{operation="mail.send"' in metrics
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200
        assert b"<html" in page.lower()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, (out, err)
    assert f"status page http://127.0.0.1:{port}/" in out
    check_summary(out)


def test_a_taken_port_gives_one_clear_line_and_status_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The status port in use: one line naming it and --port, exit 1, nothing started."""
    before = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = cli.main(["demo", "--port", str(port), "--quiet"])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert f"127.0.0.1:{port}" in lines[0]
    assert "--port" in lines[0]
    assert settled(before) == []


def test_without_a_terminal_each_phase_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a TTY and not quiet: one line per phase, in order, then the summary."""
    status = cli.main(["demo", "--speed", "30", "--duration", "60", "--port", "0"])
    out = capsys.readouterr().out
    assert status == 0, out
    phases = [line for line in out.splitlines() if re.match(r"\[\d+:\d\d\] phase", line)]
    assert [re.search(r"phase (\d)/5: ([^|]+) \|", p)[2].strip()  # type: ignore[index]
            for p in phases] == [phase.name for phase in TIMELINE]
    assert "\x1b[" not in out
    check_summary(out)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_board_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TTY gets the board redrawn with ANSI escapes, every vendor on it, the cursor back."""
    monkeypatch.setenv("COLUMNS", "100")
    screen, errors = Terminal(), io.StringIO()
    status = run(Options(speed=30, duration=60, port=0), out=screen, err=errors)
    text = screen.getvalue()
    assert status == 0, text
    frames = re.split(r"\r\x1b\[\d+A\x1b\[J", text)
    assert len(frames) > 5
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frames[-1])
    assert "phase 5/5: everything recovers" in last
    for vendor in ("launchdarkly", "sendgrid", "stripe"):
        assert re.search(rf"^{vendor}\s+(ok|degraded|down)\s", last, re.MULTILINE), last
    assert "\x1b[?25l" in text
    assert text.count("\x1b[?25h") == 1
    check_summary(last)


@pytest.mark.parametrize(("signum", "status"), [
    (signal.SIGINT, 130), (signal.SIGTERM, 143),
], ids=["ctrl-c", "sigterm"])
def test_a_signal_prints_the_summary_so_far_and_removes_the_outbox(
        signum: int, status: int, tmp_path: Path) -> None:
    """SIGINT or SIGTERM mid-run: the summary so far, its exit status, no temporary file."""
    port = free_port()
    proc = demo_process("demo", "--port", str(port), "--quiet", tmpdir=tmp_path)
    try:
        wait_for_vendors(port, proc)
        assert [p.name[:17] for p in tmp_path.iterdir()] == ["vendorguard-demo-"]
        assert wait_until(  # mid-run: once orders are being paid
            lambda: wait_for_vendors(port, proc)["vendors"]["stripe"]["calls_total"], 30,
            interval=0.05), "no payment was made"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == status, (out, err)
    assert "summary so far (interrupted)" in out
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_outbox_path_is_kept(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """With --outbox PATH the outbox file stays, holding the delivered confirmations."""
    path = tmp_path / "outbox.db"
    status = cli.main([*FAST, "--port", "0", "--quiet", "--outbox", str(path)])
    out = capsys.readouterr().out
    assert status == 0, out
    check_summary(out)
    import vendorguard as vg
    with vg.Outbox(path) as outbox:
        assert outbox.pending() == []


def test_the_fake_stripe_charges_each_key_once() -> None:
    """A replayed key is answered the stored charge; a rate-limited one is not charged."""
    fake = FakeStripe(retry_after=0.5)
    fake.start()
    try:
        def pay(key: str) -> tuple[int, dict[str, str]]:
            request = urllib.request.Request(
                fake.url + "/v1/payment_intents", data=b"amount=100&metadata%5Border%5D=7",
                headers={"Idempotency-Key": key}, method="POST")
            try:
                with DIRECT.open(request, timeout=2) as response:
                    return response.status, dict(response.headers)
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers)

        assert pay("a")[0] == 200
        status, headers = pay("a")
        assert status == 200
        assert headers["Idempotent-Replayed"] == "true"
        fake.limit()
        assert pay("b")[0] == 200
        status, headers = pay("c")  # the third new key while limited
        assert status == 429
        assert headers["Retry-After"] == "0.5"
        assert pay("c")[0] == 200  # the retry gets through
        assert fake.charges == {"a": "7", "b": "7", "c": "7"}
        assert fake.rate_limited == 1
        assert fake.replayed == 1
    finally:
        fake.stop()


def test_the_fake_sendgrid_never_accepts_a_held_mail() -> None:
    """A mail sent during a hang is dropped unanswered at recovery, and not counted."""
    fake = FakeSendGrid()
    fake.start()

    def send(subject: str, timeout: float) -> int:
        request = urllib.request.Request(fake.url + "/v3/mail/send", method="POST",
                                         data=json.dumps({"subject": subject}).encode())
        with DIRECT.open(request, timeout=timeout) as response:
            return int(response.status)

    try:
        fake.hang()
        result: list[BaseException] = []
        sender = threading.Thread(target=lambda: _catch(result, send, "held", 5.0))
        sender.start()
        assert wait_until(lambda: fake.held, 5)  # the request reached the fake's hang
        fake.recover()
        sender.join(5)
        assert len(result) == 1
        assert isinstance(result[0], OSError)  # dropped unanswered (URLError is an OSError)
        assert send("after", 2.0) == 202
        assert fake.accepted == {"after": 1}
    finally:
        fake.stop()


def _catch(into: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:
        into.append(exc)


@pytest.mark.parametrize(("values", "expected"), [
    ([], None),
    ([0.5], 0.5),
    ([float(n) for n in range(1, 101)], 99.0),
    ([float(n) for n in range(1, 37)], 36.0),
], ids=["none", "one", "hundred", "thirty-six"])
def test_p99_is_the_nearest_rank(values: list[float], expected: float | None) -> None:
    """p99 by nearest rank: with under 100 orders it is the slowest one."""
    assert p99(values) == expected


@pytest.mark.parametrize("args", [
    ["--speed", "0"], ["--duration", "-1"], ["--port", "70000"], ["--speed", "fast"],
], ids=["speed-zero", "negative-duration", "port-range", "speed-text"])
def test_bad_options_are_usage_errors(args: list[str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Out-of-range options exit 2 before anything starts."""
    assert cli.main(["demo", *args]) == 2
    assert "vendorguard demo: error" in capsys.readouterr().err
