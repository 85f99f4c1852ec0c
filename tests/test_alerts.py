"""The Prometheus alert rules in deploy/prometheus/alerts.yml and their promtool unit tests.

``promtool check rules`` validates the rules, ``promtool test rules`` runs the cases in
tests/prometheus/alerts_test.yml, and the last test checks that every alert has at least one case
where it fires and one where it does not (promtool alone passes a case that names an alert the rule
file does not have, or an alert with no cases at all).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from debian import ensure_binary

REPO = Path(__file__).resolve().parents[1]
ALERTS = Path("deploy/prometheus/alerts.yml")
ALERT_TESTS = Path("tests/prometheus/alerts_test.yml")


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool (Debian package ``prometheus``), installed if missing and possible."""
    return ensure_binary("promtool", "prometheus")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool from the repo root, output (stdout and stderr) in ``stdout``."""
    return subprocess.run([promtool, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120, check=False)


def test_alert_rules_are_valid(promtool: str) -> None:
    proc = _promtool(promtool, "check", "rules", str(ALERTS))
    assert proc.returncode == 0, f"promtool check rules {ALERTS} failed:\n{proc.stdout}"


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    proc = _promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert proc.returncode == 0, f"promtool test rules {ALERT_TESTS} failed:\n{proc.stdout}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    rules = yaml.safe_load((REPO / ALERTS).read_text(encoding="utf-8"))
    cases = yaml.safe_load((REPO / ALERT_TESTS).read_text(encoding="utf-8"))

    assert [g["name"] for g in rules["groups"]] == ["kbsearch"]
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts, f"no alerts in {ALERTS}"
    assert len(alerts) == len(set(alerts)), f"duplicate alert names in {ALERTS}: {alerts}"

    # The test file must load the rule file under test (paths are relative to the test file).
    loaded = {((REPO / ALERT_TESTS).parent / f).resolve() for f in cases["rule_files"]}
    assert (REPO / ALERTS).resolve() in loaded, f"{ALERT_TESTS} rule_files {cases['rule_files']} miss {ALERTS}"

    firing: set[str] = set()
    quiet: set[str] = set()
    named: set[str] = set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test") or []:
            named.add(case["alertname"])
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])

    # A case for an alert that does not exist passes vacuously in promtool (it never fires).
    assert named <= set(alerts), f"cases name alerts that {ALERTS} does not define: {sorted(named - set(alerts))}"
    assert not [a for a in alerts if a not in firing], f"alerts with no firing case: {[a for a in alerts if a not in firing]}"
    assert not [a for a in alerts if a not in quiet], f"alerts with no non-firing case: {[a for a in alerts if a not in quiet]}"
