"""Traces leave the cluster over the network, to a real OTLP receiver (oteltap).

A dedicated cluster runs with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at an oteltap
receiver in this process. One upload, with one node stopped so the chunk is written to
fewer than n nodes, must give:

* one trace holding the gateway's request span (named by route template, with the user
  id), the gateway's gRPC client span, the chunk service's gRPC server span, the chunk
  write and an S3 call to a node;
* the event relay's PRODUCER span publishing the ``chunk.under_replicated`` event that
  upload emitted, in the upload's trace;
* a later span of the replication manager consuming that event, linked to the publish.

A pass run by hand (``dfms gc-worker --once``) is traced like the service's passes, and
its spans are sent before the command exits.

The suite's own cluster has no endpoint: there, nothing about exporting appears in the
logs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from dfms.events.topics import CHUNK_UNDER_REPLICATED
from tests.conftest import TEST_CLUSTER_CONFIG
from tests.support.api import Api
from tests.support.cluster import ClusterHandle, make_data_dir

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

UPLOAD_ROUTE = "POST /api/v1/files/upload"
STOPPED_NODE = "node-3"
SPAN_WAIT_S = 60.0
CONSUMER_WAIT_S = 150.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value") or "string_value")
    return out


class Collected:
    """Every span the receiver got, gathered in the background."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def run(self, receiver: OtelTapHttpProtobufReceiver) -> None:
        async for span in receiver.stream_traces():
            self.spans.append(span)

    async def wait_for(self, what: str, match: Callable[[Span], bool],
                       timeout_s: float = SPAN_WAIT_S) -> Span:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for span in self.spans:
                if match(span):
                    return span
            await asyncio.sleep(0.2)
        names = sorted({s.name for s in self.spans})
        raise AssertionError(f"no {what} span within {timeout_s:.0f} s; seen: {names}")


@pytest.fixture(scope="module")
async def collected() -> AsyncIterator[tuple[Collected, int]]:
    port = free_port()
    settings = OtelTapHttpProtobufReceiverSettings(http_port=port)
    async with OtelTapHttpProtobufReceiver(settings) as receiver:
        spans = Collected()
        task = asyncio.create_task(spans.run(receiver))
        try:
            yield spans, port
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="module")
async def traced_cluster(collected: tuple[Collected, int]) -> AsyncIterator[ClusterHandle]:
    """A cluster of its own whose services export every trace to the receiver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DFMS_", "OTEL_"))}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collected[1]}",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            # Export within a fraction of a second instead of the SDK's 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "200"}
    data_dir = make_data_dir("dfms-tracing-")
    handle = ClusterHandle(data_dir=data_dir / "cluster")
    handle.data_dir.mkdir()
    await asyncio.to_thread(handle.start, "--nodes", "3", config=TEST_CLUSTER_CONFIG,
                            env=env)
    try:
        yield handle
    finally:
        code = await asyncio.to_thread(handle.stop)
        if code == 0:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"tracing cluster (dfms up exit code {code}): logs kept in {data_dir}")


def is_upload(span: Span) -> bool:
    return span.name == UPLOAD_ROUTE and span.kind == Span.SPAN_KIND_SERVER


async def upload_once(cluster: ClusterHandle, *, download: bool = False) -> str:
    """Register, upload fresh bytes (and read them back); the new user's id."""
    data = os.urandom(64 * 1024)
    async with aiohttp.ClientSession() as session:
        api = Api(cluster.gateway_url, session)
        user = await api.register()
        status, body = await api.upload(user, "traced.bin", data)
        assert status == 201, body
        if download:
            status, got, _ = await api.request("GET", f"/files/{body['id']}/download", user)
            assert (status, got) == (200, data)
    return str(user.id)


async def upload_root(spans: Collected, user_id: str) -> bytes:
    """The upload's request span, checked; its trace id."""
    root = await spans.wait_for("gateway upload", is_upload)
    assert not root.parent_span_id, "the upload's request span is the trace's root"
    root_attrs = attrs(root)
    assert root_attrs["http.route"] == "/api/v1/files/upload"
    assert root_attrs["enduser.id"] == user_id
    assert not any("Bearer" in str(v) for v in root_attrs.values())
    return bytes(root.trace_id)


async def check_upload_trace(spans: Collected, trace_id: bytes) -> None:
    """The chunk service's and the nodes' parts of the upload are in its trace."""
    def in_trace(match: Callable[[Span], bool]) -> Callable[[Span], bool]:
        return lambda s: s.trace_id == trace_id and match(s)

    grpc_client = await spans.wait_for("gRPC client", in_trace(
        lambda s: s.kind == Span.SPAN_KIND_CLIENT and attrs(s).get("rpc.system") == "grpc"))
    grpc_server = await spans.wait_for("chunk service gRPC server", in_trace(
        lambda s: s.kind == Span.SPAN_KIND_SERVER and attrs(s).get("rpc.system") == "grpc"))
    assert grpc_server.parent_span_id == grpc_client.span_id, "context crossed the gRPC call"
    write = await spans.wait_for("chunk write", in_trace(lambda s: s.name == "chunk write"))
    assert attrs(write)["dfms.chunk.dedup_hit"] is False
    assert 1 <= int(str(attrs(write)["dfms.chunk.replicas_written"])) < 3
    put = await spans.wait_for("S3 put", in_trace(
        lambda s: s.name == "s3 put" and attrs(s).get("dfms.s3.outcome") == "ok"))
    assert attrs(put)["dfms.s3.bytes"] == 64 * 1024
    assert attrs(put)["dfms.node.id"] != STOPPED_NODE
    assert (attrs(put)["dfms.s3.operation"], attrs(put)["http.request.method"]) == (
        "put", "PUT")
    assert put.parent_span_id == write.span_id, "a node call is a child of its chunk write"
    await spans.wait_for("PostgreSQL", in_trace(lambda s: attrs(s).get("db.system")
                                                == "postgresql"))


async def test_one_upload_is_one_trace_across_services(
        traced_cluster: ClusterHandle, collected: tuple[Collected, int]) -> None:
    spans, _ = collected
    await traced_cluster.control("stop", STOPPED_NODE)  # so the chunk is under-replicated
    user_id = await upload_once(traced_cluster, download=True)
    trace_id = await upload_root(spans, user_id)
    await check_upload_trace(spans, trace_id)

    read_root = await spans.wait_for("gateway download", lambda s: (
        s.name == "GET /api/v1/files/{file_id}/download" and s.kind == Span.SPAN_KIND_SERVER))
    read = await spans.wait_for("chunk read", lambda s: (
        s.trace_id == read_root.trace_id and s.name == "chunk read"))
    assert attrs(read)["dfms.chunk.bytes"] == 64 * 1024

    consumer = await spans.wait_for("event consumer", lambda s: (
        s.kind == Span.SPAN_KIND_CONSUMER and any(link.trace_id == trace_id
                                                  for link in s.links)),
        timeout_s=CONSUMER_WAIT_S)
    assert consumer.trace_id != trace_id, "the consumer's work is a trace of its own"
    assert attrs(consumer)["dfms.event.type"] == CHUNK_UNDER_REPLICATED
    publish = await spans.wait_for("event relay publish", lambda s: (
        s.trace_id == trace_id and s.kind == Span.SPAN_KIND_PRODUCER
        and attrs(s).get("dfms.event.type") == CHUNK_UNDER_REPLICATED))
    assert (attrs(publish)["messaging.system"], attrs(publish)["messaging.operation"]) == (
        "kafka", "publish")
    assert any(link.span_id == publish.span_id for link in consumer.links)


async def test_a_pass_run_by_hand_is_traced_and_flushed(
        traced_cluster: ClusterHandle, collected: tuple[Collected, int]) -> None:
    spans, port = collected
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DFMS_", "OTEL_"))}
    env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on"}  # the SDK's 5 s batch delay stays
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dfms", "--config", traced_cluster.info["config_path"],
        "gc-worker", "--once", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()
    # Already exported when the command returned: the flush on exit sent it.
    root = await spans.wait_for("manual GC pass", lambda s: (
        s.name == "gc_worker pass" and attrs(s).get("dfms.pass.manual") is True), 2.0)
    assert attrs(root)["dfms.pass.errors"] == 0
    assert not root.parent_span_id
    await spans.wait_for("PostgreSQL in the manual pass", lambda s: (
        s.trace_id == root.trace_id and attrs(s).get("db.system") == "postgresql"), 2.0)


async def test_no_endpoint_no_export_in_the_logs(cluster: ClusterHandle) -> None:
    """The suite's cluster runs without an endpoint: one upload, and no service says a
    word about tracing or exporting (no exporter exists, so nothing fails or retries)."""
    log = cluster.log_text()
    assert not cluster.log_path or "started" in log, "the cluster's log is where we look"
    assert "tracing on" not in log, "a service set up tracing without an endpoint"
    before = len(log)
    await upload_once(cluster)
    await asyncio.sleep(1.0)
    new = cluster.log_text()[before:].lower()
    for needle in ("tracing on", "opentelemetry", "otlp", "failed to export",
                   "transient error"):
        assert needle not in new, f"{needle!r} in the logs of a cluster without an endpoint"
