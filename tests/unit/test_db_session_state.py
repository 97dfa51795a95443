"""The gateway's pool skips asyncpg's session reset on release (dfms.metadata.db,
``session_reset=False``), which is sound only while no code leaves session state on a
pooled connection. This checks the sources for the statements that would."""

from __future__ import annotations

import re
from pathlib import Path

import dfms

ROOT = Path(dfms.__file__).parent
# Code that keeps session state on a connection of its own, never a pooled one: the
# migration runner's session advisory lock, the event relay's LISTEN connection.
OWN_CONNECTIONS = {"metadata/migrate.py", "events/relay.py"}
SESSION_STATE = {
    "session advisory lock": re.compile(r"pg_(try_)?advisory_lock(_shared)?\s*\(", re.I),
    "session setting": re.compile(r"""["']\s*SET\s+(?!LOCAL\b)"""),
    "set_config for the session": re.compile(r"set_config\([^)]*,\s*false\s*\)", re.I),
    "LISTEN": re.compile(r"""["']\s*LISTEN\b|add_listener\(""", re.I),
    "temporary table": re.compile(r"CREATE\s+(TEMP|TEMPORARY)\b", re.I),
    "prepared-statement or cursor by name": re.compile(r"""["']\s*(PREPARE|DECLARE)\s"""),
}


def test_no_code_on_a_pooled_connection_leaves_session_state() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in OWN_CONNECTIONS or "/proto/" in f"/{rel}":
            continue
        text = path.read_text()
        found += [f"{rel}: {what}" for what, pattern in SESSION_STATE.items()
                  if pattern.search(text)]
    assert not found, ("session state on a pooled connection; the gateway's pool does not "
                       f"reset sessions (dfms.metadata.db.create_pool): {found}")


def test_the_check_sees_what_it_looks_for() -> None:
    samples = {"session advisory lock": 'conn.execute("SELECT pg_advisory_lock($1)", k)',
               "session setting": 'conn.execute("SET work_mem = \'1GB\'")',
               "set_config for the session": "set_config('a', $1, false)",
               "LISTEN": "await conn.add_listener(channel, cb)",
               "temporary table": "CREATE TEMP TABLE t (x int)",
               "prepared-statement or cursor by name": '"DECLARE c CURSOR FOR SELECT 1"'}
    for what, text in samples.items():
        assert SESSION_STATE[what].search(text), what
    assert not SESSION_STATE["session setting"].search('"SET LOCAL work_mem = 1"')
    assert not SESSION_STATE["session advisory lock"].search("pg_advisory_xact_lock($1)")
