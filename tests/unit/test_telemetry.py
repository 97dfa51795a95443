"""Tracing set-up (dfms/runtime/telemetry.py) and the spans DFMS writes by hand.

The spans are recorded by an in-memory exporter installed as this process's global
provider (once: OpenTelemetry allows one), the way a service installs its OTLP one.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from aiokafka.errors import KafkaTimeoutError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, ParentBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

import dfms
from dfms.chunkservice import client as chunk_client
from dfms.config import ConfigError, TelemetryConfig, load_config
from dfms.events.consumer import producer_links
from dfms.events.envelope import Event, current_trace_context
from dfms.events.relay import OutboxRelay
from dfms.gateway.middleware import request_id_middleware
from dfms.gateway.tracing import REDACTED, redacted_url, request_span_middleware
from dfms.runtime.logs import TextFormatter, TraceContextFilter
from dfms.runtime.ops import add_ops_routes
from dfms.runtime.service import BackgroundService, PassStats
from dfms.runtime.telemetry import (
    make_exporter,
    make_provider,
    make_sampler,
    resolve,
    sampled_only_asyncpg,
    sampled_span,
    setup_tracing,
    span_dropped,
    trace_exemplar,
)
from dfms.storage import NodeUnavailable
from dfms.storage import client as storage_client
from dfms.storage.client import NodeClient

EXPORTER = InMemorySpanExporter()
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
        _INSTALLED.append(provider)
    if not _INSTALLED:
        pytest.skip("another test installed the global tracer provider first")
    EXPORTER.clear()
    yield EXPORTER


_INSTALLED: list[TracerProvider] = []


def finished(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


# -- settings ------------------------------------------------------------------------------

def test_no_endpoint_means_tracing_off() -> None:
    assert not resolve(TelemetryConfig(), {}).enabled
    assert setup_tracing("gateway", TelemetryConfig(), {}) is None


def test_config_endpoint_is_a_base_url() -> None:
    settings = resolve(TelemetryConfig(endpoint="http://collector:4318/"), {})
    assert settings.enabled
    assert settings.traces_url == "http://collector:4318/v1/traces"
    assert (settings.sampler, settings.sampler_arg) == ("parentbased_traceidratio", 0.01)


def test_standard_variables_win_over_the_config() -> None:
    cfg = TelemetryConfig(endpoint="http://config:4318", sampler="always_off")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318", "OTEL_TRACES_SAMPLER":
           "always_on", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    settings = resolve(cfg, env)
    assert settings.traces_url == "http://env:4318/v1/traces"
    assert (settings.sampler, settings.sampler_arg) == ("always_on", 0.5)
    full = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4318/custom"}
    assert resolve(cfg, full).traces_url == "http://env:4318/custom"


def test_grpc_endpoint_is_taken_as_is() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317", "OTEL_EXPORTER_OTLP_PROTOCOL":
           "grpc"}
    settings = resolve(TelemetryConfig(), env)
    assert (settings.protocol, settings.traces_url) == ("grpc", "http://env:4317")


@pytest.mark.parametrize("env", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_SDK_DISABLED": "1"}])
def test_sdk_disabled_wins_over_an_endpoint(env: dict[str, str]) -> None:
    cfg = TelemetryConfig(endpoint="http://collector:4318")
    assert not resolve(cfg, env).enabled
    assert not resolve(TelemetryConfig(endpoint="http://c:4318", enabled=False), {}).enabled


def test_unsupported_variable_values_fall_back_to_the_config() -> None:
    env = {"OTEL_TRACES_SAMPLER": "jaeger_remote", "OTEL_TRACES_SAMPLER_ARG": "2",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    settings = resolve(TelemetryConfig(endpoint="http://c:4318"), env)
    assert (settings.sampler, settings.sampler_arg, settings.protocol) == (
        "parentbased_traceidratio", 0.01, "http/protobuf")


def test_config_section_is_validated() -> None:
    cfg = load_config(env={"DFMS_TELEMETRY__ENDPOINT": "http://c:4318",
                           "DFMS_TELEMETRY__SAMPLER_ARG": "1"})
    assert (cfg.telemetry.endpoint, cfg.telemetry.sampler_arg) == ("http://c:4318", 1.0)
    with pytest.raises(ConfigError):
        load_config(env={"DFMS_TELEMETRY__SAMPLER": "sometimes"})
    with pytest.raises(ConfigError):
        load_config(env={"DFMS_TELEMETRY__SAMPLER_ARG": "1.5"})


def test_samplers() -> None:
    sampler = make_sampler("parentbased_traceidratio", 0.25)
    assert isinstance(sampler, ParentBased)
    assert "TraceIdRatioBased{0.25}" in make_sampler("traceidratio", 0.25).get_description()


@pytest.mark.parametrize("name", ["always_on", "parentbased_always_on"])
def test_a_client_call_outside_any_trace_starts_none(name: str) -> None:
    """A lone query or node call is not a trace; inside a sampled request it is kept."""
    sampler = make_sampler(name, 1.0)
    root = sampler.should_sample(None, 0xABC, "SELECT", SpanKind.CLIENT)
    assert root.decision is Decision.DROP
    assert sampler.should_sample(None, 0xABC, "GET /x", SpanKind.SERVER).decision is (
        Decision.RECORD_AND_SAMPLE)
    sampled = trace.set_span_in_context(NonRecordingSpan(SpanContext(
        0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    assert sampler.should_sample(sampled, 0xABC, "SELECT", SpanKind.CLIENT).decision is (
        Decision.RECORD_AND_SAMPLE)


def test_provider_resource_names_the_service() -> None:
    settings = resolve(TelemetryConfig(endpoint="http://c:4318", environment="staging"), {})
    provider = make_provider("chunk_service", settings, InMemorySpanExporter())
    try:
        attrs = provider.resource.attributes
        assert attrs["service.name"] == "dfms-chunk-service"
        assert attrs["service.version"] == dfms.__version__
        assert attrs["deployment.environment"] == "staging"
    finally:
        provider.shutdown()


def test_no_endpoint_starts_no_thread() -> None:
    before = threading.active_count()
    setup_tracing("gateway", TelemetryConfig(), {})
    assert threading.active_count() == before


# -- logs ----------------------------------------------------------------------------------

def _log_line(logger_name: str) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    handler.addFilter(TraceContextFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        logger.warning("hello")
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_log_lines_carry_the_active_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert "trace_id" not in _log_line("dfms.test.logs")
    with tracer.start_as_current_span("work") as span:
        line = _log_line("dfms.test.logs")
    ctx = span.get_span_context()
    assert f"trace_id={trace.format_trace_id(ctx.trace_id)}" in line
    assert f"span_id={trace.format_span_id(ctx.span_id)}" in line


# -- events --------------------------------------------------------------------------------

def _event(headers: dict[str, str]) -> Event:
    return Event(uuid.uuid4(), "file.uploaded", datetime.now(UTC), 1, {}, topic="dfms.files",
                 headers=headers)


def test_consumer_links_to_the_emitting_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("upload") as span:
        context = current_trace_context()
    assert context is not None
    links = producer_links(_event(context))
    assert [link.context.trace_id for link in links] == [span.get_span_context().trace_id]
    assert producer_links(_event({})) == []
    assert producer_links(_event({"traceparent": "garbage"})) == []


# -- gateway -------------------------------------------------------------------------------

def test_share_secrets_are_redacted_from_the_url() -> None:
    req = make_mocked_request("GET", "/s/sekrit-token?password=hunter2&download=1",
                              match_info={"token": "sekrit-token"})
    path, query = redacted_url(req) or ("", "")
    assert "sekrit" not in path and "hunter2" not in query
    assert path == f"/s/{REDACTED}" and "download=1" in query
    plain = make_mocked_request("GET", "/api/v1/files/abc", match_info={"file_id": "abc"})
    assert redacted_url(plain) is None


# -- hand-written spans ---------------------------------------------------------------------

class OnePass(BackgroundService):
    name = "one_pass"

    async def run_once(self) -> PassStats:
        stats = PassStats()
        stats.add("repaired", 2)
        return stats


async def test_background_pass_is_a_root_span(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller"):
        await OnePass()._timed_pass()
    (span,) = finished(spans, "one_pass pass")
    assert span.parent is None
    assert span.attributes is not None
    assert span.attributes["dfms.pass.repaired"] == 2
    assert span.attributes["dfms.pass.errors"] == 0


async def test_s3_call_span_has_node_operation_and_outcome(spans: InMemorySpanExporter
                                                           ) -> None:
    cfg = load_config(env={"DFMS_S3__SECRET_KEY": "x", "DFMS_S3__REQUEST_TIMEOUT_S": "2"}).s3
    async with NodeClient("node-x", "http://127.0.0.1:9", cfg) as client:
        # Inside a request: outside any span a client call starts no trace (NoClientRoots).
        with trace.get_tracer("test").start_as_current_span("request"), \
                pytest.raises(NodeUnavailable):
            await client.ping()
    (span,) = [s for s in finished(spans, "s3 ping") if s.attributes
               and s.attributes["dfms.node.id"] == "node-x"]
    assert span.kind is trace.SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["dfms.node.id"] == "node-x"
    assert span.attributes["dfms.s3.operation"] == "ping"
    assert span.attributes["http.request.method"] == "HEAD"
    assert span.attributes["dfms.s3.outcome"] == "NodeUnavailable"
    assert span.status.status_code is StatusCode.ERROR


# -- the event relay's publish --------------------------------------------------------------

STORED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class FakeProducer:
    """Acknowledges every message at partition 2, offset 41; refuses topic ``dfms.broken``."""

    def __init__(self) -> None:
        self.headers: dict[str, dict[str, bytes]] = {}

    async def send(self, topic: str, *, value: bytes, key: bytes,
                   headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        self.headers[topic] = dict(headers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic == "dfms.broken":
            future.set_exception(KafkaTimeoutError())
        else:
            future.set_result(SimpleNamespace(partition=2, offset=41))
        return future


def outbox_row(row_id: int, topic: str, trace_context: str | None) -> dict[str, Any]:
    return {"id": row_id, "event_id": uuid.uuid4(), "topic": topic, "key": "k",
            "type": "chunk.under_replicated", "payload": "{}", "schema_version": 1,
            "occurred_at": datetime.now(UTC), "trace_context": trace_context}


async def test_relay_publish_is_a_producer_span_of_the_stored_trace(
        spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, producer = OutboxRelay(load_config(env={})), FakeProducer()

    async def get_producer() -> FakeProducer:
        return producer

    async def check_topics(*_: object) -> None:
        return None

    monkeypatch.setattr(relay, "_get_producer", get_producer)
    monkeypatch.setattr(relay, "_check_topics", check_topics)
    stored = json.dumps({"traceparent": STORED_PARENT})
    rows = [outbox_row(1, "dfms.chunks", stored), outbox_row(2, "dfms.broken", None)]
    published, failures, _ = await relay._publish(rows)  # type: ignore[arg-type]
    assert [r["id"] for r in published] == [1] and list(failures.values()) == [[2]]
    (span,) = finished(spans, "dfms.chunks publish")
    ctx = span.get_span_context()
    assert span.kind is trace.SpanKind.PRODUCER and span.parent is not None
    assert (f"{ctx.trace_id:032x}", f"{span.parent.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka", "messaging.operation": "publish",
        "messaging.destination.name": "dfms.chunks",
        "messaging.message.id": str(rows[0]["event_id"]),
        "dfms.event.type": "chunk.under_replicated",
        "messaging.kafka.destination.partition": 2, "messaging.kafka.message.offset": 41}
    # The consumer links to the publish: its context is what the message carries.
    sent = producer.headers["dfms.chunks"]["traceparent"].decode()
    assert sent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    (refused,) = finished(spans, "dfms.broken publish")
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.events[0].name == "exception"


# -- exemplars -------------------------------------------------------------------------------

def test_exemplar_is_the_sampled_trace() -> None:
    assert trace_exemplar() is None
    with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
        exemplar = trace_exemplar()
    assert exemplar == {"trace_id": trace.format_trace_id(span.get_span_context().trace_id)}
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with unsampled.start_as_current_span("dropped"):
        assert trace_exemplar() is None


def http_exemplars(route: str) -> list[dict[str, str]]:
    """The exemplars on the gateway latency histogram's buckets for ``route``."""
    return [dict(sample.exemplar.labels) for metric in REGISTRY.collect()
            if metric.name == "dfms_http_request_seconds" for sample in metric.samples
            if sample.labels.get("route") == route and sample.exemplar is not None]


async def test_http_latency_carries_the_request_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[request_span_middleware(provider.get_tracer("t")),
                                       request_id_middleware])
    app.router.add_get("/traced/exemplar", ok)
    app.router.add_get("/unsampled/exemplar", ok)
    unsampled = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"}  # the caller said no
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/traced/exemplar")).status == 200
        assert (await client.get("/unsampled/exemplar", headers=unsampled)).status == 200
    (span,) = exporter.get_finished_spans()
    trace_id = trace.format_trace_id(span.context.trace_id)
    assert http_exemplars("/traced/exemplar") == [{"trace_id": trace_id}]
    assert http_exemplars("/unsampled/exemplar") == []


async def test_metrics_carry_exemplars_in_openmetrics() -> None:
    registry = CollectorRegistry()
    latency = Histogram("dfms_test_seconds", "test", registry=registry)
    with TracerProvider().get_tracer("test").start_as_current_span("work"):
        latency.observe(0.2, trace_exemplar())
    app = web.Application()
    add_ops_routes(app, "test", {}, registry)
    async with TestClient(TestServer(app)) as client:
        plain = await (await client.get("/metrics")).text()
        resp = await client.get("/metrics", headers={"Accept": OPENMETRICS})
        text = await resp.text()
    assert "trace_id" not in plain
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert '# {trace_id="' in text


def test_resource_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=production")
    settings = resolve(TelemetryConfig(endpoint="http://c:4318"), {})
    provider = make_provider("gateway", settings, InMemorySpanExporter())
    try:
        assert provider.resource.attributes["deployment.environment"] == "production"
        assert provider.resource.attributes["service.name"] == "dfms-gateway"
    finally:
        provider.shutdown()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exporter_follows_the_protocol(protocol: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL":
           protocol}
    exporter = make_exporter(resolve(TelemetryConfig(), env))
    try:
        assert ("grpc" in type(exporter).__module__) == (protocol == "grpc")
    finally:
        exporter.shutdown()


async def test_queries_outside_a_recorded_span_skip_the_instrumentation() -> None:
    """The asyncpg instrumentation builds a span's attributes before the sampler speaks;
    where the span could not be kept, it is not run at all (bench_tracing.py)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = sampled_only_asyncpg()
    instrumentor.instrument(tracer_provider=provider)
    instrumentor.uninstrument()  # its settings stay; asyncpg is left as it was
    tracer, started = instrumentor._tracer, []

    class CountingTracer:
        def start_as_current_span(self, name: str, **kwargs: Any) -> Any:
            started.append(name)
            return tracer.start_as_current_span(name, **kwargs)

    instrumentor._tracer = CountingTracer()
    conn = SimpleNamespace(_params=SimpleNamespace(database="dfms", user="dfms"),
                           _addr=("127.0.0.1", 5432))
    calls: list[str] = []

    async def fetch(query: str) -> str:
        calls.append(query)
        return "rows"

    unsampled = trace.set_span_in_context(NonRecordingSpan(SpanContext(
        0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0))))
    token = otel_context.attach(unsampled)
    try:
        assert await instrumentor._do_execute(fetch, conn, ("SELECT 1",), {}) == "rows"
    finally:
        otel_context.detach(token)
    assert exporter.get_finished_spans() == () and started == []  # not even a dropped span
    with provider.get_tracer("test").start_as_current_span("request"):
        assert await instrumentor._do_execute(fetch, conn, ("SELECT 2",), {}) == "rows"
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["SELECT", "request"] and calls == ["SELECT 1", "SELECT 2"]


# -- unsampled requests start no spans of their own -------------------------------------------

def unsampled_request() -> otel_context.Context:
    """The context inside a request the sampler did not keep (or a remote one's)."""
    return trace.set_span_in_context(NonRecordingSpan(SpanContext(
        0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0))))


class CountingTracer:
    """Wraps a tracer and notes the name of every span asked of it."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer, self.started = tracer, list[str]()

    def start_as_current_span(self, name: str, **kwargs: Any) -> Any:
        self.started.append(name)
        return self.tracer.start_as_current_span(name, **kwargs)

    def start_span(self, name: str, **kwargs: Any) -> Any:
        self.started.append(name)
        return self.tracer.start_span(name, **kwargs)


def test_spans_are_skipped_only_where_they_would_be_dropped(
        spans: InMemorySpanExporter) -> None:
    assert span_dropped(SpanKind.CLIENT) and not span_dropped()  # no span: a root may start
    token = otel_context.attach(unsampled_request())
    try:
        assert span_dropped() and span_dropped(SpanKind.CLIENT)
        with sampled_span(trace.get_tracer("test"), "child") as span:
            assert not span.is_recording()
            # The request's own (unsampled) context stays current: it is what goes on.
            assert trace.get_current_span().get_span_context().span_id == 0xDEF
    finally:
        otel_context.detach(token)
    with trace.get_tracer("test").start_as_current_span("request"):
        assert not span_dropped(SpanKind.CLIENT)
        with sampled_span(trace.get_tracer("test"), "child", SpanKind.CLIENT) as span:
            assert span.is_recording()
    assert [s.name for s in finished(spans, "child")] == ["child"]


async def test_an_unsampled_request_starts_no_s3_span(spans: InMemorySpanExporter,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Nine requests in ten at the default ratio: their node calls do no span work at
    all; a sampled request's call still gets its span with the node and outcome."""
    counting = CountingTracer(storage_client._TRACER)
    monkeypatch.setattr(storage_client, "_TRACER", counting)
    cfg = load_config(env={"DFMS_S3__SECRET_KEY": "x", "DFMS_S3__REQUEST_TIMEOUT_S": "2"}).s3
    async with NodeClient("node-y", "http://127.0.0.1:9", cfg) as client:
        token = otel_context.attach(unsampled_request())
        try:
            with pytest.raises(NodeUnavailable):
                await client.ping()
        finally:
            otel_context.detach(token)
        assert counting.started == []
        with trace.get_tracer("test").start_as_current_span("request"), \
                pytest.raises(NodeUnavailable):
            await client.ping()
    assert counting.started == ["s3 ping"]
    (span,) = [s for s in finished(spans, "s3 ping") if s.attributes
               and s.attributes["dfms.node.id"] == "node-y"]
    assert span.attributes is not None
    assert span.attributes["dfms.s3.outcome"] == "NodeUnavailable"


def test_an_unsampled_download_starts_no_span_but_carries_the_decision(
        spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's gRPC client span is skipped under an unsampled request, and the
    call carries that request's context (flags 00), so the chunk service drops its
    spans too instead of starting a trace of its own."""
    counting = CountingTracer(chunk_client._TRACER)
    monkeypatch.setattr(chunk_client, "_TRACER", counting)
    token = otel_context.attach(unsampled_request())
    try:
        span = chunk_client._download_span()
        with chunk_client._client_span("Upload"):
            metadata = dict(chunk_client._trace_metadata())
    finally:
        otel_context.detach(token)
    assert span is trace.INVALID_SPAN and counting.started == []
    assert metadata["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-00"
    with trace.get_tracer("test").start_as_current_span("request"):
        span = chunk_client._download_span()
    assert span.is_recording()
    span.end()
    assert counting.started == [f"{chunk_client.GRPC_SERVICE}/Download"]
