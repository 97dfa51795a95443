"""Administration: accounts (role, quota, deactivation), the cluster's numbers, and the
storage nodes (register, drain, remove). Every route needs the admin role.

Node changes are made by the ring membership service, ``dfms.metadata.membership``
(the node row, the ring epoch and its event in one transaction under the ring lock);
these handlers parse, authorise, call it and render its outcome or its refusal.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from dfms.auth import refresh
from dfms.auth.accounts import ROLES
from dfms.events.outbox import emit
from dfms.events.topics import FILES_TOPIC, USER_ACCESS_CHANGED
from dfms.gateway.context import API_PREFIX, CHUNKS_KEY, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import bad_request, conflict, forbidden, not_found
from dfms.gateway.http import field, int_param, only_fields, parse_uuid, read_json
from dfms.gateway.readiness import write_path_json
from dfms.gateway.security import require_admin
from dfms.metadata import admin as adm
from dfms.metadata import membership
from dfms.nodes import (
    NodeSpec,
    check_node_id,
    check_weight,
    clean_endpoint,
    clean_zone,
)
from dfms.ring import RingData
from dfms.runtime.logs import get_logger

log = get_logger("gateway.admin")

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
        if "role" in changes or "is_active" in changes:
            await emit(conn, FILES_TOPIC, str(user_id), USER_ACCESS_CHANGED,
                       {"user_id": str(user_id), "role": user.role,
                        "is_active": user.is_active})
    log.info("user updated by admin", extra={
        "admin": str(admin.id), "user": str(user_id),
        "changes": dict(changes), "revoked_refresh_tokens": revoked})
    return web.json_response(user_json(user, _default_quota(request)))


# --- cluster ----------------------------------------------------------------------------

def node_json(node: adm.NodeRow, ring: RingData | None) -> dict[str, Any]:
    member = membership.member(ring, node.id)
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
        ring = await membership.ring_in_force(conn)
        scrub = await adm.scrub_state(conn)
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
        "chunks_at_risk": numbers.chunks_at_risk,
        "chunks_unrecoverable": numbers.chunks_unrecoverable,
        "condemned_chunks": numbers.condemned_chunks,
        "repair_queue_length": numbers.repair_queue_length,
        "ring_epoch": numbers.ring_epoch,
        "replicas_n": cfg.replication.replicas_n,
        "write_quorum_w": cfg.replication.write_quorum_w,
        "chunker": cfg.chunker.algorithm,
        "scrub": scrub_json(scrub),
        "write_path": write_path,
    })


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

# The answers to the membership service's refusals. A RingRefused is an InvalidRing,
# and a RingConflict passes through: the error table answers those (400, 409).
async def list_nodes(request: web.Request) -> web.Response:
    await require_admin(request)
    nodes, ring = await membership.list_nodes(request.app[PG_KEY])
    return web.json_response({"items": [node_json(n, ring) for n in nodes]})


async def get_node(request: web.Request) -> web.Response:
    await require_admin(request)
    node, ring = await membership.get_node(request.app[PG_KEY],
                                           request.match_info["node_id"])
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


async def add_node(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    spec = _new_node(await read_json(request))
    done = await membership.add_node(request.app[PG_KEY], spec,
                                     request.app[CONFIG_KEY].s3)
    log.info("node added", extra={"admin": str(admin.id), "node": spec.node_id,
                                  "endpoint": spec.endpoint, "ring_epoch": done.epoch})
    return web.json_response(node_json(done.node, done.ring), status=201,
                             headers={"Location": f"{API_PREFIX}/admin/nodes/{spec.node_id}"})


async def drain_node(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    node_id = request.match_info["node_id"]
    done = await membership.drain_node(request.app[PG_KEY], node_id)
    if done.epoch is not None:
        log.info("node draining", extra={"admin": str(admin.id), "node": node_id,
                                         "ring_epoch": done.epoch})
    return web.json_response(node_json(done.node, done.ring))


async def delete_node(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    node_id = request.match_info["node_id"]
    done = await membership.remove_node(request.app[PG_KEY], node_id)
    log.info("node removed", extra={"admin": str(admin.id), "node": node_id,
                                    "ring_epoch": done.epoch})
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

