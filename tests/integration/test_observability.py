"""`dfms up --observability` with a real Prometheus scraping a real cluster.

A dedicated cluster (not the session's: a node is killed here) runs a short workload:
uploads, downloads, a dedup hit, node-2 killed and started again. Then every query of
every Grafana dashboard panel returns at least one series from Prometheus's HTTP API,
every alert rule is loaded, and DfmsStorageNodeDown fired while node-2 was down (its
`for:` shortened in a test copy of the rules, loaded with POST /-/reload). The trace UI
(Arize Phoenix, installed by `make test`) holds each upload's trace across services.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from dfms.localstack import observability
from tests.conftest import TEST_CLUSTER_CONFIG
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle, make_data_dir
from tests.support.grafana import dashboards, panel_queries, variable_queries

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODE_DOWN = "DfmsStorageNodeDown"
KILLED = "node-2"
SHORT_FOR = "5s"
# Probes every second: the node is marked down about 3 s after the kill.
CONFIG = {"healthmon": {"interval_s": 1.0}}
WAIT_S = 120.0
# Where `make trace-ui` (a prerequisite of `make test`) puts Phoenix.
PHOENIX = Path(__file__).resolve().parents[2] / ".venv-trace-ui" / "bin" / "phoenix"

T = TypeVar("T")


UPLOAD_ROUTE = "POST /api/v1/files/upload"


@dataclass
class Observed:
    cluster: ClusterHandle
    prometheus: str
    rules: dict[str, Any]  # the test copy loaded into Prometheus
    fired: list[dict[str, Any]] = field(default_factory=list)  # node-down alerts seen
    uploader: str = ""  # the user id of the workload's uploads


async def prom_get(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", body
        return body["data"]


async def poll(what: str, check: Callable[[], Awaitable[T | None]],
                  timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(1.0)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s")


def short_rules() -> dict[str, Any]:
    """alerts.yml with the node-down rule's `for:` shortened."""
    doc = yaml.safe_load(observability.ALERT_RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == NODE_DOWN:
                rule["for"] = SHORT_FOR
    return doc


async def load_rules(session: aiohttp.ClientSession, base: str, rules_dir: Path) -> dict[str, Any]:
    doc = short_rules()
    (rules_dir / observability.ALERT_RULES.name).write_text(yaml.safe_dump(doc))
    async with session.post(f"{base}/-/reload") as resp:
        assert resp.status == 200, await resp.text()

    async def reloaded() -> bool:
        data = await prom_get(session, f"{base}/api/v1/rules", type="alert")
        return any(r["name"] == NODE_DOWN and r["duration"] == 5
                   for g in data["groups"] for r in g["rules"])

    await poll("the test copy of the rules loaded", reloaded)
    return doc


async def files_workload(api: Api, user: ApiUser, tag: str) -> None:
    """Uploads, downloads of each, one upload of bytes already stored (dedup), and one
    download of a file that does not exist."""
    blobs = [os.urandom(200_000 + i) for i in range(3)]
    ids = []
    for i, blob in enumerate(blobs):
        status, body = await api.upload(user, f"{tag}-{i}.bin", blob)
        assert status == 201, body
        ids.append(body["id"])
    status, body = await api.upload(user, f"{tag}-copy.bin", blobs[0])
    assert status == 201, body
    for file_id, blob in zip(ids, blobs, strict=True):
        status, got, _ = await api.request("GET", f"/files/{file_id}/download", user)
        assert status == 200 and got == blob
    status, _, _ = await api.request("GET", f"/files/{uuid.uuid4()}/download", user)
    assert status == 404  # a client error, for the 4xx panels


async def node_down_alerts(session: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    data = await prom_get(session, f"{base}/api/v1/alerts")
    return [a for a in data["alerts"] if a["labels"].get("alertname") == NODE_DOWN
            and a["labels"].get("node") == KILLED and a["state"] == "firing"]


async def kill_and_revive(observed: Observed, session: aiohttp.ClientSession,
                          api: Api, user: ApiUser) -> None:
    base, cluster = observed.prometheus, observed.cluster
    await cluster.control("kill", KILLED)
    await files_workload(api, user, "outage")  # W of N nodes still take writes
    observed.fired = await poll(f"{NODE_DOWN} firing for {KILLED}",
                                lambda: node_down_alerts(session, base))
    await cluster.control("start", KILLED)

    async def healthy() -> bool:
        data = await prom_get(session, f"{base}/api/v1/query", query=(
            f'dfms_node_health{{node="{KILLED}", state="healthy"}} == 1'))
        return bool(data["result"]) and not await node_down_alerts(session, base)

    await poll(f"{KILLED} healthy again and the alert resolved", healthy)


def up_env() -> dict[str, str]:
    """Ours without DFMS_* (as ClusterHandle does), plus the trace UI's executable."""
    phoenix = Path(os.environ.get(observability.PHOENIX_ENV) or PHOENIX)
    assert phoenix.exists(), f"no trace UI at {phoenix}: run `make trace-ui`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    return env | {observability.PHOENIX_ENV: str(phoenix)}


def write_config(where: Path) -> Path:
    doc = yaml.safe_load(TEST_CLUSTER_CONFIG.read_text())
    for section, values in CONFIG.items():
        doc.setdefault(section, {}).update(values)
    path = where / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
async def observed() -> AsyncIterator[Observed]:
    data_dir = make_data_dir("dfms-obs-")
    cluster = ClusterHandle(data_dir=data_dir / "cluster")
    cluster.data_dir.mkdir()
    ok = False
    try:
        await asyncio.to_thread(cluster.start, "--observability",
                                config=write_config(data_dir), env=up_env())
        prom = cluster.info["prometheus"]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            rules = await load_rules(session, prom["url"], Path(prom["rules_dir"]))
            result = Observed(cluster, prom["url"], rules)
            api = Api(cluster.gateway_url, session)
            user = await api.register()
            result.uploader = str(user.id)
            await files_workload(api, user, "before")
            await kill_and_revive(result, session, api, user)
            await files_workload(api, user, "after")
        yield result
        ok = True
    finally:
        code = await asyncio.to_thread(cluster.stop)
        if ok and code == 0:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"dfms up exited with {code}; logs kept in {data_dir}")


def test_up_prints_and_records_prometheus(observed: Observed) -> None:
    info = observed.cluster.info["prometheus"]
    assert info["url"] == observed.prometheus and info["pid"]
    assert f"prometheus           {observed.prometheus}" in observed.cluster.log_text()
    assert Path(info["config"]).is_relative_to(observed.cluster.data_dir)


async def test_every_alert_rule_is_loaded(observed: Observed) -> None:
    async with aiohttp.ClientSession() as session:
        data = await prom_get(session, f"{observed.prometheus}/api/v1/rules", type="alert")
    loaded = {r["name"] for g in data["groups"] for r in g["rules"]}
    wanted = {r["alert"] for g in observed.rules["groups"] for r in g["rules"]}
    assert loaded == wanted
    assert all(r["health"] == "ok" for g in data["groups"] for r in g["rules"])


def test_node_down_fired_while_the_node_was_killed(observed: Observed) -> None:
    assert [a["labels"]["severity"] for a in observed.fired] == ["critical"]
    assert observed.fired[0]["annotations"]["summary"] == f"Storage node {KILLED} is down"


async def test_every_target_is_scraped(observed: Observed) -> None:
    async with aiohttp.ClientSession() as session:
        data = await prom_get(session, f"{observed.prometheus}/api/v1/targets")
    jobs = {t["labels"]["job"]: t["health"] for t in data["activeTargets"]}
    services = observed.cluster.info["services"]
    assert jobs == {**{observability.job_name(s): "up" for s in services}, "prometheus": "up"}


async def test_every_dashboard_query_returns_series(observed: Observed) -> None:
    queries = {f"{name}: {where}": expr for name, dash in dashboards().items()
               for where, expr in {**panel_queries(dash), **variable_queries(dash)}.items()}
    assert queries
    empty: dict[str, str] = dict(queries)
    async with aiohttp.ClientSession() as session:
        async def all_answered() -> bool:
            for where, expr in list(empty.items()):
                data = await prom_get(session, f"{observed.prometheus}/api/v1/query",
                                      query=expr)
                if data["result"]:
                    del empty[where]
            return not empty

        # Gauges computed on an interval (the health monitor's, every 30 s) take a while;
        # what is still empty after that is reported all at once.
        with contextlib.suppress(AssertionError):
            await poll("every panel query answered", all_answered, timeout_s=90.0)
    assert empty == {}, "queries that returned no series"


def flat(attrs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Span attributes with dotted keys (Phoenix may nest them by their dots)."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


async def phoenix_spans(session: aiohttp.ClientSession, api: str,
                        **params: str) -> list[dict[str, Any]]:
    async with session.get(api, params={"limit": "1000", **params}) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["data"])


async def test_an_upload_is_one_trace_in_the_trace_ui(observed: Observed) -> None:
    """Every request is traced on the local stack (sampling 1.0): an upload of the
    workload is one trace in Phoenix holding the gateway's request span, the gRPC call to
    the chunk service, the chunk write, the S3 puts and PostgreSQL."""
    ui = observed.cluster.info["trace_ui"]
    assert f"traces               {ui['url']}" in observed.cluster.log_text()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def stored_upload() -> list[dict[str, Any]] | None:
            """The spans of one of the workload's uploads that wrote new bytes (a dedup
            hit puts nothing on the nodes)."""
            for root in await phoenix_spans(session, ui["spans_api"], name=UPLOAD_ROUTE):
                if flat(root["attributes"]).get("enduser.id") != observed.uploader:
                    continue
                spans = await phoenix_spans(session, ui["spans_api"],
                                            trace_id=root["context"]["trace_id"])
                if {"chunk write", "s3 put"} <= {s["name"] for s in spans}:
                    return spans
            return None

        spans = await poll("an upload's trace with its chunk write and S3 puts",
                           stored_upload, 60.0)
    trace_id = spans[0]["context"]["trace_id"]
    rpc = [s for s in spans if flat(s["attributes"]).get("rpc.system") == "grpc"]
    assert len(rpc) >= 2, "the gRPC client span (gateway) and server span (chunk service)"
    assert any(flat(s["attributes"]).get("db.system") == "postgresql" for s in spans)
    assert all(s["context"]["trace_id"] == trace_id for s in spans)
