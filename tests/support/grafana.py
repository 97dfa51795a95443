"""The PromQL queries of the Grafana dashboards in observability/grafana/dashboards/,
as Prometheus's own HTTP API can run them (Grafana's variables filled in)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parents[2] / "observability" / "grafana" / "dashboards"

# What Grafana puts in for its built-in interval variables; a query API call has no
# panel width or time range, so fixed values stand in (1m holds several 5 s scrapes).
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m",
            "__range_s": "300", "__interval_ms": "15000"}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def template_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable as "All" selects it: a regex matching every value."""
    return {var["name"]: ".*" for var in dashboard.get("templating", {}).get("list", [])}


def to_promql(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with $var, ${var} and ${var:format} replaced; unknown ones are left."""
    values = {**BUILTINS, **variables}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def panel_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """"title refId" -> runnable PromQL, for every target of every panel (rows too)."""
    variables = template_values(dashboard)
    return {f"{panel.get('title', '?')} {target.get('refId', '?')}":
            to_promql(target["expr"], variables)
            for panel in _panels(dashboard.get("panels", []))
            for target in panel.get("targets", []) if target.get("expr")}


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """The PromQL behind each query variable (label_values(metric, label) -> metric)."""
    found = {}
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", text)
        if var.get("type") == "query" and m:
            found[f"variable {var['name']}"] = m.group(1)
    return found
