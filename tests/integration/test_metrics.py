"""Operator metrics on the real cluster: each series on the service that owns it, with
values an upload, a dedup hit and a download make plausible; "at risk" counting the
replicas on a down node as missing; and label sets that do not grow with files or users.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dfms.healthmon.state import Health
from dfms.metadata import admin as adm
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle

MIB = 1024 * 1024
Key = tuple[str, frozenset[tuple[str, str]]]
Samples = dict[Key, float]
UPLOAD_ROUTE = "/api/v1/files/upload"
DOWNLOAD_ROUTE = "/api/v1/files/{file_id}/download"
# Services whose series a workload of uploads and downloads touches (the health
# monitor's series follow probes and timers, not the workload: only its values are
# checked for ids).
DATA_PATH_SERVICES = ("gateway", "chunk-service", "event-relay")


async def scrape(cluster: ClusterHandle, service: str) -> Samples:
    url = cluster.info["services"][service]["ops_url"]
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def has(samples: Samples, name: str, **labels: str) -> bool:
    want = set(labels.items())
    return any(n == name and want <= lbl for n, lbl in samples)


async def eventually(cluster: ClusterHandle, service: str, ok: Callable[[Samples], bool],
                     timeout_s: float) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(cluster, service)
        if ok(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(1.0)


async def upload(api: Api, user: ApiUser, data: bytes) -> dict[str, Any]:
    status, body = await api.upload(user, f"m-{uuid.uuid4().hex[:8]}.bin", data)
    assert status == 201, body
    return dict(body)


async def download(api: Api, user: ApiUser, file_id: str, expected: bytes) -> None:
    status, body, _ = await api.request("GET", f"/files/{file_id}/download", user)
    assert status == 200 and body == expected


# --- an upload, a dedup hit, a download ---------------------------------------------------

async def test_upload_dedup_and_download_show_on_the_owning_services(
        cluster: ClusterHandle, api: Api, user: ApiUser) -> None:
    data = os.urandom(3 * MIB)
    before = {svc: await scrape(cluster, svc) for svc in ("gateway", "chunk-service")}
    first = await upload(api, user, data)
    await upload(api, user, data)  # same bytes, another name: every chunk a dedup hit
    await download(api, user, first["id"], data)
    uploaded_at = time.time()
    await check_data_path(cluster, before, len(data), first["id"])
    await check_cluster_gauges(cluster, uploaded_at, len(data))
    await check_background_services(cluster)


async def check_data_path(cluster: ClusterHandle, before: dict[str, Samples], size: int,
                          file_id: str) -> None:
    gw, cs = await scrape(cluster, "gateway"), await scrape(cluster, "chunk-service")

    def grew(now: Samples, svc: str, name: str, **labels: str) -> float:
        return total(now, name, **labels) - total(before[svc], name, **labels)

    # Logical bytes in and out, dedup saved, physical bytes to the nodes (W..N copies).
    assert grew(cs, "chunk-service", "dfms_chunk_upload_bytes_total") >= 2 * size
    # Downloads are read by the gateway itself, straight from the nodes.
    assert grew(gw, "gateway", "dfms_chunk_download_bytes_total") >= size
    assert grew(gw, "gateway", "dfms_s3_bytes_total", direction="in") >= size
    assert grew(cs, "chunk-service", "dfms_chunk_write_bytes_total", outcome="dedup") >= size
    w, n = cluster.config.replication.write_quorum_w, cluster.config.replication.replicas_n
    physical = grew(cs, "chunk-service", "dfms_s3_bytes_total", direction="out")
    assert w * size <= physical <= n * size + MIB
    # Requests by route template, method and status; latency by route; rate limits.
    assert grew(gw, "gateway", "dfms_http_requests_total", route=UPLOAD_ROUTE,
                method="POST", status="201") == 2
    assert grew(gw, "gateway", "dfms_http_requests_total", route=DOWNLOAD_ROUTE,
                method="GET", status="200") == 1
    assert has(gw, "dfms_http_request_seconds_bucket", route=DOWNLOAD_ROUTE, method="GET")
    assert grew(gw, "gateway", "dfms_ratelimit_decisions_total", outcome="allowed") >= 3
    assert not any(file_id in value for _, labels in gw for _, value in labels)


async def check_cluster_gauges(cluster: ClusterHandle, uploaded_at: float, size: int) -> None:
    hm = await eventually(
        cluster, "health-monitor",
        lambda s: total(s, "dfms_cluster_gauges_refresh_timestamp_seconds") > uploaded_at,
        cluster.config.healthmon.cluster_gauges_interval_s + 30)
    assert total(hm, "dfms_cluster_gauges_refresh_timestamp_seconds") > uploaded_at
    live = total(hm, "dfms_stored_chunks", state="live")
    assert live >= 3  # a 3 MiB file in chunks of at most 4 MiB, at least 256 KiB
    assert total(hm, "dfms_stored_chunk_bytes", state="live") >= size
    assert has(hm, "dfms_stored_chunks", state="sweeping")
    logical = total(hm, "dfms_logical_bytes")
    stored = total(hm, "dfms_stored_chunk_bytes", state="live")
    assert logical >= 2 * size
    # The ratio is the whole store's: on the suite's shared cluster, chunks that earlier
    # tests left for GC can outweigh the dedup (0.98 in one run). It must agree with its
    # parts; the dedup hit itself is counted on the chunk service (check_data_path).
    assert total(hm, "dfms_dedup_ratio") == pytest.approx(logical / stored, rel=0.01)
    assert total(hm, "dfms_dedup_saved_bytes") == pytest.approx(max(logical - stored, 0),
                                                                 rel=0.01, abs=MIB)
    w = cluster.config.replication.write_quorum_w
    for node in ("node-1", "node-2", "node-3"):
        assert has(hm, "dfms_node_replicas", node=node)
    assert total(hm, "dfms_node_stored_bytes") >= w * size
    at_risk = total(hm, "dfms_chunks_at_risk")
    assert 0 <= total(hm, "dfms_chunks_unrecoverable") <= at_risk <= live
    assert total(hm, "dfms_under_replicated_chunks") <= at_risk  # no node is down now
    assert total(hm, "dfms_repair_queue_oldest_age_seconds") >= 0
    assert 0 <= total(hm, "dfms_scrub_pass_progress_ratio") <= 1
    assert has(hm, "dfms_scrub_last_full_pass_timestamp_seconds")
    assert has(hm, "dfms_node_health", node="node-1", state="healthy")
    assert has(hm, "dfms_node_probe_seconds_bucket", node="node-1")


async def check_background_services(cluster: ClusterHandle) -> None:
    relay = await scrape(cluster, "event-relay")
    assert has(relay, "dfms_outbox_backlog")
    assert total(relay, "dfms_outbox_oldest_unsent_age_seconds") >= 0
    assert has(relay, "dfms_outbox_oldest_unsent_age_seconds")
    gc = await scrape(cluster, "gc-worker")  # its first pass runs when it starts
    assert total(gc, "dfms_gc_last_success_timestamp_seconds") > 0
    assert has(gc, "dfms_gc_reclaimed_bytes_total", kind="chunks")


async def test_consumer_lag_is_on_the_replication_manager(cluster: ClusterHandle) -> None:
    await cluster.control("start", "replication-manager")  # the suite keeps it stopped
    try:
        rm = await eventually(
            cluster, "replication-manager",
            lambda s: has(s, "dfms_consumer_lag_messages", group="dfms.replication-manager"),
            60.0)
    finally:
        await cluster.control("stop", "replication-manager")
    assert has(rm, "dfms_consumer_lag_messages", group="dfms.replication-manager",
               topic="dfms.chunks")
    assert total(rm, "dfms_consumer_lag_messages") >= 0


# --- at risk: replicas on a down node are not there -------------------------------------

async def test_at_risk_counts_replicas_on_down_nodes_as_missing(pg: asyncpg.Connection) -> None:
    """In a transaction rolled back at the end, so no service ever sees the crafted rows
    or the node marked down (the query is given the node list)."""
    digest = hashlib.sha256(uuid.uuid4().bytes).digest()
    tx = pg.transaction()
    await tx.start()
    try:
        nodes = await adm.list_nodes(pg)
        down = [n if n.id != "node-2" else replace(n, health=Health.DOWN) for n in nodes]
        before_up = await adm.replica_risk(pg, 3, nodes)
        before_down = await adm.replica_risk(pg, 3, down)
        await pg.execute("INSERT INTO chunks (sha256, size) VALUES ($1, 10)", digest)
        await pg.execute("INSERT INTO chunk_replicas (chunk_sha256, node_id) "
                         "SELECT $1, unnest(ARRAY['node-1', 'node-2', 'node-3'])", digest)
        up = await adm.replica_risk(pg, 3, nodes)
        outage = await adm.replica_risk(pg, 3, down)
    finally:
        await tx.rollback()
    assert up == before_up  # three ok replicas on nodes that are up: not at risk
    assert outage.under_replicated == before_down.under_replicated  # the old meaning
    assert outage.at_risk == before_down.at_risk + 1
    assert outage.unrecoverable == before_down.unrecoverable


# --- cardinality --------------------------------------------------------------------------

async def round_of_uploads(api: Api, users: list[ApiUser], per_user: int) -> list[str]:
    """Uploads, a listing and a download per user; returns the ids it created."""
    ids = []
    for user in users:
        for _ in range(per_user):
            data = os.urandom(4096)
            body = await upload(api, user, data)
            ids.append(body["id"])
            await download(api, user, body["id"], data)
            status, _, _ = await api.request("GET", f"/files/{body['id']}", user)
            assert status == 200
    return ids


async def label_sets(cluster: ClusterHandle) -> set[tuple[str, Key]]:
    return {(svc, key) for svc in DATA_PATH_SERVICES for key in await scrape(cluster, svc)}


async def test_no_label_value_set_grows_with_files_or_users(
        cluster: ClusterHandle, api: Api) -> None:
    users = [await api.register(), await api.register()]
    ids = await round_of_uploads(api, users, 1)  # warm-up: every route and outcome once
    ids += await round_of_uploads(api, users, 3)
    after_n = await label_sets(cluster)
    more_users = [await api.register(), await api.register()]
    ids += await round_of_uploads(api, users + more_users, 3)
    after_2n = await label_sets(cluster)
    assert after_2n - after_n == set(), "series that appeared with more files or users"
    hm = await scrape(cluster, "health-monitor")
    values = {v for _, (_, labels) in after_2n for _, v in labels}
    values |= {v for _, labels in hm for _, v in labels}
    leaked = [x for x in ids + [u.id for u in users + more_users] if x in values]
    assert leaked == []

