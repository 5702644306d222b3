"""The built wheel ships what an installed user imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--disable-pip-version-check", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300)
    (path,) = out.glob("vendorguard-*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.parametrize("member", [
    "vendorguard/__init__.py",
    "vendorguard/py.typed",
    "vendorguard/telemetry/metrics.py",
    "vendorguard/integrations/__init__.py",
    "vendorguard/monitoring/dashboards/vendorguard.json",
    "vendorguard/monitoring/alerts/vendorguard.rules.yml",
    "vendorguard/demo/runner.py",
    "vendorguard/testing/plugin.py",
    "vendorguard/__main__.py",
], ids=["package", "py.typed", "telemetry", "integrations", "dashboard", "alert-rules", "demo",
        "pytest-plugin", "main"])
def test_wheel_contains(wheel: zipfile.ZipFile, member: str) -> None:
    """The wheel holds the package, its type marker, and integrations/ as a subpackage."""
    assert member in wheel.namelist()


def test_wheel_has_no_tests_or_top_level_integrations(wheel: zipfile.ZipFile) -> None:
    """Only vendorguard is installed: no stray top-level packages."""
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vendorguard"}
