"""The admin API against the real cluster: accounts, the cluster view, storage nodes.

Node tests never leave the shared ring changed: a node they add is removed again
(the ``ring_guard`` fixture checks that node-1..3 are still the active members
afterwards, and repairs the ring if a test failed half-way), and rows crafted
directly in PostgreSQL are deleted at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from dfms.chunkservice.client import ChunkClient
from dfms.ring import ACTIVE, RingBuilder, load_latest, save
from tests.support.api import PASSWORD, Api, ApiUser
from tests.support.cluster import ClusterHandle

MIB = 1024 * 1024
SHARED_NODES = {"node-1", "node-2", "node-3"}

Response = tuple[int, Any, Any]


def assert_error(resp: Response, status: int, code: str) -> dict[str, Any]:
    got, body, headers = resp
    assert got == status, body
    err = body["error"]
    assert err["code"] == code, err
    assert err["message"]
    assert err["request_id"] == headers["X-Request-Id"]
    return dict(err)


def new_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin_credentials(cluster: ClusterHandle) -> Iterator[tuple[str, str]]:
    """An admin account made the supported way: the CLI against the cluster database."""
    email = new_email("admin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    proc = subprocess.run(
        [sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), "admin",
         "create-user", "--admin", "--email", email, "--password", PASSWORD],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    yield email, proc.stdout.strip()


@pytest.fixture
async def admin(api: Api, admin_credentials: tuple[str, str]) -> ApiUser:
    email, user_id = admin_credentials
    status, body, _ = await api.request("POST", "/auth/login",
                                        json={"email": email, "password": PASSWORD})
    assert status == 200, body
    tokens = body["tokens"]
    assert body["user"]["id"] == user_id and body["user"]["role"] == "admin"
    return ApiUser(user_id, email, PASSWORD, tokens["access_token"], tokens["refresh_token"])


async def _shared_ring_ok(pg: asyncpg.Connection) -> bool:
    ring = await load_latest(pg)
    assert ring is not None
    active = {m.node_id for m in ring.members if m.state == ACTIVE}
    return active == SHARED_NODES and {m.node_id for m in ring.members} == SHARED_NODES


async def chunk_service_in_step(cluster: ClusterHandle, epoch: int, gone: set[str]) -> None:
    """Wait until the chunk service uses ring ``epoch`` and no longer lists ``gone``
    (it re-reads both every node_refresh_interval_s), so later tests place chunks
    on the shared ring only."""
    refresh_s = cluster.config.chunk_service.node_refresh_interval_s
    deadline = asyncio.get_running_loop().time() + 4 * refresh_s + 10
    async with ChunkClient(cluster.chunk_target) as client:
        while True:
            stat = await client.stat()
            if stat.ring_epoch == epoch and not gone & {n.node_id for n in stat.nodes}:
                return
            assert asyncio.get_running_loop().time() < deadline, (
                f"chunk service still at ring epoch {stat.ring_epoch} (want {epoch}), "
                f"nodes {[n.node_id for n in stat.nodes]}")
            await asyncio.sleep(0.25)


@pytest.fixture
async def ring_guard(pg: asyncpg.Connection, cluster: ClusterHandle) -> AsyncIterator[list[str]]:
    """Yields a list the test appends its node ids to. Afterwards those nodes are out of
    the ring, their rows are deleted (when nothing refers to them), the shared ring is
    node-1..3, all active, and the chunk service has caught up with all of it."""
    assert await _shared_ring_ok(pg)
    epoch0 = (await load_latest(pg)).epoch  # type: ignore[union-attr]
    added: list[str] = []
    yield added
    ring = await load_latest(pg)
    assert ring is not None
    stray = [m.node_id for m in ring.members if m.node_id in added]
    if stray:  # the test failed half-way: put the ring back the way it was
        builder = RingBuilder(ring)
        for node_id in stray:
            builder.remove_node(node_id)
        ring = builder.build()
        await save(pg, ring)
    if ring.epoch != epoch0:
        await chunk_service_in_step(cluster, ring.epoch, set())
    if added:
        # Test nodes leave no trace (other suites expect exactly node-1..3 rows);
        # one that replica or repair rows still name stays, marked removed.
        await pg.execute("UPDATE nodes SET admin_state = 'removed' WHERE id = ANY($1)", added)
        await pg.execute(
            "DELETE FROM nodes n WHERE id = ANY($1) "
            "AND NOT EXISTS (SELECT 1 FROM chunk_replicas r WHERE r.node_id = n.id) "
            "AND NOT EXISTS (SELECT 1 FROM repair_queue q WHERE q.node_id = n.id)", added)
        await chunk_service_in_step(cluster, ring.epoch, set(added))
    assert not stray, f"nodes {stray} were left in the ring"
    assert await _shared_ring_ok(pg)
    assert await pg.fetchval("SELECT count(*) FROM nodes WHERE id = ANY($1)", added) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_node_id() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def cluster_view(api: Api, admin: ApiUser) -> dict[str, Any]:
    status, body, _ = await api.request("GET", "/admin/cluster", admin)
    assert status == 200, body
    return dict(body)


# --- access -------------------------------------------------------------------------------

SOME_ID = "6f1c1d2e-0000-4000-8000-000000000001"
ENDPOINTS = [
    ("GET", "/admin/users", None),
    ("GET", f"/admin/users/{SOME_ID}", None),
    ("PATCH", f"/admin/users/{SOME_ID}", {"role": "admin"}),
    ("GET", "/admin/cluster", None),
    ("GET", "/admin/nodes", None),
    ("POST", "/admin/nodes", {"id": "nope", "endpoint": "http://127.0.0.1:1", "zone": "z"}),
    ("GET", "/admin/nodes/node-1", None),
    ("POST", "/admin/nodes/node-1/drain", None),
    ("DELETE", "/admin/nodes/node-1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
async def test_every_admin_route_refuses_users_and_anonymous(
        api: Api, user: ApiUser, method: str, path: str, body: Any) -> None:
    kw = {"json": body} if body is not None else {}
    err = assert_error(await api.request(method, path, None, **kw), 401, "unauthorized")
    assert err["message"]
    assert_error(await api.request(method, path, user, **kw), 403, "forbidden")


# --- users --------------------------------------------------------------------------------

async def test_user_list_shows_usage_and_paginates(api: Api, admin: ApiUser,
                                                   cluster: ClusterHandle) -> None:
    tag = uuid.uuid4().hex[:10]
    first = await api.register(email=f"lk{tag}_a@example.com")
    second = await api.register(email=f"lk{tag}xa@example.com")
    data = os.urandom(MIB + 123)
    status, up = await api.upload(first, "a.bin", data)
    assert status == 201, up
    status, up2 = await api.upload(first, "b.bin", b"small")
    assert status == 201, up2
    status, _, _ = await api.request("DELETE", f"/files/{up2['id']}", first)
    assert status == 204

    status, body, _ = await api.request("GET", "/admin/users", admin, params={"q": f"lk{tag}"})
    assert status == 200, body
    assert body["total"] == 2 and body["page"] == 1 and body["per_page"] >= 2
    by_id = {u["id"]: u for u in body["items"]}
    assert list(by_id) == [first.id, second.id]  # oldest first
    a = by_id[first.id]
    assert set(a) >= {"id", "email", "display_name", "role", "is_active", "quota_bytes",
                      "effective_quota_bytes", "used_bytes", "file_count", "created_at"}
    # Usage counts every version of every file, the trashed one too.
    assert a["used_bytes"] == len(data) + len(b"small")
    assert a["file_count"] == 1 and a["trashed_file_count"] == 1
    assert (a["role"], a["is_active"], a["quota_bytes"]) == ("user", True, None)
    assert a["effective_quota_bytes"] == cluster.config.lifecycle.default_quota_bytes
    assert by_id[second.id]["used_bytes"] == 0 and by_id[second.id]["file_count"] == 0
    assert "password_hash" not in a

    # The search is a case-insensitive substring; LIKE wildcards are taken literally.
    status, body, _ = await api.request("GET", "/admin/users", admin,
                                        params={"q": f"LK{tag}_A"})
    assert status == 200 and [u["id"] for u in body["items"]] == [first.id], body
    for q in (f"lk{tag}%a", f"lk{tag}\\", "%", f"{tag}_@"):
        status, body, _ = await api.request("GET", "/admin/users", admin, params={"q": q})
        assert status == 200 and body["total"] == 0 and body["items"] == [], (q, body)

    status, body, _ = await api.request("GET", "/admin/users", admin,
                                        params={"q": f"lk{tag}", "per_page": 1, "page": 2})
    assert status == 200, body
    assert body["total"] == 2 and [u["id"] for u in body["items"]] == [second.id]
    status, body, _ = await api.request("GET", "/admin/users", admin,
                                        params={"q": f"lk{tag}", "per_page": 1, "page": 3})
    assert status == 200 and body["total"] == 2 and body["items"] == []
    for bad in ({"per_page": 0}, {"page": 0}, {"per_page": "x"}):
        assert_error(await api.request("GET", "/admin/users", admin, params=bad),
                     400, "validation_error")

    status, one, _ = await api.request("GET", f"/admin/users/{first.id}", admin)
    assert status == 200 and one == a
    assert_error(await api.request("GET", f"/admin/users/{uuid.uuid4()}", admin),
                 404, "not_found")


async def test_patch_role_and_quota(api: Api, admin: ApiUser, user: ApiUser,
                                    cluster: ClusterHandle) -> None:
    path = f"/admin/users/{user.id}"
    status, body, _ = await api.request("PATCH", path, admin, json={"quota_bytes": 12345})
    assert status == 200, body
    assert (body["quota_bytes"], body["effective_quota_bytes"]) == (12345, 12345)
    status, body, _ = await api.request("PATCH", path, admin, json={"quota_bytes": 0})
    assert status == 200 and body["effective_quota_bytes"] == 0  # 0 = unlimited
    status, body, _ = await api.request("PATCH", path, admin, json={"quota_bytes": None})
    assert status == 200, body
    assert body["quota_bytes"] is None
    assert body["effective_quota_bytes"] == cluster.config.lifecycle.default_quota_bytes

    # Promotion takes effect at once: the same access token now opens the admin API.
    status, body, _ = await api.request("PATCH", path, admin, json={"role": "admin"})
    assert status == 200 and body["role"] == "admin", body
    status, body, _ = await api.request("GET", "/admin/cluster", user)
    assert status == 200, body
    status, body, _ = await api.request("PATCH", path, admin, json={"role": "user"})
    assert status == 200 and body["role"] == "user"
    assert_error(await api.request("GET", "/admin/cluster", user), 403, "forbidden")

    status, body, _ = await api.request("PATCH", path, admin, json={})
    assert status == 200 and body["id"] == user.id

    for bad in ({"quota_bytes": -1}, {"quota_bytes": "10"}, {"quota_bytes": 1.5},
                {"quota_bytes": True}, {"quota_bytes": 2**63}, {"role": "root"},
                {"role": None}, {"role": 1}, {"is_active": "no"}, {"is_active": None},
                {"email": "x@example.com"}):
        assert_error(await api.request("PATCH", path, admin, json=bad), 400,
                     "validation_error")
    assert_error(await api.request("PATCH", path, admin, data=b"[1]",
                                   headers={"Content-Type": "application/json"}),
                 400, "invalid_json")
    assert_error(await api.request("PATCH", f"/admin/users/{uuid.uuid4()}", admin,
                                   json={"role": "admin"}), 404, "not_found")
    assert_error(await api.request("PATCH", "/admin/users/not-a-uuid", admin,
                                   json={"role": "admin"}), 404, "not_found")


async def test_deactivation_locks_the_user_out_at_once(api: Api, admin: ApiUser,
                                                       user: ApiUser) -> None:
    # A second sign-in: every family of refresh tokens must die, not only one.
    status, second, _ = await api.request("POST", "/auth/login",
                                          json={"email": user.email, "password": PASSWORD})
    assert status == 200, second
    status, me, _ = await api.request("GET", "/auth/me", user)
    assert status == 200, me

    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"is_active": False})
    assert status == 200 and body["is_active"] is False, body

    assert_error(await api.request("GET", "/auth/me", user), 401, "invalid_token")
    for token in (user.refresh_token, second["tokens"]["refresh_token"]):
        status, body, _ = await api.request("POST", "/auth/refresh",
                                            json={"refresh_token": token})
        assert status == 401, body
    assert_error(await api.request("POST", "/auth/login",
                                   json={"email": user.email, "password": PASSWORD}),
                 401, "account_disabled")

    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"is_active": True})
    assert status == 200 and body["is_active"] is True
    status, body, _ = await api.request("POST", "/auth/login",
                                        json={"email": user.email, "password": PASSWORD})
    assert status == 200, body
    # Reactivation does not bring the revoked refresh tokens back.
    status, body, _ = await api.request("POST", "/auth/refresh",
                                        json={"refresh_token": user.refresh_token})
    assert status == 401, body


async def test_admin_cannot_demote_or_deactivate_themselves(api: Api, admin: ApiUser) -> None:
    path = f"/admin/users/{admin.id}"
    for change in ({"role": "user"}, {"is_active": False},
                   {"role": "admin", "is_active": False}):
        assert_error(await api.request("PATCH", path, admin, json=change), 409,
                     "cannot_modify_self")
    status, body, _ = await api.request("PATCH", path, admin,
                                        json={"role": "admin", "is_active": True,
                                              "quota_bytes": 0})
    assert status == 200, body
    assert (body["role"], body["is_active"], body["quota_bytes"]) == ("admin", True, 0)
    status, body, _ = await api.request("PATCH", path, admin, json={"quota_bytes": None})
    assert status == 200 and body["quota_bytes"] is None


async def test_another_admin_can_be_demoted(api: Api, admin: ApiUser, user: ApiUser) -> None:
    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"role": "admin"})
    assert status == 200, body
    # The second admin may not demote themselves; the first one may demote them, and
    # with the role goes the admin API (the same access token, at once).
    assert_error(await api.request("PATCH", f"/admin/users/{user.id}", user,
                                   json={"role": "user"}), 409, "cannot_modify_self")
    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"role": "user"})
    assert status == 200 and body["role"] == "user"
    assert_error(await api.request("PATCH", f"/admin/users/{admin.id}", user,
                                   json={"role": "user"}), 403, "forbidden")


# --- cluster view -------------------------------------------------------------------------

async def test_cluster_view_follows_uploads(api: Api, admin: ApiUser, user: ApiUser,
                                            cluster: ClusterHandle) -> None:
    cfg = cluster.config
    before = await cluster_view(api, admin)
    assert before["replicas_n"] == cfg.replication.replicas_n
    assert before["write_quorum_w"] == cfg.replication.write_quorum_w
    assert before["ring_epoch"] >= 1
    assert {n["id"] for n in before["nodes"]} >= SHARED_NODES
    for node in before["nodes"]:
        assert set(node) >= {"id", "endpoint", "zone", "weight", "admin_state", "health",
                             "last_probe_at", "last_probe_latency_ms", "replicas", "bytes"}
    assert before["replicated_bytes"] == sum(n["bytes"] for n in before["nodes"])

    data = os.urandom(3 * MIB + 4321)
    status, first = await api.upload(user, "one.bin", data)
    assert status == 201, first
    assert first["new_chunks"] == first["chunk_count"] >= 1
    status, again = await api.upload(user, "two.bin", data)  # same bytes: all dedup
    assert status == 201, again
    assert again["new_chunks"] == 0 and again["dedup_chunks"] == again["chunk_count"]

    after = await cluster_view(api, admin)
    assert after["chunk_count"] - before["chunk_count"] == first["chunk_count"]
    assert after["stored_bytes"] - before["stored_bytes"] == len(data)
    assert after["logical_bytes"] - before["logical_bytes"] == 2 * len(data)
    grew = after["replicated_bytes"] - before["replicated_bytes"]
    n, w = cfg.replication.replicas_n, cfg.replication.write_quorum_w
    assert w * len(data) <= grew <= n * len(data)
    assert after["replicated_bytes"] == sum(x["bytes"] for x in after["nodes"])
    replicas_grew = (sum(x["replicas"] for x in after["nodes"])
                     - sum(x["replicas"] for x in before["nodes"]))
    assert w * first["chunk_count"] <= replicas_grew <= n * first["chunk_count"]
    assert after["dedup_ratio"] == pytest.approx(
        after["logical_bytes"] / after["stored_bytes"], rel=1e-5)
    assert after["dedup_ratio"] > 1
    assert after["under_replicated_chunks"] >= 0 and after["repair_queue_length"] >= 0
    assert after["ring_epoch"] == before["ring_epoch"]


async def test_cluster_view_counts_under_replicated_chunks(
        api: Api, admin: ApiUser, pg: asyncpg.Connection) -> None:
    digest = hashlib.sha256(uuid.uuid4().bytes).digest()
    before = await cluster_view(api, admin)
    await pg.execute("INSERT INTO chunks (sha256, size) VALUES ($1, 1000)", digest)
    try:
        await pg.execute("INSERT INTO chunk_replicas (chunk_sha256, node_id) "
                         "VALUES ($1, 'node-1')", digest)
        view = await cluster_view(api, admin)
        assert view["under_replicated_chunks"] == before["under_replicated_chunks"] + 1
        assert view["chunk_count"] == before["chunk_count"] + 1
        assert view["stored_bytes"] == before["stored_bytes"] + 1000
        node1 = {n["id"]: n for n in view["nodes"]}["node-1"]
        old1 = {n["id"]: n for n in before["nodes"]}["node-1"]
        assert (node1["replicas"], node1["bytes"]) == (old1["replicas"] + 1,
                                                       old1["bytes"] + 1000)
    finally:
        await pg.execute("DELETE FROM chunks WHERE sha256 = $1", digest)
    assert (await cluster_view(api, admin))["under_replicated_chunks"] == \
        before["under_replicated_chunks"]


# --- nodes --------------------------------------------------------------------------------

async def test_add_drain_and_remove_a_node(api: Api, admin: ApiUser, cluster: ClusterHandle,
                                           pg: asyncpg.Connection,
                                           ring_guard: list[str]) -> None:
    node_id = fresh_node_id()
    ring_guard.append(node_id)
    # A reachable endpoint: one of the shared nodes, under a new id and a tiny weight.
    endpoint = cluster.s3_nodes[0]["endpoint"]
    epoch0 = (await cluster_view(api, admin))["ring_epoch"]

    status, node, headers = await api.request("POST", "/admin/nodes", admin, json={
        "id": node_id, "endpoint": endpoint + "/", "zone": "zone-test", "weight": 0.01})
    assert status == 201, node
    assert headers["Location"] == f"/api/v1/admin/nodes/{node_id}"
    assert node["id"] == node_id and node["endpoint"] == endpoint
    assert (node["zone"], node["weight"], node["admin_state"], node["ring_state"]) == (
        "zone-test", 0.01, "active", "active")
    assert (node["replicas"], node["bytes"]) == (0, 0)
    assert node["bucket"] == cluster.config.s3.bucket
    view = await cluster_view(api, admin)
    assert view["ring_epoch"] == epoch0 + 1
    assert node_id in {n["id"] for n in view["nodes"]}

    status, listed, _ = await api.request("GET", "/admin/nodes", admin)
    assert status == 200 and node_id in {n["id"] for n in listed["items"]}
    status, got, _ = await api.request("GET", f"/admin/nodes/{node_id}", admin)
    assert status == 200 and got["ring_state"] == "active"

    assert_error(await api.request("POST", "/admin/nodes", admin, json={
        "id": node_id, "endpoint": endpoint, "zone": "zone-test"}), 409, "node_exists")
    assert_error(await api.request("POST", "/admin/nodes", admin, json={
        "id": "node-1", "endpoint": endpoint, "zone": "zone-a"}), 409, "node_exists")

    status, drained, _ = await api.request("POST", f"/admin/nodes/{node_id}/drain", admin)
    assert status == 200, drained
    assert (drained["admin_state"], drained["ring_state"]) == ("draining", "draining")
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch0 + 2
    status, again, _ = await api.request("POST", f"/admin/nodes/{node_id}/drain", admin)
    assert status == 200 and again["admin_state"] == "draining"
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch0 + 2  # idempotent

    status, body, _ = await api.request("DELETE", f"/admin/nodes/{node_id}", admin)
    assert status == 204, body
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch0 + 3
    status, gone, _ = await api.request("GET", f"/admin/nodes/{node_id}", admin)
    assert status == 200 and (gone["admin_state"], gone["ring_state"]) == ("removed", None)
    status, body, _ = await api.request("DELETE", f"/admin/nodes/{node_id}", admin)
    assert status == 204, body  # idempotent
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch0 + 3
    assert_error(await api.request("POST", f"/admin/nodes/{node_id}/drain", admin),
                 409, "node_removed")
    # Ids of removed nodes are not reused: replica rows still name them.
    assert_error(await api.request("POST", "/admin/nodes", admin, json={
        "id": node_id, "endpoint": endpoint, "zone": "zone-test"}), 409, "node_exists")

    # Each ring change was announced in its own transaction (the replication manager
    # rebalances on these), naming what moved.
    rows = await pg.fetch("SELECT payload::text FROM outbox WHERE type = 'ring.changed' "
                          "AND (payload->>'epoch')::bigint > $1 ORDER BY id", epoch0)
    changes = [json.loads(r["payload"]) for r in rows]
    assert [(c["epoch"], c["added"], c["draining"], c["removed"]) for c in changes] == [
        (epoch0 + 1, [node_id], [], []), (epoch0 + 2, [], [node_id], []),
        (epoch0 + 3, [], [], [node_id])]
    assert node_id not in changes[-1]["active"]


async def test_unknown_nodes_are_404(api: Api, admin: ApiUser) -> None:
    for method, path in (("GET", "/admin/nodes/no-such-node"),
                         ("POST", "/admin/nodes/no-such-node/drain"),
                         ("DELETE", "/admin/nodes/no-such-node")):
        assert_error(await api.request(method, path, admin), 404, "not_found")


BAD_NODES = {
    "id uppercase": {"id": "Node-X"},
    "id underscore": {"id": "node_x"},
    "id leading dash": {"id": "-node"},
    "id too long": {"id": "n" * 64},
    "id missing": {"id": None},
    "id not a string": {"id": 7},
    "endpoint scheme": {"endpoint": "ftp://127.0.0.1:21"},
    "endpoint no host": {"endpoint": "http://"},
    "endpoint path": {"endpoint": "http://127.0.0.1:8333/bucket"},
    "endpoint query": {"endpoint": "http://127.0.0.1:8333?x=1"},
    "endpoint credentials": {"endpoint": "http://u:p@127.0.0.1:8333"},
    "endpoint bad port": {"endpoint": "http://127.0.0.1:99999"},
    "endpoint not url": {"endpoint": "not a url"},
    "zone empty": {"zone": "  "},
    "zone too long": {"zone": "z" * 65},
    "weight zero": {"weight": 0},
    "weight negative": {"weight": -1.5},
    "weight string": {"weight": "1"},
    "weight bool": {"weight": True},
    "weight huge int": {"weight": 10**400},
    "weight too many vnodes": {"weight": 1e9},
    "unknown field": {"bucket": "other"},
}


@pytest.mark.parametrize("change", BAD_NODES.values(), ids=BAD_NODES.keys())
async def test_add_node_validates(api: Api, admin: ApiUser, change: dict[str, Any],
                                  ring_guard: list[str]) -> None:
    doc = {"id": fresh_node_id(), "endpoint": "http://127.0.0.1:1", "zone": "z", **change}
    if doc["id"] is None:
        del doc["id"]
    elif isinstance(doc["id"], str):
        ring_guard.append(doc["id"])
    epoch = (await cluster_view(api, admin))["ring_epoch"]
    assert_error(await api.request("POST", "/admin/nodes", admin, json=doc), 400,
                 "validation_error")
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch


async def test_add_node_refuses_non_finite_weight(api: Api, admin: ApiUser) -> None:
    for raw in ("NaN", "Infinity", "-Infinity"):
        doc = (f'{{"id": "{fresh_node_id()}", "endpoint": "http://127.0.0.1:1", '
               f'"zone": "z", "weight": {raw}}}')
        assert_error(await api.request("POST", "/admin/nodes", admin, data=doc.encode(),
                                       headers={"Content-Type": "application/json"}),
                     400, "validation_error")


async def test_add_unreachable_node_is_422(api: Api, admin: ApiUser,
                                           ring_guard: list[str]) -> None:
    node_id = fresh_node_id()
    ring_guard.append(node_id)
    epoch = (await cluster_view(api, admin))["ring_epoch"]
    assert_error(await api.request("POST", "/admin/nodes", admin, json={
        "id": node_id, "endpoint": f"http://127.0.0.1:{free_port()}", "zone": "z"}),
        422, "node_unreachable")
    assert_error(await api.request("GET", f"/admin/nodes/{node_id}", admin), 404, "not_found")
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch


async def test_delete_refused_while_node_holds_the_only_copy(
        api: Api, admin: ApiUser, pg: asyncpg.Connection, ring_guard: list[str]) -> None:
    fake, gone = fresh_node_id(), fresh_node_id()
    ring_guard.extend([fake, gone])
    live = hashlib.sha256(uuid.uuid4().bytes).digest()
    condemned = hashlib.sha256(uuid.uuid4().bytes).digest()
    # Nodes outside the ring, with unreachable endpoints: only their rows matter here.
    await pg.execute(
        "INSERT INTO nodes (id, endpoint, zone, admin_state) VALUES "
        "($1, 'http://127.0.0.1:9', 'zone-test', 'active'), "
        "($2, 'http://127.0.0.1:9', 'zone-test', 'removed')", fake, gone)
    await pg.execute("INSERT INTO chunks (sha256, size, state) VALUES ($1, 10, 'live'), "
                     "($2, 20, 'condemned')", live, condemned)
    try:
        await pg.execute(
            "INSERT INTO chunk_replicas (chunk_sha256, node_id, state) VALUES "
            "($1, $3, 'ok'), ($2, $3, 'ok'), "
            # Copies that do not count: on a removed node, and a corrupt one.
            "($1, $4, 'ok'), ($1, 'node-2', 'corrupt')", live, condemned, fake, gone)
        err = assert_error(await api.request("DELETE", f"/admin/nodes/{fake}", admin),
                           409, "node_holds_only_copy")
        assert "1 live chunk" in err["message"], err
        status, node, _ = await api.request("GET", f"/admin/nodes/{fake}", admin)
        assert status == 200 and node["admin_state"] == "active"
        assert (node["replicas"], node["bytes"]) == (2, 30)

        # A healthy copy elsewhere: now the node may go (it is in no ring: no new epoch).
        epoch = (await cluster_view(api, admin))["ring_epoch"]
        await pg.execute("INSERT INTO chunk_replicas (chunk_sha256, node_id, state) "
                         "VALUES ($1, 'node-1', 'ok')", live)
        status, body, _ = await api.request("DELETE", f"/admin/nodes/{fake}", admin)
        assert status == 204, body
        status, node, _ = await api.request("GET", f"/admin/nodes/{fake}", admin)
        assert status == 200 and node["admin_state"] == "removed"
        assert (await cluster_view(api, admin))["ring_epoch"] == epoch
    finally:
        await pg.execute("DELETE FROM chunks WHERE sha256 = ANY($1)", [live, condemned])
        await pg.execute("DELETE FROM repair_queue WHERE node_id = ANY($1)", [fake, gone])
        await pg.execute("DELETE FROM nodes WHERE id = ANY($1)", [fake, gone])


async def test_only_active_ring_node_cannot_be_drained_or_removed(
        api: Api, admin: ApiUser, pg: asyncpg.Connection, ring_guard: list[str]) -> None:
    """Checked on a ring of its own: the shared one is saved back unchanged after."""
    original = await load_latest(pg)
    assert original is not None
    # Draining node-2 and node-3 straight in the ring (the admin API would refuse
    # nothing here) leaves node-1 as the only active member.
    builder = RingBuilder(original)
    builder.set_state("node-2", "draining")
    builder.set_state("node-3", "draining")
    await save(pg, builder.build())
    try:
        assert_error(await api.request("POST", "/admin/nodes/node-1/drain", admin), 409,
                     "last_active_node")
        assert_error(await api.request("DELETE", "/admin/nodes/node-1", admin), 409,
                     "last_active_node")
    finally:
        current = await load_latest(pg)
        assert current is not None
        restore = RingBuilder(current)
        restore.set_state("node-2", ACTIVE)
        restore.set_state("node-3", ACTIVE)
        await save(pg, restore.build())
    status, node, _ = await api.request("GET", "/admin/nodes/node-1", admin)
    assert status == 200 and (node["admin_state"], node["ring_state"]) == ("active", "active")


async def test_concurrent_ring_changes_each_get_an_epoch(api: Api, admin: ApiUser,
                                                         cluster: ClusterHandle,
                                                         ring_guard: list[str]) -> None:
    endpoint = cluster.s3_nodes[1]["endpoint"]
    ids = [fresh_node_id() for _ in range(3)]
    ring_guard.extend(ids)
    epoch = (await cluster_view(api, admin))["ring_epoch"]
    results = await asyncio.gather(*(
        api.request("POST", "/admin/nodes", admin,
                    json={"id": i, "endpoint": endpoint, "zone": "zone-test", "weight": 0.01})
        for i in ids))
    assert [r[0] for r in results] == [201, 201, 201], [r[1] for r in results]
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch + 3
    results = await asyncio.gather(*(
        api.request("DELETE", f"/admin/nodes/{i}", admin) for i in ids))
    assert [r[0] for r in results] == [204, 204, 204], [r[1] for r in results]
    assert (await cluster_view(api, admin))["ring_epoch"] == epoch + 6


async def test_admin_overrides_version_retention_per_user(
        api: Api, admin: ApiUser, user: ApiUser, cluster: ClusterHandle) -> None:
    from dfms.gc.worker import GcWorker

    for i in range(4):
        assert (await api.upload(user, "history.txt", f"v{i}".encode()))[0] == 201
    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"keep_versions": 1, "keep_versions_days": 0})
    assert status == 200, body
    assert (body["keep_versions"], body["keep_versions_days"]) == (1, 0)
    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"keep_versions": -1})
    assert status == 400 and body["error"]["code"] == "validation_error"
    worker = GcWorker(cluster.config)
    try:
        assert (await worker.run_once()).errors == 0
    finally:
        await worker.close()
    _, listing, _ = await api.request("GET", "/files", user)
    fid = listing["items"][0]["id"]
    _, versions, _ = await api.request("GET", f"/files/{fid}/versions", user)
    assert [v["version"] for v in versions["versions"]] == [4]  # only the current is kept
    status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                        json={"keep_versions": None})
    assert status == 200 and body["keep_versions"] is None  # back to the default
