"""The monitoring bundle: dashboard and alert rules use real metric names, alerts follow the
mixin conventions and pass their promtool tests, and ``vendorguard monitoring export`` writes
the bundle out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import vendorguard as vg
from tests.services import REQUIRE_SERVICES_ENV, require_binary
from vendorguard import cli
from vendorguard.telemetry.metrics import families

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "vendorguard.json"
RULES = MONITORING / "alerts" / "vendorguard.rules.yml"
ALERT_TESTS = MONITORING / "tests" / "alerts_test.yml"
BUNDLE = ("alerts/vendorguard.rules.yml", "dashboards/vendorguard.json",
          "tests/alerts_test.yml")

REQUIRED_ALERTS = ("VendorCircuitOpen", "VendorErrorRatioHigh", "VendorLatencyHigh",
                   "VendorFallbacksSustained", "VendorGuardAbandonedCalls")
METRIC = re.compile(r"\bvendorguard_[a-z0-9_]+")


# -- helpers -------------------------------------------------------------------------------

def exported_names() -> set[str]:
    """Sample names a registry exposes after guarded calls, an outbox delivery and a flag
    vendor's data age."""
    reg = CollectorRegistry()
    vendor = vg.Vendor("x", registry=reg, retry=None)

    @vendor.guard("op")
    def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("vendor down")
        return "ok"

    call(False)
    with pytest.raises(ConnectionError):
        call(True)
    with tempfile.TemporaryDirectory() as tmp:  # the outbox's series exist once one is in use
        outbox = vg.Outbox(os.path.join(tmp, "outbox.db"), registry=reg)
        outbox.register("x", "op", lambda payload: None)
        outbox.enqueue("x", "op", {"n": 1})
        outbox.drain()
        outbox.close()
    families(reg).flag_data_age.labels("x").set(0)  # set by the flag vendor integrations
    text = generate_latest(reg).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_exprs() -> list[str]:
    return [value for key, value in walk(dashboard()) if key == "expr"]


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def panel_exprs(panel: dict[str, Any]) -> str:
    return "\n".join(t["expr"] for t in panel["targets"])


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def alert_blocks() -> dict[str, dict[str, Any]]:
    """Each alerting rule, by alert name."""
    return {rule["alert"]: rule for group in rule_groups() for rule in group["rules"]
            if "alert" in rule}


def alert_rule_tests() -> list[tuple[str, bool]]:
    """(alertname, expects alerts) for every ``alert_rule_test`` case of the promtool tests."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    return [(case["alertname"], bool(case.get("exp_alerts")))
            for test in tests for case in test.get("alert_rule_test", [])]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)


# -- metric names --------------------------------------------------------------------------

def test_exported_names_are_exposition_names() -> None:
    """The reference set holds exposition names (_total, _bucket), not family names."""
    names = exported_names()
    assert {"vendorguard_calls_total", "vendorguard_call_duration_seconds_bucket",
            "vendorguard_circuit_state", "vendorguard_abandoned_calls"} <= names
    assert "vendorguard_calls" not in names


@pytest.mark.parametrize("path", [DASHBOARD, RULES, ALERT_TESTS],
                         ids=["dashboard", "rules", "alert-tests"])
def test_bundle_uses_only_exported_metric_names(path: Path) -> None:
    """Every vendorguard_* name in the bundle is a sample name the library really exports."""
    used = set(METRIC.findall(path.read_text()))
    assert used, f"no vendorguard metric referenced in {path.name}"
    assert sorted(used - exported_names()) == []


# -- alert rules ---------------------------------------------------------------------------

def test_rules_have_one_group_named_vendorguard() -> None:
    """The rules file holds exactly one rule group, ``vendorguard``."""
    assert [group["name"] for group in rule_groups()] == ["vendorguard"]


def test_required_alerts_exist() -> None:
    """The five alerts the runbook documents are all defined."""
    assert set(REQUIRED_ALERTS) <= set(alert_blocks())


def test_alert_names_are_camel_case() -> None:
    """Alert names follow the mixin convention: CamelCase."""
    names = list(alert_blocks())
    assert names
    assert [n for n in names if not re.fullmatch(r"(?:[A-Z][a-z0-9]+)+", n)] == []


@pytest.mark.parametrize("alert", REQUIRED_ALERTS)
def test_alert_has_severity_summary_and_description(alert: str) -> None:
    """Each alert has a severity label and summary/description annotations naming the vendor."""
    rule = alert_blocks()[alert]
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    for annotation in ("summary", "description"):
        assert "{{ $labels.vendor }}" in rule["annotations"][annotation]


@pytest.mark.parametrize("alert", REQUIRED_ALERTS)
def test_alert_has_firing_and_quiet_unit_tests(alert: str) -> None:
    """The promtool tests check each alert both firing and staying quiet."""
    cases = alert_rule_tests()
    assert (alert, True) in cases
    assert (alert, False) in cases


@pytest.mark.services
def test_promtool_check_rules() -> None:
    """promtool accepts the rules file."""
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(REQUIRED_ALERTS)} rules found" in result.stdout


@pytest.mark.services
def test_promtool_test_rules() -> None:
    """The alert unit tests pass under promtool (run from elsewhere: paths are file-relative)."""
    result = promtool("test", "rules", str(ALERT_TESTS), cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- dashboard -----------------------------------------------------------------------------

def test_dashboard_identity() -> None:
    """The dashboard is JSON with a fixed uid and a current schema version."""
    board = dashboard()
    assert board["uid"] == "vendorguard"
    assert board["schemaVersion"] >= 39
    assert board["title"]


def test_dashboard_datasource_variable() -> None:
    """A ``datasource`` variable selects the Prometheus data source."""
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "datasource"]
    assert (var["type"], var["query"]) == ("datasource", "prometheus")


def test_dashboard_vendor_variable() -> None:
    """A multi-value ``vendor`` variable with All lists the vendors seen in calls_total."""
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "vendor"]
    assert var["type"] == "query"
    assert var["definition"] == "label_values(vendorguard_calls_total, vendor)"
    assert var["query"]["query"] == var["definition"]
    assert var["multi"] is True
    assert var["includeAll"] is True


def test_dashboard_repeats_a_row_per_vendor() -> None:
    """One row is repeated for every selected vendor."""
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    assert [r for r in rows if r.get("repeat") == "vendor"]


def test_dashboard_uses_only_the_datasource_variable() -> None:
    """No data source is hard-coded: all refer to ${datasource} (but Grafana's own annotations)."""
    refs = [value for key, value in walk(dashboard()) if key == "datasource"]
    assert refs
    assert [r for r in refs if r != {"type": "prometheus", "uid": "${datasource}"}
            and r != {"type": "grafana", "uid": "-- Grafana --"}] == []


def test_dashboard_exprs_filter_by_vendor() -> None:
    """Every metric selector in the dashboard is restricted to the selected vendors."""
    exprs = dashboard_exprs()
    assert exprs
    selectors = re.findall(r"\bvendorguard_[a-z0-9_]+(\{[^}]*\})?", "\n".join(exprs))
    assert selectors
    assert [s for s in selectors if 'vendor=~"$vendor"' not in s] == []


def _has(fragment: str) -> Callable[[dict[str, Any]], bool]:
    return lambda panel: fragment in panel_exprs(panel)


REQUIRED_PANELS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "call rate by outcome": ("timeseries", _has(
        'sum by (outcome) (rate(vendorguard_calls_total{vendor=~"$vendor"}[$__rate_interval]))')),
    "error ratio": ("timeseries", lambda p: (
        'outcome=~"error|timeout|rejected"' in panel_exprs(p)
        and "caller_error" not in panel_exprs(p) and "/" in panel_exprs(p))),
    "latency p50/p95/p99": ("timeseries", lambda p: all(
        f"histogram_quantile({q}, sum by (le) (rate(vendorguard_call_duration_seconds_bucket"
        in panel_exprs(p) for q in ("0.5", "0.95", "0.99"))),
    "circuit breaker state": ("state-timeline", lambda p: (
        "vendorguard_circuit_state" in panel_exprs(p) and "== 1" in panel_exprs(p))),
    "fallbacks by reason": ("timeseries", _has(
        "sum by (reason) (rate(vendorguard_fallbacks_total")),
    "retries by reason and blocked": ("timeseries", lambda p: (
        "sum by (reason) (rate(vendorguard_retries_total" in panel_exprs(p)
        and "vendorguard_retries_blocked_total" in panel_exprs(p))),
    "in flight and abandoned": ("timeseries", lambda p: (
        "vendorguard_calls_in_flight" in panel_exprs(p)
        and "vendorguard_abandoned_calls" in panel_exprs(p))),
}


@pytest.mark.parametrize("name", list(REQUIRED_PANELS))
def test_dashboard_has_panel(name: str) -> None:
    """The per-vendor row has each required panel, of the right type."""
    kind, matches = REQUIRED_PANELS[name]
    board = dashboard()["panels"]
    (start,) = [i for i, p in enumerate(board) if p.get("repeat") == "vendor"]
    row = [p for p in board[start + 1:] if p["type"] != "row"]
    found = [p for p in row if matches(p)]
    assert found, f"no panel for {name}"
    assert found[0]["type"] == kind


@pytest.mark.services
def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (variables substituted) as PromQL."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$vendor", ".*")
             for e in dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- vendorguard monitoring export ---------------------------------------------------------

def test_export_writes_the_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export creates DIR and copies each bundle file byte for byte, naming what it wrote."""
    dest = tmp_path / "out" / "monitoring"
    assert cli.main(["monitoring", "export", str(dest)]) == 0
    out = capsys.readouterr().out
    for rel in BUNDLE:
        assert (dest / rel).read_bytes() == (MONITORING / rel).read_bytes()
        assert str(dest / rel) in out


def test_export_ships_only_json_and_yaml(tmp_path: Path) -> None:
    """Only the bundle's data files are exported (no Python package files, no README)."""
    assert cli.main(["monitoring", "export", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                     if p.is_file())
    assert written == sorted(BUNDLE)


def test_export_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --force an existing file is left alone, nothing else is written, exit 1."""
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "vendorguard.rules.yml").write_text("mine")
    assert cli.main(["monitoring", "export", str(tmp_path)]) == 1
    assert (tmp_path / "alerts" / "vendorguard.rules.yml").read_text() == "mine"
    assert not (tmp_path / "dashboards").exists()
    assert "--force" in capsys.readouterr().err


def test_export_force_overwrites(tmp_path: Path) -> None:
    """With --force existing files are replaced by the bundle's."""
    (tmp_path / "alerts").mkdir()
    (tmp_path / "alerts" / "vendorguard.rules.yml").write_text("mine")
    assert cli.main(["monitoring", "export", "--force", str(tmp_path)]) == 0
    assert (tmp_path / "alerts" / "vendorguard.rules.yml").read_bytes() == RULES.read_bytes()


def test_export_into_a_file_fails(tmp_path: Path) -> None:
    """DIR naming an existing regular file is an error, exit 1."""
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["monitoring", "export", str(target)]) == 1
    assert target.read_text() == "x"


@pytest.mark.parametrize("argv", [[], ["monitoring"], ["monitoring", "export"],
                                  ["monitoring", "nope"]],
                         ids=["no-command", "no-action", "no-dir", "unknown-action"])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    """An incomplete or unknown command line is a usage error, exit 2."""
    assert cli.main(argv) == 2


def test_version_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == vg.__version__


def test_export_as_a_subprocess(tmp_path: Path) -> None:
    """``python -m vendorguard.cli monitoring export DIR`` works from another directory."""
    result = subprocess.run(
        [sys.executable, "-m", "vendorguard.cli", "monitoring", "export", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(tmp_path / "m").as_posix()
                  for p in (tmp_path / "m").rglob("*") if p.is_file()) == sorted(BUNDLE)


@pytest.mark.services
def test_exported_bundle_passes_its_promtool_tests(tmp_path: Path) -> None:
    """The exported copy is self-contained: its rule tests find its rules and pass."""
    assert cli.main(["monitoring", "export", str(tmp_path)]) == 0
    result = promtool("test", "rules", "tests/alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- tests/services.py ---------------------------------------------------------------------

def test_require_binary_returns_the_path() -> None:
    """An installed program's absolute path is returned."""
    assert Path(require_binary("sh")).is_absolute()


def test_require_binary_skips_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing program skips the test by default."""
    monkeypatch.delenv(REQUIRE_SERVICES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_binary("vendorguard-no-such-binary")


def test_require_binary_fails_when_services_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """With VENDORGUARD_REQUIRE_SERVICES=1 a missing program fails the test."""
    monkeypatch.setenv(REQUIRE_SERVICES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="VENDORGUARD_REQUIRE_SERVICES=1"):
        require_binary("vendorguard-no-such-binary")
