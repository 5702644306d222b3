"""The integration examples run as scripts and print what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_launchdarkly_example_runs() -> None:
    """examples/launchdarkly_flags.py exits 0, serves a bad context the default, is healthy."""
    pytest.importorskip("ldclient")
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "launchdarkly_flags.py")],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "bad context (a dict)   -> False" in done.stdout
    assert "health: launchdarkly ok" in done.stdout
    assert 'reason="bad_context"' in done.stdout


def test_welcome_emails_example_runs() -> None:
    """examples/welcome_emails.py keeps 5 mails during the outage, then delivers each once."""
    pytest.importorskip("sendgrid")
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        env.pop(var, None)
    done = subprocess.run([sys.executable, str(EXAMPLES / "welcome_emails.py")],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("-> queued as #") == 5
    assert done.stdout.count("' x1") == 5
    assert "pending: 0, dead letters: 0, delivered: 5" in done.stdout
    outbox = done.stdout.splitlines()[0].removeprefix("outbox: ")
    assert not Path(outbox).exists()
    assert "outbox removed: True" in done.stdout
