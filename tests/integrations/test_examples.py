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


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        env.pop(var, None)
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=30, env=env, check=False)


def test_notifications_example_runs() -> None:
    """examples/notifications.py sends the SMS and the Slack post after one rate-limited
    request each (one retry layer), then the Slack outage opens the breaker."""
    pytest.importorskip("twilio")
    pytest.importorskip("slack_sdk")
    done = run_example("notifications.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "twilio: message SM1 queued after 2 requests" in lines
    assert "slack: posted ts=1.000 after 2 requests" in lines
    [down] = [line for line in lines if line.startswith("slack down: ")]
    outcomes = down.removeprefix("slack down: ").split(", ")
    assert len(outcomes) == 8
    assert outcomes[0] == "URLError"
    assert outcomes[-1] == "rejected"
    assert "posted" not in outcomes
    assert "slack breaker: open" in lines
    for metric in (
            'vendorguard_calls_total{operation="messages.create",outcome="success",'
            'vendor="twilio"} 1.0',
            'vendorguard_calls_total{operation="chat.postMessage",outcome="success",'
            'vendor="slack"} 1.0',
            'vendorguard_retries_total{operation="messages.create",reason="rate_limited",'
            'vendor="twilio"} 1.0',
            'vendorguard_retries_total{operation="chat.postMessage",reason="rate_limited",'
            'vendor="slack"} 1.0'):
        assert metric in lines
    rejected = 'vendorguard_calls_total{operation="chat.postMessage",outcome="rejected",'
    assert any(line.startswith(rejected) for line in lines)


def test_checkout_payments_example_runs() -> None:
    """examples/checkout_payments.py retries a 500 and a 429 with one Idempotency-Key each,
    charges twice in all, and declines four cards without opening the breaker."""
    pytest.importorskip("stripe")
    done = run_example("checkout_payments.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "order 1: pi_1 succeeded; keys sent: 2 requests, 1 key" in lines
    assert "order 2: pi_2 succeeded; keys sent: ['order-2-payment']" in lines
    for order in (3, 4, 5, 6):
        assert f"order {order}: declined (card_declined), breaker stays closed" in lines
    assert "charges at the stand-in: 2" in lines
    for metric in (
            'vendorguard_calls_total{operation="payment_intents.create",outcome="success",'
            'vendor="stripe"} 2.0',
            'vendorguard_calls_total{operation="payment_intents.create",'
            'outcome="caller_error",vendor="stripe"} 4.0'):
        assert metric in lines
    assert not [line for line in lines if 'outcome="error"' in line]
