"""The request spans DFMS writes itself: the gateway's HTTP SERVER span and the chunk
service's gRPC server interceptor. Both let the sampler decide first and, for a request
or call whose span is dropped, do nothing more (benchmarks/bench_tracing.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from dfms.gateway import tracing
from dfms.gateway.tracing import REDACTED, request_span_middleware, set_user
from dfms.runtime.grpc_tracing import SampledOnlyServerInterceptor, unsampled_caller

TRACE_ID = "ab" * 16
PARENT_ID = "cd" * 8
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def provider_for(exporter: InMemorySpanExporter, **kw: object) -> TracerProvider:
    provider = TracerProvider(**kw)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


# -- the gateway's request span ------------------------------------------------------------

async def traced_app(tracer: trace.Tracer) -> TestClient[web.Request, web.Application]:
    async def stat(request: web.Request) -> web.Response:
        set_user("user-7")
        return web.json_response({"id": request.match_info["file_id"]})

    async def share(request: web.Request) -> web.Response:
        return web.Response(text="shared")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[request_span_middleware(tracer)])
    app.router.add_get("/api/v1/files/{file_id}", stat)
    app.router.add_get("/s/{token}", share)
    app.router.add_get("/broken", broken)
    app.router.add_get("/health", ok)
    return TestClient(TestServer(app))


def one_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


async def test_a_request_span_is_named_by_its_route_and_carries_the_caller(
        exporter: InMemorySpanExporter) -> None:
    client = await traced_app(provider_for(exporter).get_tracer("t"))
    async with client:
        resp = await client.get("/api/v1/files/f-123?fields=name",
                                headers={"User-Agent": "k6/1.1"})
        assert resp.status == 200
    span = one_span(exporter)
    assert (span.name, span.kind) == ("GET /api/v1/files/{file_id}", SpanKind.SERVER)
    attrs = dict(span.attributes or {})
    assert attrs["http.route"] == "/api/v1/files/{file_id}"
    assert attrs["url.path"] == "/api/v1/files/f-123"
    assert attrs["url.query"] == "fields=name"
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200
    assert attrs["user_agent.original"] == "k6/1.1"
    assert attrs["enduser.id"] == "user-7"
    assert span.parent is None  # no caller context: a root


async def test_share_secrets_never_reach_the_span(exporter: InMemorySpanExporter) -> None:
    client = await traced_app(provider_for(exporter).get_tracer("t"))
    async with client:
        assert (await client.get("/s/sekrit?password=hunter2&download=1")).status == 200
    attrs = dict(one_span(exporter).attributes or {})
    assert attrs["url.path"] == f"/s/{REDACTED}"
    assert "hunter2" not in str(attrs) and "sekrit" not in str(attrs)
    assert "download=1" in str(attrs["url.query"])


async def test_a_server_error_marks_the_span(exporter: InMemorySpanExporter) -> None:
    client = await traced_app(provider_for(exporter).get_tracer("t"))
    async with client:
        assert (await client.get("/broken")).status == 503
    span = one_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["http.response.status_code"] == 503


async def test_the_callers_trace_is_joined_and_its_no_is_kept(
        exporter: InMemorySpanExporter) -> None:
    client = await traced_app(provider_for(exporter).get_tracer("t"))
    async with client:
        await client.get("/api/v1/files/a", headers={"traceparent": SAMPLED})
        await client.get("/api/v1/files/b", headers={"traceparent": UNSAMPLED})
    span = one_span(exporter)  # the unsampled caller's request made none
    assert trace.format_trace_id(span.context.trace_id) == TRACE_ID
    assert span.parent is not None and trace.format_span_id(span.parent.span_id) == PARENT_ID


async def test_probes_are_not_traced(exporter: InMemorySpanExporter) -> None:
    client = await traced_app(provider_for(exporter).get_tracer("t"))
    async with client:
        assert (await client.get("/health")).status == 200
    assert exporter.get_finished_spans() == ()


async def test_a_dropped_request_builds_no_attributes(
        exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler speaks first: a request whose span is dropped costs a sampler call,
    not the attribute work (what the maintained instrumentation did for every request)."""
    def must_not_run(request: web.Request) -> dict[str, str | int]:
        raise AssertionError("attributes built for a dropped span")

    monkeypatch.setattr(tracing, "request_attributes", must_not_run)
    dropped = provider_for(exporter, sampler=ALWAYS_OFF).get_tracer("t")
    client = await traced_app(dropped)
    async with client:
        assert (await client.get("/api/v1/files/x")).status == 200
    assert exporter.get_finished_spans() == ()


# -- the chunk service's gRPC server interceptor ------------------------------------------

SERVICE = "test.Echo"


def echo_handlers(seen: list[trace.SpanContext]) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(trace.get_current_span().get_span_context())
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[bytes]:
        for piece in (request, request):
            seen.append(trace.get_current_span().get_span_context())
            yield piece

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream)})


async def call_both(provider: TracerProvider, seen: list[trace.SpanContext],
                    metadata: tuple[tuple[str, str], ...]) -> None:
    server = grpc.aio.server(interceptors=[SampledOnlyServerInterceptor(provider)])
    server.add_generic_rpc_handlers((echo_handlers(seen),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary(f"/{SERVICE}/Unary")
            assert await unary(b"x", metadata=metadata) == b"x"
            stream = channel.unary_stream(f"/{SERVICE}/Stream")
            assert [m async for m in stream(b"y", metadata=metadata)] == [b"y", b"y"]
    finally:
        await server.stop(None)


async def test_an_unsampled_call_gets_no_span_but_keeps_the_callers_context(
        exporter: InMemorySpanExporter) -> None:
    seen: list[trace.SpanContext] = []
    await call_both(provider_for(exporter), seen, (("traceparent", UNSAMPLED),))
    assert exporter.get_finished_spans() == ()
    # Below it, everything sees the caller's unsampled trace, so it starts no span.
    assert len(seen) == 3
    assert all(trace.format_trace_id(c.trace_id) == TRACE_ID and not c.trace_flags.sampled
               for c in seen)


async def test_a_sampled_call_gets_its_server_span(exporter: InMemorySpanExporter) -> None:
    seen: list[trace.SpanContext] = []
    await call_both(provider_for(exporter), seen, (("traceparent", SAMPLED),))
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == [f"/{SERVICE}/Stream", f"/{SERVICE}/Unary"]
    for span in spans:
        assert span.kind is SpanKind.SERVER
        assert dict(span.attributes or {})["rpc.system"] == "grpc"
        assert span.parent is not None
        assert trace.format_span_id(span.parent.span_id) == PARENT_ID
    assert {c.span_id for c in seen} == {s.context.span_id for s in spans}


async def test_a_call_without_context_is_left_to_the_sampler(
        exporter: InMemorySpanExporter) -> None:
    seen: list[trace.SpanContext] = []
    await call_both(provider_for(exporter), seen, ())
    assert len(exporter.get_finished_spans()) == 2  # ALWAYS_ON roots


def test_unsampled_caller_reads_only_a_valid_unsampled_traceparent() -> None:
    assert unsampled_caller(None) is None
    assert unsampled_caller((("traceparent", SAMPLED),)) is None
    assert unsampled_caller((("traceparent", "garbage"),)) is None
    assert unsampled_caller((("x-other", UNSAMPLED),)) is None
    ctx = unsampled_caller((("traceparent", UNSAMPLED), ("user-agent", "grpc-python")))
    assert ctx is not None
    assert trace.format_trace_id(trace.get_current_span(ctx).get_span_context().trace_id) \
        == TRACE_ID
