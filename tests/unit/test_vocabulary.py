"""One vocabulary: every shared name is defined in one module and used by name elsewhere.

The names are the chunk, replica and node admin states (``dfms.metadata.states``),
node health (``dfms.healthmon.state.Health``), and the Kafka topics and event types
(``dfms.events.topics``). The source tree is parsed, not imported, and a finding
names the file and line. Outside the defining modules, none of these may appear:

* an event type or topic as a string literal;
* a state as a quoted SQL literal (``state = 'live'``) in SQL text the code builds;
* a state as a string literal compared with (``x == "down"``), passed as an argument
  (``set_admin_state(conn, node, "removed")``), returned, or assigned to a
  module-level name (a second definition, like a ``REPLICA_BAD = ...`` copy).

Docstrings and comments may mention the names. A literal with the same spelling but
another meaning goes in ``ALLOWED``, with the reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from dfms.events import topics
from dfms.healthmon.state import Health
from dfms.metadata.states import AdminState, ChunkState, ReplicaState
from tests.support.source import parse_source

ROOT = Path(__file__).resolve().parents[2]
# The production packages (the five top-level folders are mapped to dfms.<name>).
SOURCE_ROOTS = ("dfms", "chunker", "ring", "replication", "gc", "healthmon")
GENERATED = ("dfms/proto/",)

STATE_HOMES = {
    "dfms/metadata/states.py": (ChunkState, ReplicaState, AdminState),
    "healthmon/state.py": (Health,),
}
STATES = {m.value for enums in STATE_HOMES.values() for enum in enums for m in enum}
EVENTS_HOME = "dfms/events/topics.py"
EVENT_NAMES = {value for name, value in vars(topics).items()
               if name.isupper() and isinstance(value, str)
               and re.fullmatch(r"[a-z]+\.[a-z_]+", value)}

# (file, literal): the same spelling with another meaning.
ALLOWED = {
    ("dfms/cli.py", "down"): "the `dfms migrate down` action",
    ("dfms/metadata/migrate.py", "down"): "a migration's down part",
    ("dfms/metadata/shares.py", "active"): "a share link's status",
    ("dfms/gateway/routes_shares.py", "ok"): "a share download's outcome (a metric label)",
}

_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE)\b")
_QUOTED = re.compile(r"'([a-z_]+)'")


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for top in SOURCE_ROOTS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(GENERATED):
                yield rel, parse_source(path.read_text(encoding="utf-8"), rel)


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _literals(node: ast.AST | None) -> Iterator[ast.Constant]:
    """The string constants ``node`` is, holds as a tuple, list or set, or may be
    (either branch of ``a if c else b``)."""
    if _str(node) is not None:
        assert isinstance(node, ast.Constant)
        yield node
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for item in node.elts:
            yield from _literals(item)


def _is_metric_labels(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "labels"


def _state_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """State literals used as values: compared, passed, returned, or defined at module level."""
    for node in ast.walk(tree):
        candidates: list[ast.AST | None] = []
        if isinstance(node, ast.Compare):
            candidates = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and not _is_metric_labels(node):
            candidates = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.Return):
            candidates = [node.value]
        for candidate in candidates:
            for const in _literals(candidate):
                if const.value in STATES:
                    yield const.lineno, const.value
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            for const in _literals(stmt.value):
                if const.value in STATES:
                    yield const.lineno, const.value


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and _str(n.body[0].value) is not None}


def _sql_states(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Quoted state literals in SQL text (plain strings and the literal parts of f-strings)."""
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        text = _str(node)
        if text is None or id(node) in docstrings or not _SQL.search(text):
            continue
        for found in _QUOTED.finditer(text):
            if found.group(1) in STATES:
                assert isinstance(node, ast.Constant)
                yield node.lineno, found.group(1)


def _event_names(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        text = _str(node)
        if text is not None and text in EVENT_NAMES:
            assert isinstance(node, ast.Constant)
            yield node.lineno, text


def _findings() -> list[str]:
    found = []
    for rel, tree in _sources():
        hits: list[tuple[int, str, str]] = []
        if rel != EVENTS_HOME:
            hits += [(line, value, "event type/topic literal")
                     for line, value in _event_names(tree)]
        if rel not in STATE_HOMES:
            hits += [(line, value, "state literal") for line, value in _state_uses(tree)]
            hits += [(line, value, "state literal in SQL") for line, value in _sql_states(tree)]
        found += [f"{rel}:{line}: {what} {value!r}" for line, value, what in sorted(set(hits))
                  if (rel, value) not in ALLOWED]
    return found


def test_the_vocabulary_is_complete() -> None:
    assert {"dfms.files", "file.uploaded", "chunk.replica_bad",
            "node.health_changed"} <= EVENT_NAMES
    assert {"live", "condemned", "sweeping", "ok", "removed", "down"} <= STATES


def test_shared_names_are_used_by_name_outside_their_defining_module() -> None:
    findings = _findings()
    assert not findings, (
        "use the constants (dfms.metadata.states, dfms.healthmon.state.Health, "
        "dfms.events.topics) instead of these literals:\n" + "\n".join(findings))


def test_the_check_finds_what_it_is_for() -> None:
    tree = ast.parse(
        '"""Docs may say ``UPDATE chunks SET state = \'live\'``."""\n'
        'REPLICA_BAD = "chunk.replica_bad"\n'
        "_Q = \"UPDATE chunks SET state = 'sweeping' WHERE sha256 = $1\"\n"
        'def f(row, conn):\n'
        '    if row["health"] != "down":\n'
        '        return "missing"\n'
        '    return None if row else "corrupt"\n'
        '    set_admin_state(conn, "n1", "removed")\n'
        '    COUNTER.labels("ok").inc()\n')
    assert sorted(_event_names(tree)) == [(2, "chunk.replica_bad")]
    assert sorted(_sql_states(tree)) == [(3, "sweeping")]
    assert sorted(_state_uses(tree)) == [(5, "down"), (6, "missing"), (7, "corrupt"),
                                         (8, "removed")]
