"""The public API: exported names, the exception tree, and no vendor SDK in the core import."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import vendorguard
import vendorguard as vg
from tests.conftest import Gate, held

CONTRACT = [
    "Vendor", "Timeout", "Retry", "Backoff", "RetryBudget", "Breaker", "Bulkhead", "Policy",
    "guard", "vendors", "vendor", "deadline", "LastGood", "Failure", "VendorError",
    "CircuitOpenError", "VendorTimeoutError", "BulkheadFullError", "FallbackError",
    "testing_mode", "discover", "undiscover", "configure", "reload", "ConfigError",
]
SUBCLASSES = [vg.CircuitOpenError, vg.VendorTimeoutError, vg.BulkheadFullError,
              vg.FallbackError]
VENDOR_SDKS = {"stripe", "sendgrid", "ldclient", "httpx", "requests", "redis", "psycopg",
               "opentelemetry"}


def _names_defined_in_init() -> set[str]:
    """Public names bound at the top level of vendorguard/__init__.py, by reading its source."""
    tree = ast.parse(Path(vendorguard.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_")
            and not isinstance(getattr(vendorguard, n, None), types.ModuleType)}


# -- __all__ ----------------------------------------------------------------------------------


def test_all_is_sorted() -> None:
    """__all__ is kept sorted."""
    assert vendorguard.__all__ == sorted(vendorguard.__all__)


def test_all_has_no_duplicates() -> None:
    """No name appears twice in __all__."""
    assert len(vendorguard.__all__) == len(set(vendorguard.__all__))


def test_all_equals_public_names_of_init() -> None:
    """__all__ is exactly the public names __init__.py defines or imports."""
    assert set(vendorguard.__all__) == _names_defined_in_init()


def test_all_covers_public_runtime_attributes() -> None:
    """Every public non-module attribute of the package is listed in __all__."""
    public = {n for n, v in vars(vendorguard).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)
              and n != "annotations"}
    assert public == set(vendorguard.__all__)


@pytest.mark.parametrize("name", sorted(vendorguard.__all__))
def test_all_names_resolve(name: str) -> None:
    """Every name in __all__ is an attribute of the package."""
    assert getattr(vendorguard, name) is not None


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_name_is_exported(name: str) -> None:
    """Every name the design makes contract is in __all__."""
    assert name in vendorguard.__all__


def test_star_import_gives_exactly_all() -> None:
    """``from vendorguard import *`` binds exactly the names in __all__."""
    namespace: dict[str, Any] = {}
    exec("from vendorguard import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(vendorguard.__all__)


def test_version_is_a_string() -> None:
    """The package carries a __version__ string."""
    assert isinstance(vendorguard.__version__, str)
    assert vendorguard.__version__


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("error", SUBCLASSES, ids=lambda e: e.__name__)
def test_error_subclasses_vendor_error(error: type[Exception]) -> None:
    """Every guard error is a VendorError, itself an Exception."""
    assert issubclass(error, vg.VendorError)
    assert issubclass(vg.VendorError, Exception)


def test_vendor_timeout_error_is_a_timeout_error() -> None:
    """VendorTimeoutError is also a builtin TimeoutError."""
    assert issubclass(vg.VendorTimeoutError, TimeoutError)


@pytest.mark.parametrize(
    "error", [vg.VendorError, vg.VendorTimeoutError, vg.BulkheadFullError, vg.FallbackError],
    ids=lambda e: e.__name__)
def test_error_carries_vendor_and_operation(error: type[vg.VendorError]) -> None:
    """Each error carries .vendor and .operation and keeps its message."""
    exc = error("went wrong", vendor="acme", operation="op")
    assert (exc.vendor, exc.operation, str(exc)) == ("acme", "op", "went wrong")


def test_circuit_open_error_carries_retry_after() -> None:
    """CircuitOpenError carries .retry_after with .vendor and .operation."""
    exc = vg.CircuitOpenError("open", vendor="acme", operation="op", retry_after=12.5)
    assert (exc.vendor, exc.operation, exc.retry_after) == ("acme", "op", 12.5)


def test_raised_circuit_open_error_carries_names_and_retry_after(
        metrics: CollectorRegistry) -> None:
    """An open breaker's rejection names vendor and operation and says when to retry."""
    v = vg.Vendor("acme", registry=metrics, retry=None,
                  breaker=vg.Breaker(failures=1, reset_after=30.0))

    @v.guard("op")
    def broken() -> None:
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionRefusedError):
        broken()
    with pytest.raises(vg.CircuitOpenError) as info:
        broken()
    assert (info.value.vendor, info.value.operation) == ("acme", "op")
    assert 0 < info.value.retry_after <= 30.0


def test_raised_timeout_error_is_caught_as_timeout_error(metrics: CollectorRegistry) -> None:
    """A guard's timeout can be caught with the builtin TimeoutError and names the call."""
    v = vg.Vendor("acme", registry=metrics, retry=None, timeout=vg.Timeout(attempt=0.02))

    @v.guard("op")
    async def slow() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError) as info:
        asyncio.run(slow())
    assert isinstance(info.value, vg.VendorTimeoutError)
    assert (info.value.vendor, info.value.operation) == ("acme", "op")


def test_raised_bulkhead_full_error_carries_names(metrics: CollectorRegistry) -> None:
    """A call refused by a full bulkhead raises BulkheadFullError naming the call."""
    v = vg.Vendor("acme", registry=metrics, bulkhead=vg.Bulkhead(max_concurrent=1))
    gate = Gate()
    hold = v.guard("op")(gate)
    with held(hold, gate), pytest.raises(vg.BulkheadFullError) as info:
        hold()
    assert (info.value.vendor, info.value.operation) == ("acme", "op")


def test_retries_exhausted_raise_vendor_exception_unchanged(metrics: CollectorRegistry) -> None:
    """After the last attempt the vendor's own exception is raised, not a wrapper."""
    v = vg.Vendor("acme", registry=metrics, retry=vg.Retry(attempts=2))
    exc = ConnectionRefusedError("down")

    @v.guard("op")
    def broken() -> None:
        raise exc

    with vg.testing_mode(), pytest.raises(ConnectionRefusedError) as info:
        broken()
    assert info.value is exc
    assert not isinstance(info.value, vg.VendorError)


# -- imports ----------------------------------------------------------------------------------


def test_core_imports_no_vendor_sdk() -> None:
    """Importing vendorguard loads no vendor SDK (they are optional extras)."""
    code = ("import vendorguard, sys; print(sorted(m for m in sys.modules if m.split('.')[0] "
            f"in {sorted(VENDOR_SDKS)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=Path(vendorguard.__file__).parent.parent)
    loaded = ast.literal_eval(out.stdout.strip())
    assert loaded == [], f"vendor SDKs imported: {sorted({m.split('.')[0] for m in loaded})}"
