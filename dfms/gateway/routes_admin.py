"""Administration: accounts (role, quota, deactivation), the cluster's numbers, and the
storage nodes (register, drain, remove). Every route needs the admin role.

Ring changes go through ``dfms.ring``: in one transaction that holds the ring
writers' advisory lock, the node row changes, the next ``RingData`` is built
from the latest stored one and saved. A ``RingConflict`` (someone saved an
epoch in between) rolls everything back; the change is tried once more, then
answered with 409 ``ring_conflict``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from dfms.auth import refresh
from dfms.auth.accounts import ROLES
from dfms.gateway.context import API_PREFIX, CHUNKS_KEY, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import ApiError, bad_request, conflict, forbidden, not_found
from dfms.gateway.http import field, int_param, only_fields, parse_uuid, read_json
from dfms.gateway.readiness import write_path_json
from dfms.gateway.security import require_admin
from dfms.metadata import admin as adm
from dfms.metadata.db import Connection
from dfms.metadata.states import AdminState
from dfms.nodes import (
    NodeSpec,
    check_node_id,
    check_weight,
    clean_endpoint,
    clean_zone,
)
from dfms.ring import DRAINING, RingBuilder, RingConflict, RingData
from dfms.ring import store as ring_store
from dfms.runtime.logs import get_logger
from dfms.storage import NodeClient, StorageError

log = get_logger("gateway.admin")

T = TypeVar("T")

MAX_QUOTA_BYTES = 2**63 - 1  # PostgreSQL bigint
USER_FIELDS = frozenset({"role", "quota_bytes", "is_active", "keep_versions",
                         "keep_versions_days"})
MAX_RETENTION = 1_000_000
NODE_FIELDS = frozenset({"id", "endpoint", "zone", "weight"})


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


# --- users ------------------------------------------------------------------------------

def user_json(user: adm.UserUsage, default_quota: int) -> dict[str, Any]:
    effective = default_quota if user.quota_bytes is None else user.quota_bytes
    return {"id": str(user.id), "email": user.email, "display_name": user.display_name,
            "role": user.role, "is_active": user.is_active,
            "quota_bytes": user.quota_bytes, "effective_quota_bytes": effective,
            "keep_versions": user.keep_versions,
            "keep_versions_days": user.keep_versions_days,
            "used_bytes": user.used_bytes, "file_count": user.file_count,
            "trashed_file_count": user.trashed_file_count,
            "created_at": _iso(user.created_at), "updated_at": _iso(user.updated_at)}


def _default_quota(request: web.Request) -> int:
    return request.app[CONFIG_KEY].lifecycle.default_quota_bytes


async def list_users(request: web.Request) -> web.Response:
    await require_admin(request)
    gw = request.app[CONFIG_KEY].gateway
    per_page = int_param(request, "per_page", gw.page_size_default, 1, gw.page_size_max)
    page = int_param(request, "page", 1, 1, 10_000_000)
    q = request.query.get("q", "").strip() or None
    if q is not None and len(q) > 320:
        raise bad_request("validation_error", "'q' must be at most 320 characters")
    users, total = await adm.list_users(request.app[PG_KEY], email_contains=q,
                                        limit=per_page, offset=(page - 1) * per_page)
    default = _default_quota(request)
    return web.json_response({"items": [user_json(u, default) for u in users],
                              "total": total, "page": page, "per_page": per_page})


async def get_user(request: web.Request) -> web.Response:
    await require_admin(request)
    user_id = parse_uuid(request.match_info["user_id"], "user")
    user = await adm.get_user(request.app[PG_KEY], user_id)
    if user is None:
        raise not_found("user")
    return web.json_response(user_json(user, _default_quota(request)))


def _user_changes(doc: dict[str, Any]) -> dict[str, Any]:
    only_fields(doc, USER_FIELDS)
    changes: dict[str, Any] = {}
    if "role" in doc:
        role = field(doc, "role", str)
        if role not in ROLES:
            raise bad_request("validation_error", f"'role' must be one of {', '.join(ROLES)}")
        changes["role"] = role
    if "quota_bytes" in doc:
        quota = field(doc, "quota_bytes", int, required=False)
        if quota is not None and not 0 <= quota <= MAX_QUOTA_BYTES:
            raise bad_request("validation_error",
                              "'quota_bytes' must be an integer >= 0 (0 = unlimited), "
                              "or null for the default quota")
        changes["quota_bytes"] = quota
    if "is_active" in doc:
        changes["is_active"] = field(doc, "is_active", bool)
    for name in ("keep_versions", "keep_versions_days"):
        if name in doc:  # a per-user retention override; null = the configured default
            value = field(doc, name, int, required=False)
            if value is not None and not 0 <= value <= MAX_RETENTION:
                raise bad_request("validation_error", f"'{name}' must be an integer from 0 to "
                                  f"{MAX_RETENTION}, or null for the default")
            changes[name] = value
    return changes


async def update_user(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    user_id = parse_uuid(request.match_info["user_id"], "user")
    changes = _user_changes(await read_json(request))
    if user_id == admin.id and (changes.get("role", "admin") != "admin"
                                or changes.get("is_active", True) is not True):
        raise conflict("cannot_modify_self",
                       "administrators cannot demote or deactivate themselves; "
                       "ask another administrator")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        # Locking the caller too closes a race: two admins demoting each other at
        # once would otherwise leave none. The second one now finds itself demoted.
        locked = await adm.lock_users(conn, [admin.id, user_id])
        me = locked.get(admin.id)
        if me is None or me["role"] != "admin" or not me["is_active"]:
            raise forbidden("administrator role required")
        if user_id not in locked:
            raise not_found("user")
        await adm.update_user(conn, user_id, changes)
        revoked = 0
        if changes.get("is_active") is False:
            revoked = await refresh.revoke_all(conn, user_id)
        user = await adm.get_user(conn, user_id)
    assert user is not None
    log.info("user updated by admin", extra={
        "admin": str(admin.id), "user": str(user_id),
        "changes": dict(changes), "revoked_refresh_tokens": revoked})
    return web.json_response(user_json(user, _default_quota(request)))


# --- cluster ----------------------------------------------------------------------------

def node_json(node: adm.NodeRow, ring: RingData | None) -> dict[str, Any]:
    member = next((m for m in ring.members if m.node_id == node.id), None) if ring else None
    return {"id": node.id, "endpoint": node.endpoint, "bucket": node.bucket,
            "zone": node.zone, "weight": node.weight, "admin_state": node.admin_state,
            "ring_state": member.state if member is not None else None,
            "health": node.health, "health_changed_at": _iso(node.health_changed_at),
            "last_probe_at": _iso(node.last_probe_at),
            "last_probe_latency_ms": node.last_probe_latency_ms,
            "replicas": node.replicas, "bytes": node.bytes,
            "created_at": _iso(node.created_at), "updated_at": _iso(node.updated_at)}


async def cluster_view(request: web.Request) -> web.Response:
    await require_admin(request)
    cfg = request.app[CONFIG_KEY]
    async with request.app[PG_KEY].acquire() as conn:
        numbers = await adm.cluster_numbers(conn, cfg.replication.replicas_n)
        ring = await ring_store.load_latest(conn)
        scrub = await conn.fetchrow(_SCRUB_STATE)
    # What /ready reports too: whether uploads can succeed, as the chunk service sees it.
    write_path = await write_path_json(request.app[CHUNKS_KEY])
    ratio = numbers.dedup_ratio
    return web.json_response({
        "nodes": [node_json(n, ring) for n in numbers.nodes],
        "chunk_count": numbers.chunk_count,
        "stored_bytes": numbers.stored_bytes,
        "replicated_bytes": numbers.replicated_bytes,
        "logical_bytes": numbers.logical_bytes,
        "dedup_ratio": None if ratio is None else round(ratio, 6),
        "under_replicated_chunks": numbers.under_replicated_chunks,
        "condemned_chunks": numbers.condemned_chunks,
        "repair_queue_length": numbers.repair_queue_length,
        "ring_epoch": numbers.ring_epoch,
        "replicas_n": cfg.replication.replicas_n,
        "write_quorum_w": cfg.replication.write_quorum_w,
        "chunker": cfg.chunker.algorithm,
        "scrub": scrub_json(scrub),
        "write_path": write_path,
    })


_SCRUB_STATE = "SELECT * FROM scrub_state WHERE id = 'default'"


def scrub_json(row: asyncpg.Record | None) -> dict[str, Any]:
    def get(name: str) -> Any:
        return None if row is None else row[name]

    return {"pass_started_at": _iso(get("pass_started_at")),
            "pass_replicas": get("pass_replicas") or 0, "pass_bytes": get("pass_bytes") or 0,
            "last_pass_seconds": get("last_pass_seconds"),
            "last_pass_replicas": get("last_pass_replicas"),
            "last_pass_bytes": get("last_pass_bytes"),
            "last_pass_done_at": _iso(get("last_pass_done_at"))}


# --- nodes ------------------------------------------------------------------------------

async def list_nodes(request: web.Request) -> web.Response:
    await require_admin(request)
    async with request.app[PG_KEY].acquire() as conn:
        nodes = await adm.list_nodes(conn)
        ring = await ring_store.load_latest(conn)
    return web.json_response({"items": [node_json(n, ring) for n in nodes]})


async def get_node(request: web.Request) -> web.Response:
    await require_admin(request)
    async with request.app[PG_KEY].acquire() as conn:
        node = await adm.get_node(conn, request.match_info["node_id"])
        if node is None:
            raise not_found("node")
        ring = await ring_store.load_latest(conn)
    return web.json_response(node_json(node, ring))


def _new_node(doc: dict[str, Any]) -> NodeSpec:
    """The node of a request body, by the rules of ``dfms.nodes`` (shared with the CLI)."""
    only_fields(doc, NODE_FIELDS)
    # An InvalidNode is answered by the error table: 400 validation_error.
    node_id = check_node_id(field(doc, "id", str))
    endpoint = clean_endpoint(field(doc, "endpoint", str))
    zone = clean_zone(field(doc, "zone", str))
    weight = field(doc, "weight", (int, float), required=False)
    return NodeSpec(node_id, endpoint, zone, check_weight(1.0 if weight is None else weight))


async def _ring_change(pool: asyncpg.Pool,
                       change: Callable[[Connection, RingData | None], Awaitable[T]]
                       ) -> T:
    """Run ``change(conn, latest_ring)`` in a transaction holding the ring lock.

    ``change`` edits node rows and saves the next ring with ``dfms.ring.save``;
    on ``RingConflict`` all of it is rolled back and tried once more.
    """
    attempt = 1
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                await adm.lock_ring(conn)
                return await change(conn, await ring_store.load_latest(conn))
        except RingConflict as exc:
            log.warning("ring conflict", extra={"attempt": attempt, "error": str(exc)})
            if attempt == 2:
                raise  # the error table answers 409 ring_conflict
            attempt += 1


async def _save(conn: Connection, builder: RingBuilder) -> RingData:
    data = builder.build()
    await ring_store.save(conn, data)
    return data


def _last_active(ring: RingData, node_id: str) -> bool:
    return [m.node_id for m in ring.active_members] == [node_id]


async def add_node(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    node = _new_node(await read_json(request))
    node_id, endpoint, zone, weight = node.node_id, node.endpoint, node.zone, node.weight
    pool = request.app[PG_KEY]
    s3 = request.app[CONFIG_KEY].s3
    if await adm.get_node(pool, node_id) is not None:
        raise _node_exists(node_id)
    # A dry run on the current ring, so a weight the ring cannot take is refused
    # before anyone waits for the endpoint. The transaction below builds it again.
    _ring_with(await ring_store.load_latest(pool), node_id, zone, weight)
    # Outside any transaction: a slow or dead endpoint must not hold the ring lock.
    try:
        async with NodeClient(node_id, endpoint, s3) as client:
            await client.ping()
    except StorageError as exc:
        raise ApiError(422, "node_unreachable",
                       f"the S3 endpoint {endpoint} did not answer: {exc}") from None

    async def change(conn: Connection, ring: RingData | None) -> dict[str, Any]:
        if not await adm.insert_node(conn, node_id, endpoint, s3.bucket, zone, weight):
            raise _node_exists(node_id)
        data = _ring_with(ring, node_id, zone, weight)
        await ring_store.save(conn, data)
        node = await adm.get_node(conn, node_id)
        assert node is not None
        return {"node": node_json(node, data), "epoch": data.epoch}

    result = await _ring_change(pool, change)
    log.info("node added", extra={"admin": str(admin.id), "node": node_id,
                                  "endpoint": endpoint, "ring_epoch": result["epoch"]})
    return web.json_response(result["node"], status=201,
                             headers={"Location": f"{API_PREFIX}/admin/nodes/{node_id}"})


def _ring_with(ring: RingData | None, node_id: str, zone: str, weight: float) -> RingData:
    """The next ring: ``ring`` plus the new member; 400 when the ring cannot take it."""
    if ring is not None and any(m.node_id == node_id for m in ring.members):
        raise _node_exists(node_id)
    builder = RingBuilder(ring)
    builder.add_node(node_id, zone, weight)  # InvalidRing: 400 validation_error (error table)
    return builder.build()


def _node_exists(node_id: str) -> ApiError:
    return conflict("node_exists",
                    f"a node with id {node_id!r} already exists (ids of removed nodes "
                    "are not reused: their replica records still name them)")


async def drain_node(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    node_id = request.match_info["node_id"]

    async def change(conn: Connection, ring: RingData | None) -> dict[str, Any]:
        node = await adm.get_node(conn, node_id, for_update=True)
        if node is None:
            raise not_found("node")
        if node.admin_state == AdminState.REMOVED:
            raise conflict("node_removed", f"node {node_id!r} was removed; it cannot drain")
        member = next((m for m in ring.members if m.node_id == node_id), None) if ring else None
        epoch = None
        if ring is not None and member is not None and member.state != DRAINING:
            if _last_active(ring, node_id):
                raise conflict("last_active_node",
                               f"node {node_id!r} is the ring's only active node")
            builder = RingBuilder(ring)
            builder.set_state(node_id, DRAINING)
            ring = await _save(conn, builder)
            epoch = ring.epoch
        if node.admin_state != AdminState.DRAINING:
            await adm.set_admin_state(conn, node_id, AdminState.DRAINING)
            node = await adm.get_node(conn, node_id)
            assert node is not None
        return {"node": node_json(node, ring), "epoch": epoch}

    result = await _ring_change(request.app[PG_KEY], change)
    if result["epoch"] is not None:
        log.info("node draining", extra={"admin": str(admin.id), "node": node_id,
                                         "ring_epoch": result["epoch"]})
    return web.json_response(result["node"])


async def delete_node(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    node_id = request.match_info["node_id"]

    async def change(conn: Connection, ring: RingData | None) -> int | None:
        node = await adm.get_node(conn, node_id, for_update=True)
        if node is None:
            raise not_found("node")
        member = next((m for m in ring.members if m.node_id == node_id), None) if ring else None
        if node.admin_state == AdminState.REMOVED and member is None:
            return None  # already gone: DELETE is idempotent
        only = await adm.only_copy_count(conn, node_id)
        if only:
            raise conflict("node_holds_only_copy",
                           f"node {node_id!r} holds the only ok replica of {only} live "
                           f"chunk{'s' if only != 1 else ''}; drain it and wait until the "
                           "replication manager has copied them elsewhere")
        epoch = None
        if ring is not None and member is not None:
            if _last_active(ring, node_id):
                raise conflict("last_active_node",
                               f"node {node_id!r} is the ring's only active node")
            builder = RingBuilder(ring)
            builder.remove_node(node_id)
            epoch = (await _save(conn, builder)).epoch
        await adm.set_admin_state(conn, node_id, AdminState.REMOVED)
        return epoch

    epoch = await _ring_change(request.app[PG_KEY], change)
    log.info("node removed", extra={"admin": str(admin.id), "node": node_id,
                                    "ring_epoch": epoch})
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    base = f"{API_PREFIX}/admin"
    app.router.add_get(f"{base}/users", list_users)
    app.router.add_get(f"{base}/users/{{user_id}}", get_user)
    app.router.add_patch(f"{base}/users/{{user_id}}", update_user)
    app.router.add_get(f"{base}/cluster", cluster_view)
    app.router.add_get(f"{base}/nodes", list_nodes)
    app.router.add_post(f"{base}/nodes", add_node)
    app.router.add_get(f"{base}/nodes/{{node_id}}", get_node)
    app.router.add_post(f"{base}/nodes/{{node_id}}/drain", drain_node)
    app.router.add_delete(f"{base}/nodes/{{node_id}}", delete_node)

