"""Each integration imports its own SDK only, and names its extra when the SDK is missing."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

SDKS = ("ldclient", "sendgrid", "stripe", "slack_sdk", "twilio", "httpx", "requests")
CASES = [
    ("vendorguard.integrations.httpx", {"httpx"}),
    ("vendorguard.integrations.requests", {"requests"}),
    ("vendorguard.integrations.slack", {"slack_sdk"}),
    ("vendorguard.integrations.stripe", {"stripe", "requests", "httpx"}),
]


def _loaded_after(module: str, blocked: str | None = None) -> subprocess.CompletedProcess[str]:
    code = "\n".join([
        "import sys",
        *([f"sys.modules[{blocked!r}] = None"] if blocked else []),
        f"import {module}",
        f"print(sorted(m for m in {SDKS!r} if m in sys.modules))",
    ])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(("module", "allowed"), CASES, ids=[m for m, _ in CASES])
def test_integration_imports_only_its_sdk(module: str, allowed: set[str]) -> None:
    """Importing one integration loads no other vendor's SDK (the Stripe SDK itself brings
    requests and, when installed, httpx)."""
    done = _loaded_after(module)
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip()))
    assert loaded <= allowed, loaded - allowed


@pytest.mark.parametrize(("module", "sdk", "extra"), [
    ("vendorguard.integrations.httpx", "httpx", "httpx"),
    ("vendorguard.integrations.requests", "requests", "requests"),
    ("vendorguard.integrations.slack", "slack_sdk", "slack"),
    ("vendorguard.integrations.stripe", "stripe", "stripe"),
])
def test_missing_sdk_names_the_extra(module: str, sdk: str, extra: str) -> None:
    """Without its SDK, an integration fails to import with the pip command to fix it."""
    done = _loaded_after(module, blocked=sdk)
    assert done.returncode != 0
    assert f"pip install 'vendorguard[{extra}]'" in done.stderr
