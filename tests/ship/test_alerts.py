"""The chart's alert rules with the real ``promtool``: syntax, and unit tests
(tests/ship/alerts_test.yaml) for every alert."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from .tools import alert_rules, need, run

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "alerts_test.yaml"


def write_rules(directory: Path, values: dict[str, object] | None = None) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(alert_rules(values), sort_keys=False))
    return path


def alert_names(rules: dict[str, object]) -> set[str]:
    groups = rules["groups"]
    assert isinstance(groups, list)
    return {r["alert"] for g in groups for r in g["rules"]}


def rule(rules: dict[str, Any], name: str) -> dict[str, Any]:
    """The rule of alert ``name`` (exactly one)."""
    (found,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == name]
    return dict(found)


def test_promtool_check_rules(tmp_path: Path) -> None:
    out = run([need("promtool"), "check", "rules", str(write_rules(tmp_path))]).stdout
    assert "SUCCESS: 7 rules found" in out, out


def test_promtool_unit_tests(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    res = run([need("promtool"), "test", "rules", UNIT_TESTS.name], cwd=tmp_path, check=False)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    names = alert_names(alert_rules())
    assert fired == names and quiet == names


def test_alerts_follow_their_values() -> None:
    values = {"metrics": {"prometheusRule": {
        "additionalAlertLabels": {"team": "data"},
        "alerts": {"queueStuck": {"oldestPendingSeconds": 60, "for": "1m", "severity": "critical"},
                   "operatorDown": {"enabled": False}}}},
        "fullnameOverride": "sk"}
    rules = alert_rules(values)
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert "SkiplockOperatorDown" not in by_name
    stuck = by_name["SkiplockQueueStuck"]
    assert "> 60\n" in stuck["expr"] and "[10m]" in stuck["expr"]
    assert stuck["for"] == "1m" and stuck["labels"] == {"severity": "critical", "team": "data"}
    assert 'up{job="sk-operator"}' in rule(alert_rules({"fullnameOverride": "sk"}), "SkiplockOperatorDown")["expr"]
    assert 'up{job="custom"}' in rule(alert_rules({"metrics": {"operatorJob": "custom"}}),
                                      "SkiplockOperatorDown")["expr"]


def test_the_gpu_alert_shares_the_unschedulable_values() -> None:
    """SkiplockGpuPodsUnschedulable (GPU pools only) goes with podsUnschedulable's settings."""
    custom = {"metrics": {"prometheusRule": {"alerts": {"podsUnschedulable": {"for": "30m", "severity": "critical"}}}}}
    generic, gpu = (rule(alert_rules(custom), n) for n in ("SkiplockPodsUnschedulable", "SkiplockGpuPodsUnschedulable"))
    assert gpu["for"] == generic["for"] == "30m" and gpu["labels"] == generic["labels"] == {"severity": "critical"}
    assert "skiplock_operator_pool_gpus_per_pod" in gpu["expr"] and "gpus_per_pod" not in generic["expr"]
    off = {"metrics": {"prometheusRule": {"alerts": {"podsUnschedulable": {"enabled": False}}}}}
    assert not {"SkiplockPodsUnschedulable", "SkiplockGpuPodsUnschedulable"} & alert_names(alert_rules(off))


def test_every_alert_has_a_runbook_section() -> None:
    doc = (HERE.parent.parent / "docs" / "observability.md").read_text().lower()
    for rule in alert_rules()["groups"][0]["rules"]:
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert f"### {anchor}" in doc.replace("`", ""), f"docs/observability.md has no section for {rule['alert']}"
