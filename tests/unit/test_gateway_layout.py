"""Domain logic stays out of the HTTP handlers (issue 12, finding 4).

Route modules share code through plain modules (``bodies``, ``serve``, ``commit``,
``folders``), never by importing each other; the admin handlers call the ring
membership service and hold no SQL and no ring logic; version locking lives in
``dfms.metadata.versions``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.source import parse_source

GATEWAY_DIR = Path(__file__).resolve().parents[2] / "dfms" / "gateway"
ROUTES = sorted(GATEWAY_DIR.glob("routes_*.py"))
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|FOR UPDATE)\b")


def imported_modules(path: Path) -> set[str]:
    tree = parse_source(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_there_are_route_modules() -> None:
    assert len(ROUTES) > 5


@pytest.mark.parametrize("path", ROUTES, ids=[p.name for p in ROUTES])
def test_route_modules_do_not_import_each_other(path: Path) -> None:
    others = {n for n in imported_modules(path) if re.search(r"\.routes_\w+$", n)}
    assert not others, f"{path.name} imports {sorted(others)}; share through a plain module"


@pytest.mark.parametrize("name", ["routes_admin.py", "routes_versions.py"])
def test_handlers_hold_no_sql(name: str) -> None:
    source = (GATEWAY_DIR / name).read_text(encoding="utf-8")
    assert not SQL.search(source), f"{name} holds SQL: {SQL.search(source)}"


def test_admin_handlers_leave_the_ring_to_the_membership_service() -> None:
    imported = imported_modules(GATEWAY_DIR / "routes_admin.py")
    assert "dfms.metadata.membership" in imported
    ring = {n for n in imported if n.startswith("dfms.ring")}
    # Only the ring's data type, to render a node's ring state; no builder, no store.
    assert ring <= {"dfms.ring", "dfms.ring.RingData"}, ring
    assert not {n for n in imported if n.startswith("dfms.storage")}
