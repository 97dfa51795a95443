"""The Grafana dashboards in observability/grafana/dashboards/: the five the operators'
issue asks for, each a valid current-schema dashboard whose panels have units, whose
template variables are defined and used, and whose layout fits the grid.
tests/unit/test_deploy.py checks their metrics and data sources; the integration test
tests/integration/test_observability.py runs every query against a real Prometheus."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.grafana import (
    BUILTINS,
    dashboards,
    panel_queries,
    template_values,
    to_promql,
    variable_queries,
)

TITLES = {"DFMS cluster overview", "DFMS gateway", "DFMS data plane", "DFMS consistency",
          "DFMS nodes"}
GRID_WIDTH = 24
Dashboard = dict[str, Any]


def variables_used(dashboard: Dashboard) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {m.group(1) or m.group(2) for e in exprs
            for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", e)}


def layout_problems(dashboard: Dashboard) -> list[str]:
    problems, cells = [], {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        if g["x"] < 0 or g["x"] + g["w"] > GRID_WIDTH or g["w"] <= 0 or g["h"] <= 0:
            problems.append(f"{p['title']!r}: outside the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{p['title']!r} overlaps {cells[(x, y)]!r}")
                cells[(x, y)] = p["title"]
    return sorted(set(problems))


def panel_problems(dashboard: Dashboard) -> list[str]:
    problems = []
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids repeat")
    for p in dashboard["panels"]:
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{p['title']!r}: no unit")
        if not p.get("description"):
            problems.append(f"{p['title']!r}: no description")
        if not p.get("targets"):
            problems.append(f"{p['title']!r}: no query")
    return problems


def test_the_five_dashboards_exist_with_distinct_uids() -> None:
    found = dashboards()
    assert {d["title"] for d in found.values()} == TITLES
    uids = [d["uid"] for d in found.values()]
    assert len(uids) == len(set(uids))
    assert all(d["schemaVersion"] >= 39 and "dfms" in d["tags"] for d in found.values())


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_is_well_formed(name: str) -> None:
    dashboard = dashboards()[name]
    assert panel_problems(dashboard) == []
    assert layout_problems(dashboard) == []
    defined = set(template_values(dashboard))
    used = variables_used(dashboard) - set(BUILTINS)
    assert used <= defined, f"undefined variables: {used - defined}"
    assert defined <= used, f"variables no panel uses: {defined - used}"
    assert set(variable_queries(dashboard)) == {f"variable {v}" for v in defined}


def test_detail_dashboards_filter_by_node_or_service() -> None:
    by_title = {d["title"]: d for d in dashboards().values()}
    assert "node" in template_values(by_title["DFMS nodes"])
    assert "node" in template_values(by_title["DFMS data plane"])
    assert "service" in template_values(by_title["DFMS consistency"])
    assert {"instance", "route"} <= set(template_values(by_title["DFMS gateway"]))


def test_queries_become_runnable_promql() -> None:
    assert to_promql('rate(x{node=~"$node", a="${b:regex}"}[$__rate_interval])',
                     {"node": ".*", "b": "v"}) == 'rate(x{node=~".*", a="v"}[1m])'
    assert to_promql('label_replace(x, "c", "${1}", "s", "(.)")', {}) == \
        'label_replace(x, "c", "${1}", "s", "(.)")'
    dash = {"templating": {"list": [{"name": "node", "type": "query", "query": {
        "query": "label_values(dfms_node_health, node)"}}]},
        "panels": [{"title": "t", "targets": [{"refId": "A", "expr": 'x{node=~"$node"}'}],
                    "panels": [{"title": "inner", "targets": [{"refId": "B", "expr": "y"}]}]}]}
    assert panel_queries(dash) == {"t A": 'x{node=~".*"}', "inner B": "y"}
    assert variable_queries(dash) == {"variable node": "dfms_node_health"}


def test_the_checks_find_problems() -> None:
    bad = {"panels": [
        {"id": 1, "title": "a", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8},
         "targets": [{"expr": "x"}], "fieldConfig": {"defaults": {}}, "description": "d"},
        {"id": 1, "title": "b", "gridPos": {"x": 6, "y": 4, "w": 20, "h": 8}, "targets": []}]}
    assert panel_problems(bad) == ["panel ids repeat", "'a': no unit", "'b': no unit",
                                   "'b': no description", "'b': no query"]
    assert layout_problems(bad) == ["'b' overlaps 'a'", "'b': outside the grid"]
