"""The alert rules in observability/prometheus/alerts.yml, checked by promtool itself.

Every rule passes `promtool check rules`; its unit tests in observability/prometheus/tests/
pass `promtool test rules` and show it both firing and not firing; it has a summary, a
description and a runbook under its name in docs/operations.md. Debian's `prometheus`
package provides promtool (.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfms.observability_assets import alert_rules_path

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "observability" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
OPERATIONS = REPO / "docs" / "operations.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install --no-install-recommends prometheus "
                    "(.ci/run does it)")
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}


def evaluations(paths: list[Path]) -> dict[str, list[bool]]:
    """Alert name -> for each evaluation a unit test makes of it, whether it expects alerts."""
    found: dict[str, list[bool]] = {}
    for path in paths:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                found.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    return found


def runbooks(markdown: str) -> dict[str, str]:
    """Heading -> body of each `###` section under `## Runbooks`."""
    section = re.search(r"^## Runbooks\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if section is None:
        return {}
    parts = re.split(r"^### (.+)\n", section.group(1), flags=re.M)
    return {name.strip(): body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_rules_pass_promtool_check() -> None:
    result = run_promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool unit tests in observability/prometheus/tests/"
    result = run_promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    tested = evaluations(RULE_TESTS)
    problems = [f"{name}: no evaluation expecting it to fire" for name in alert_rules()
                if True not in tested.get(name, [])]
    problems += [f"{name}: no evaluation expecting it quiet" for name in alert_rules()
                 if False not in tested.get(name, [])]
    problems += [f"{name}: tested, but no such rule" for name in tested.keys() - alert_rules()]
    assert problems == []


def test_every_rule_has_summary_description_and_runbook() -> None:
    books = runbooks(OPERATIONS.read_text())
    problems = []
    for name, rule in alert_rules().items():
        annotations = rule.get("annotations", {})
        problems += [f"{name}: no {key}" for key in ("summary", "description")
                     if not str(annotations.get(key, "")).strip()]
        if not books.get(name):
            problems.append(f"{name}: no runbook section in docs/operations.md")
    problems += [f"runbook {name}: no such rule" for name in books.keys() - alert_rules()]
    assert problems == []


def test_a_broken_rule_fails_promtool(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text("groups:\n  - name: g\n    rules:\n"
                      "      - alert: A\n        expr: sum(rate(x[5m]) > \n")
    assert run_promtool("check", "rules", broken).returncode != 0


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    (tmp_path / "alerts.yml").write_text(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x > 1\n")
    case = tmp_path / "case.yml"
    case.write_text(yaml.safe_dump({
        "rule_files": ["alerts.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [{"series": "x", "values": "5x5"}],
                   "alert_rule_test": [{"eval_time": "3m", "alertname": "A",
                                        "exp_alerts": []}]}]}))
    assert run_promtool("test", "rules", case).returncode != 0


def test_coverage_and_runbook_checks_find_gaps(tmp_path: Path) -> None:
    case = tmp_path / "case.yml"
    case.write_text("tests:\n  - alert_rule_test:\n      - {alertname: A, exp_alerts: []}\n"
                    "      - {alertname: A, exp_alerts: [{exp_labels: {}}]}\n"
                    "      - {alertname: B}\n")
    assert evaluations([case]) == {"A": [False, True], "B": [False]}
    text = "## Runbooks\n\n### A\n\nDo this.\n\n### B\n\n## Trouble\n\n### C\n\nNot one.\n"
    assert runbooks(text) == {"A": "Do this.", "B": ""}


def test_production_template_passes_promtool_check_config(tmp_path: Path) -> None:
    """observability/prometheus/prometheus.yml, with its rule file at the repository's path
    instead of the container's."""
    doc = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert [Path(p).name for p in doc["rule_files"]] == [ALERTS.name]
    doc["rule_files"] = [str(ALERTS)]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(doc))
    result = run_promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_ships_the_rules_byte_for_byte() -> None:
    """An installed DFMS has no observability/ folder; it reads the packaged copy."""
    packaged = alert_rules_path()
    link = REPO / "dfms" / "observability_assets" / "alerts.yml"
    assert packaged.resolve() == link.resolve()
    assert link.is_symlink() and os.readlink(link) == "../../observability/prometheus/alerts.yml"
    assert packaged.read_bytes() == ALERTS.read_bytes()
