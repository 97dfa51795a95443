"""`dfms nodes register / list` and `dfms keys generate --if-missing`: what a deployment
runs on every start, against the real cluster.

New nodes are registered only in a scratch database of the session PostgreSQL (with a
real S3 node of the cluster as their endpoint): a node added to the shared ring would
move replicas under every other test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from dfms.auth.share_tokens import KEY_FILE
from dfms.keys import CURRENT_FILE
from dfms.metadata import migrate
from dfms.ring import store as ring_store
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

TIMEOUT_S = 60


def dfms(cluster: ClusterHandle, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI against the cluster's config (``env`` overrides some of it)."""
    return subprocess.run(
        [sys.executable, "-m", "dfms", *args, "--data-dir", str(cluster.data_dir)],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
        env={**os.environ, **(env or {})})


async def adfms(cluster: ClusterHandle, *args: str,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(dfms, cluster, *args, env=env)


def table(stdout: str) -> dict[str, dict[str, str]]:
    header, *rows = stdout.splitlines()
    names = header.lower().split()
    return {cells[0]: dict(zip(names, cells, strict=True))
            for cells in (row.split() for row in rows) if len(cells) == len(names)}


# --- against the session cluster (nothing changes) -------------------------------------------

async def test_nodes_list_shows_every_node_of_the_ring(cluster: ClusterHandle,
                                                       pg: asyncpg.Connection) -> None:
    result = await adfms(cluster, "nodes", "list")
    assert result.returncode == 0, result.stderr
    listed = table(result.stdout)
    ring = await ring_store.load_latest(pg)
    assert ring is not None
    for node in cluster.s3_nodes:
        row = listed[node["id"]]
        assert (row["endpoint"], row["zone"], row["weight"]) == (node["endpoint"],
                                                                 node["zone"], "1")
        assert row["state"] == "active" and row["ring"] == "active"
        assert row["health"] in ("healthy", "suspect", "down", "unknown")
    assert result.stdout.splitlines()[-1] == f"ring epoch {ring.epoch}"


# What registering could change; the health monitor's probes update the rest meanwhile.
REGISTERED = ("SELECT endpoint, bucket, zone, weight, admin_state, created_at FROM nodes "
              "WHERE id = $1")


async def test_registering_a_known_node_changes_nothing(cluster: ClusterHandle,
                                                        pg: asyncpg.Connection) -> None:
    node = cluster.s3_nodes[0]
    epoch = (await ring_store.load_latest(pg)).epoch  # type: ignore[union-attr]
    before = await pg.fetchrow(REGISTERED, node["id"])
    same = await adfms(cluster, "nodes", "register", node["id"], "--endpoint",
                       node["endpoint"], "--zone", node["zone"])
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith(f"node {node['id']}: already registered (")
    assert "not changed" in same.stdout and same.stderr == ""
    # Other values for a known id are reported, and still not applied.
    other = await adfms(cluster, "nodes", "register", node["id"], "--endpoint",
                        "http://127.0.0.1:1", "--zone", "zone-x", "--weight", "2")
    assert other.returncode == 0, other.stderr
    assert "already registered" in other.stdout
    assert f"warning: node {node['id']} is registered with another endpoint" in other.stderr
    assert f"zone {node['zone']} (given: zone-x)" in other.stderr
    assert await pg.fetchrow(REGISTERED, node["id"]) == before
    assert (await ring_store.load_latest(pg)).epoch == epoch  # type: ignore[union-attr]


def test_keys_if_missing_keeps_the_cluster_keys(cluster: ClusterHandle) -> None:
    keys_dir = Path(cluster.config.auth.keys_dir)
    current = (keys_dir / CURRENT_FILE).read_text()
    secret = (keys_dir / KEY_FILE).read_bytes()  # the gateway created it at start
    pems = sorted(keys_dir.glob("*.pem"))
    result = dfms(cluster, "keys", "generate", "--if-missing")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("present, kept") == 2
    assert current.strip() in result.stdout
    assert (keys_dir / CURRENT_FILE).read_text() == current
    assert (keys_dir / KEY_FILE).read_bytes() == secret
    assert sorted(keys_dir.glob("*.pem")) == pems


# --- new nodes: in a scratch database ------------------------------------------------------

@pytest.fixture
async def scratch(cluster: ClusterHandle) -> AsyncIterator[tuple[dict[str, str],
                                                                 asyncpg.Connection]]:
    """(environment pointing the CLI at a migrated scratch database, a connection to it)."""
    admin = await asyncpg.connect(cluster.postgres_dsn)
    name = f"dfms_nodes_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = cluster.postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(dsn)
    await migrate.migrate_up(conn)
    try:
        yield {"DFMS_POSTGRES__DSN": dsn}, conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_register_adds_new_ids_once_each(
        cluster: ClusterHandle, scratch: tuple[dict[str, str], asyncpg.Connection]) -> None:
    env, conn = scratch
    endpoint, bucket = cluster.s3_nodes[0]["endpoint"], cluster.config.s3.bucket
    first = await adfms(cluster, "nodes", "register", "store-1", "--endpoint", endpoint + "/",
                        "--zone", "rack-1", "--local-data-dir", "/srv/store-1", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == (f"node store-1: registered ({endpoint}, zone rack-1, "
                                    "weight 1); ring epoch 1")
    # Several at once, as the compose file's jobs run: each gets its own epoch.
    results = await asyncio.gather(*(
        adfms(cluster, "nodes", "register", f"store-{i}", "--endpoint", endpoint, "--zone",
              f"rack-{i}", "--weight", "0.5", env=env) for i in (2, 3, 4)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    epochs = sorted(int(r.stdout.rsplit(" ", 1)[1]) for r in results)
    assert epochs == [2, 3, 4]
    again = await adfms(cluster, "nodes", "register", "store-1", "--endpoint", endpoint,
                        "--zone", "rack-1", env=env)
    assert again.returncode == 0 and "already registered" in again.stdout
    ring = await ring_store.load_latest(conn)
    assert ring is not None and ring.epoch == 4
    assert {(m.node_id, m.zone, m.weight) for m in ring.members} == {
        ("store-1", "rack-1", 1.0), ("store-2", "rack-2", 0.5), ("store-3", "rack-3", 0.5),
        ("store-4", "rack-4", 0.5)}
    rows = await conn.fetch("SELECT id, endpoint, bucket, data_dir FROM nodes ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (f"store-{i}", endpoint, bucket, "/srv/store-1" if i == 1 else None) for i in (1, 2, 3, 4)]
    listed = await adfms(cluster, "nodes", "list", env=env)
    assert sorted(table(listed.stdout)) == ["store-1", "store-2", "store-3", "store-4"]
    assert listed.stdout.splitlines()[-1] == "ring epoch 4"


async def test_a_removed_node_is_not_put_back(
        cluster: ClusterHandle, scratch: tuple[dict[str, str], asyncpg.Connection]) -> None:
    env, conn = scratch
    endpoint = cluster.s3_nodes[0]["endpoint"]
    args = ("nodes", "register", "gone-1", "--endpoint", endpoint, "--zone", "z")
    assert (await adfms(cluster, *args, env=env)).returncode == 0
    await conn.execute("UPDATE nodes SET admin_state = 'removed' WHERE id = 'gone-1'")
    result = await adfms(cluster, *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "already registered" in result.stdout and "removed" in result.stdout
    assert (await ring_store.load_latest(conn)).epoch == 1  # type: ignore[union-attr]


async def test_register_refuses_what_it_cannot_use(
        cluster: ClusterHandle, scratch: tuple[dict[str, str], asyncpg.Connection]) -> None:
    env, conn = scratch
    dead = await adfms(cluster, "nodes", "register", "dead-1", "--endpoint",
                       "http://127.0.0.1:1", "--zone", "z", env=env)
    assert dead.returncode == 1
    assert "dfms: error: node dead-1: the S3 endpoint http://127.0.0.1:1 did not answer" \
        in dead.stderr
    huge = await adfms(cluster, "nodes", "register", "huge-1", "--endpoint",
                       cluster.s3_nodes[0]["endpoint"], "--zone", "z", "--weight", "1e9",
                       env=env)
    assert huge.returncode == 1
    assert "the ring cannot take node 'huge-1'" in huge.stderr
    bad = await adfms(cluster, "nodes", "register", "Bad_Id", "--endpoint", "http://h",
                      "--zone", "z", env=env)
    assert bad.returncode == 2 and "argument ID: must be 1-63 lowercase" in bad.stderr
    assert await conn.fetchval("SELECT count(*) FROM nodes") == 0
    assert await ring_store.load_latest(conn) is None
    empty = await adfms(cluster, "nodes", "list", env=env)
    assert empty.returncode == 0 and empty.stdout.splitlines()[-1].startswith("no ring yet")
