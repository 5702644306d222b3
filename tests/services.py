"""Helpers for tests that need real external programs or services.

Such a test skips when what it needs is missing, unless ``VENDORGUARD_REQUIRE_SERVICES=1``
(set in CI), where a missing service is a failure instead of a silent skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["REQUIRE_SERVICES_ENV", "require_binary", "services_required"]

REQUIRE_SERVICES_ENV = "VENDORGUARD_REQUIRE_SERVICES"


def services_required() -> bool:
    """Whether missing services must fail the test run rather than skip."""
    return os.environ.get(REQUIRE_SERVICES_ENV) == "1"


def require_binary(name: str) -> str:
    """The path of executable ``name`` on PATH; skips the test (fails under
    ``VENDORGUARD_REQUIRE_SERVICES=1``) when it is not installed."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (not found on PATH)"
    if services_required():
        pytest.fail(f"{reason}, and {REQUIRE_SERVICES_ENV}=1 requires it", pytrace=False)
    pytest.skip(f"{reason}; set {REQUIRE_SERVICES_ENV}=1 to make this a failure")
