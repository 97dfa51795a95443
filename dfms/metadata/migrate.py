"""Numbered SQL migrations, each with an up and a down.

Files live beside this module as ``NNNN_name.up.sql`` / ``NNNN_name.down.sql``.
Each migration runs in its own transaction together with its row in
``schema_migrations``, under an advisory lock so two runners never interleave.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from dfms.errors import MigrationError
from dfms.metadata.db import Connection

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")
# Arbitrary constant: the advisory-lock key all migration runners share.
_LOCK_KEY = 0x0DF5_0001

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    up_sql: str
    down_sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_sql.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    version: int
    name: str
    applied: bool
    checksum_ok: bool


def discover() -> list[Migration]:
    files: dict[tuple[int, str], dict[str, str]] = {}
    for entry in resources.files("dfms.metadata.migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match:
            key = (int(match.group(1)), match.group(2))
            files.setdefault(key, {})[match.group(3)] = entry.read_text(encoding="utf-8")
    migrations = []
    for (version, name), parts in sorted(files.items()):
        if set(parts) != {"up", "down"}:
            raise MigrationError(f"migration {version:04d}_{name} needs both .up.sql and .down.sql")
        migrations.append(Migration(version, name, parts["up"], parts["down"]))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {versions}")
    return migrations


async def _applied(conn: Connection) -> dict[int, str]:
    await conn.execute(_CREATE_TABLE)
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def status(conn: Connection) -> list[MigrationStatus]:
    applied = await _applied(conn)
    return [MigrationStatus(m.version, m.name, m.version in applied,
                            applied.get(m.version, m.checksum) == m.checksum)
            for m in discover()]


async def _locked(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)


async def migrate_up(conn: Connection, target: int | None = None) -> list[Migration]:
    """Apply pending migrations up to ``target`` (all by default); returns those applied."""
    await _locked(conn)
    try:
        applied = await _applied(conn)
        done: list[Migration] = []
        for m in discover():
            if m.version in applied or (target is not None and m.version > target):
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.up_sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)", m.version, m.name, m.checksum)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}") from exc
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def migrate_down(conn: Connection, steps: int = 1) -> list[Migration]:
    """Revert the newest ``steps`` applied migrations; returns those reverted."""
    await _locked(conn)
    try:
        applied = await _applied(conn)
        by_version = {m.version: m for m in discover()}
        reverted: list[Migration] = []
        for version in sorted(applied, reverse=True)[:steps]:
            m = by_version.get(version)
            if m is None:
                raise MigrationError(f"applied migration {version:04d} has no file to revert it")
            try:
                async with conn.transaction():
                    await conn.execute(m.down_sql)
                    await conn.execute("DELETE FROM schema_migrations WHERE version = $1",
                                       version)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"reverting {m.version:04d}_{m.name} failed: {exc}") from exc
            reverted.append(m)
        return reverted
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
