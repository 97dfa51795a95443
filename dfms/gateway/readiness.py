"""The gateway's readiness: its dependencies, and whether uploads can succeed.

Uploads need the chunk service to reach W usable nodes; downloads need one replica,
and listings, metadata and accounts need only PostgreSQL. Redis is needed only when
rate limits fail closed; failing open, its absence is "degraded" (requests pass
unlimited), not a reason to leave the load balancer. Without a write quorum the
gateway still serves all of that, so ``/ready`` stays 200 with status "degraded" and
``"writable": false`` instead of taking every gateway out of the load balancer at
once (the condition is the cluster's, not this instance's). docs/operations.md
explains the choice; ``dfms_gateway_writable`` is what to alert on.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from prometheus_client import Gauge

from dfms.chunkservice.client import ChunkClient
from dfms.chunkservice.writepath import WritePath, from_stat
from dfms.gateway.context import CHUNKS_KEY, PG_KEY, REDIS_KEY
from dfms.gateway.ratelimit import GUARD_KEY
from dfms.runtime.ops import CheckResult, Degraded, ReadyCheck, add_ops_routes

WRITABLE = Gauge("dfms_gateway_writable",
                 "1 while the chunk service has enough usable nodes for the write quorum "
                 "(as of the last /ready or admin cluster view; 0 when it did not answer)")
USABLE_NODES = Gauge("dfms_gateway_usable_nodes",
                     "Usable ring nodes the chunk service reported at the last check")


async def write_path(chunks: ChunkClient) -> WritePath:
    """The write path as the chunk service sees it now (its ``Stat``)."""
    try:
        path = from_stat(await chunks.stat())
    except Exception:
        WRITABLE.set(0)
        raise
    WRITABLE.set(1 if path.writable else 0)
    USABLE_NODES.set(len(path.usable_nodes))
    return path


async def write_path_json(chunks: ChunkClient) -> dict[str, object]:
    """For the admin cluster view: the write path, or why it is unknown."""
    try:
        path = await write_path(chunks)
    except Exception as exc:  # whatever the reason, nothing can be written now
        return {"writable": False, "usable_nodes": None, "write_quorum": None,
                "down_nodes": [], "detail": f"the chunk service did not answer: {exc}"[:300]}
    return path.as_json()


def _checks(app: web.Application) -> dict[str, ReadyCheck]:
    async def postgres() -> None:
        async with app[PG_KEY].acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def redis() -> None:
        guard = app.get(GUARD_KEY)
        try:
            await app[REDIS_KEY].ping()
        except Exception as exc:
            if guard is not None and not guard.cfg.fail_open:
                raise  # every limited request answers 503: not ready
            raise Degraded("Redis is unreachable: rate limits are not enforced "
                           "(ratelimit.fail_open)") from exc
        if guard is not None:
            guard.recovered()  # Redis answers: no need to wait out the limiter's back-off

    async def chunk_service() -> dict[str, object]:
        path = await write_path(app[CHUNKS_KEY])
        if not path.writable:
            raise Degraded(f"uploads fail: {path.detail}; downloads still work",
                           {"write_path": path.as_json()})
        return {"write_path": path.as_json()}

    return {"postgres": postgres, "redis": redis, "chunk_service": chunk_service}


def _summary(detail: Mapping[str, CheckResult]) -> dict[str, object]:
    chunk_service = detail["chunk_service"]
    path = chunk_service.get("write_path")
    writable = bool(chunk_service["ok"] and isinstance(path, dict) and path["writable"])
    return {"writable": writable}


def setup_ops_routes(app: web.Application) -> None:
    """/health, /ready (with ``writable``) and /metrics."""
    add_ops_routes(app, "gateway", _checks(app), summary=_summary)
