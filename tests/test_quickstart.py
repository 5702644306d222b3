"""The quickstart the README opens with runs and shows the guard at work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs_and_tells_what_happened() -> None:
    """examples/quickstart.py exits 0 after a retry, a timeout, an open circuit and fallbacks."""
    done = subprocess.run([sys.executable, str(QUICKSTART)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "retried after ConnectionRefusedError (transient)" in out
    assert "retried after VendorTimeoutError (timeout)" in out
    assert "circuit closed -> open" in out
    assert "outcome=rejected attempts=0, fallback served (rejected)" in out
    assert 'vendorguard_calls_total{operation="geocode",outcome="success",vendor="geocoder"}' in out
