"""OpenTelemetry traces: SDK set-up at service start, shutdown (with a flush) on stop.

``setup_tracing`` reads the ``telemetry`` config section and the standard ``OTEL_*``
environment variables (an ``OTEL_*`` variable that is set wins over the config key of the
same meaning, as the SDK's own documentation tells operators). With no endpoint, or
``OTEL_SDK_DISABLED=true``, it does nothing at all: no provider is installed, nothing is
instrumented, so every span DFMS code starts is the API's no-op span, no export thread
runs and no export can fail or retry.

With an endpoint, spans are batched and exported over OTLP (http/protobuf or grpc) with
the resource ``service.name=dfms-<service>``, ``service.version`` and
``deployment.environment``, and the maintained instrumentations are switched on: the
gRPC (aio) server, asyncpg and redis (the gateway writes its request spans itself,
dfms/gateway/tracing.py, the chunk service's client its gRPC client spans, the S3 node
client its node call spans).

Default sampling: ``parentbased_traceidratio`` at 0.01. Parent-based, so the chunk
service and the S3 calls follow the gateway's decision and a trace is always whole. A
sampled upload records some 45 spans (most of them queries) and costs 1.4-1.9x the CPU of
an untraced one, so the ratio sets most of the cost: 4-9% at 0.1, under 1% at 0.01, on
top of the little an unsampled request still pays (docs/operations.md, Traces; measured by
benchmarks/bench_tracing.py and profiles). One request in a hundred still gives a trace
of every busy route within seconds. Below the request's span, unsampled requests start
no span of DFMS's own and no query span (``sampled_span``, ``sampled_only_asyncpg``).
Set ``sampler_arg: 1.0`` (or ``OTEL_TRACES_SAMPLER_ARG=1``) to see every request, e.g.
on a laptop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

import dfms
from dfms.config import OTLP_PROTOCOLS, SAMPLERS, TelemetryConfig

log = logging.getLogger("dfms.telemetry")

# Probes and scrapes every few seconds would bury the requests worth tracing.
OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})
_TRUE = {"true", "1", "yes", "on"}


@dataclass(frozen=True, slots=True)
class TraceSettings:
    """What the config and the environment together ask for."""

    enabled: bool
    traces_url: str  # full URL (http) or target (grpc); empty = no exporter
    protocol: str
    sampler: str
    sampler_arg: float
    environment: str


def service_name(name: str) -> str:
    """``chunk_service`` → ``dfms-chunk-service``."""
    return "dfms-" + name.replace("_", "-")


def _traces_url(cfg: TelemetryConfig, env: Mapping[str, str], protocol: str) -> str:
    """The signal-specific variable is a full URL; the general one and the config key are
    a base that http/protobuf extends with ``/v1/traces`` (the OTLP spec's rule)."""
    full = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if full:
        return full
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or cfg.endpoint.strip()
    if not base or protocol == "grpc":
        return base
    return base.rstrip("/") + "/v1/traces"


def _env_choice(env: Mapping[str, str], names: tuple[str, ...], allowed: tuple[str, ...],
                default: str) -> str:
    for name in names:
        value = env.get(name, "").strip().lower()
        if not value:
            continue
        if value in allowed:
            return value
        log.warning("unsupported value ignored", extra={"variable": name, "value": value,
                                                        "using": default})
        return default
    return default


def _env_ratio(env: Mapping[str, str], default: float) -> float:
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if 0.0 <= value <= 1.0:
        return value
    log.warning("unsupported value ignored", extra={
        "variable": "OTEL_TRACES_SAMPLER_ARG", "value": raw, "using": default})
    return default


def resolve(cfg: TelemetryConfig, env: Mapping[str, str]) -> TraceSettings:
    """Merge the config section with the standard environment variables."""
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
    protocol = _env_choice(env, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                 "OTEL_EXPORTER_OTLP_PROTOCOL"), OTLP_PROTOCOLS, cfg.protocol)
    url = _traces_url(cfg, env, protocol)
    return TraceSettings(
        enabled=cfg.enabled and not disabled and bool(url), traces_url=url,
        protocol=protocol,
        sampler=_env_choice(env, ("OTEL_TRACES_SAMPLER",), SAMPLERS, cfg.sampler),
        sampler_arg=_env_ratio(env, cfg.sampler_arg), environment=cfg.environment)


class NoClientRoots(Sampler):
    """``inner``, except that a CLIENT span with no parent starts no trace.

    A query, a Redis call or an HTTP call to a node made outside any request or pass
    (start-up, a background loop between passes) would be a trace of one span: noise in
    the trace UI and export work for nothing. Requests, passes and consumed events are
    the roots; client calls join their traces."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: TraceState | None = None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes,
                                         links, trace_state)

    def get_description(self) -> str:
        return f"NoClientRoots{{{self._inner.get_description()}}}"


def make_sampler(name: str, ratio: float) -> Sampler:
    parent = name.startswith("parentbased_")
    root = name.removeprefix("parentbased_")
    sampler: Sampler = NoClientRoots({"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(
        root) or TraceIdRatioBased(ratio))
    return ParentBased(sampler) if parent else sampler


def make_exporter(settings: TraceSettings) -> SpanExporter:
    """Imported here: a process without an endpoint never loads an exporter."""
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        return GrpcExporter(endpoint=settings.traces_url,
                            insecure=not settings.traces_url.startswith("https://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.traces_url)


def make_provider(service: str, settings: TraceSettings,
                  exporter: SpanExporter | None = None) -> TracerProvider:
    ours = Resource({"service.name": service_name(service),
                     "service.version": dfms.__version__,
                     "deployment.environment": settings.environment})
    # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, when set, win over ours, as every
    # other standard variable does (the compose file sets the environment that way).
    resource = Resource.create().merge(ours).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource,
                              sampler=make_sampler(settings.sampler, settings.sampler_arg))
    provider.add_span_processor(BatchSpanProcessor(exporter or make_exporter(settings)))
    return provider


def _outside_a_recorded_span() -> bool:
    """A client call here would make a span nobody keeps: under an unsampled request
    (parent-based sampling follows the parent) or outside any span (NoClientRoots)."""
    return not trace.get_current_span().is_recording()


def span_dropped(kind: SpanKind = SpanKind.INTERNAL) -> bool:
    """Whether a span started here now could only be dropped, so need not be started.

    Under a valid span that is not recording (an unsampled request) a child is dropped
    by every sampler DFMS offers: parent-based ones follow the parent, and the ratio
    samplers decide on the trace id, which the child shares. Outside any span only a
    CLIENT span is sure to be dropped (NoClientRoots); an internal one would be a root.
    """
    span = trace.get_current_span()
    if span.is_recording():
        return False
    return kind is SpanKind.CLIENT or span.get_span_context().is_valid


def sampled_span(tracer: trace.Tracer, name: str, kind: SpanKind = SpanKind.INTERNAL,
                 **kwargs: Any) -> AbstractContextManager[trace.Span]:
    """``tracer.start_as_current_span(name, kind, ...)``, or where that span could only
    be dropped (``span_dropped``), no span at all: the context stays the unsampled
    request's, which is what a dropped span would have propagated anyway, and the code
    inside gets a non-recording span to write to. At the default ratio this is 99
    requests in 100; a dropped span still costs a sampler call, ids, a context attach
    and detach, and its attributes (benchmarks/bench_tracing.py)."""
    if span_dropped(kind):
        return nullcontext(trace.INVALID_SPAN)
    return tracer.start_as_current_span(name, kind=kind, **kwargs)


def sampled_only_asyncpg() -> Any:
    """The asyncpg instrumentation, skipped outright where its span would not be kept.

    It parses the statement and builds the span's attributes before asking the sampler,
    so at a ratio of 0.1 nine requests in ten paid that for every query: measured
    by benchmarks/bench_tracing.py. What is recorded does not change."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    class SampledOnly(AsyncPGInstrumentor):
        async def _do_execute(self, func: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if _outside_a_recorded_span():
                return await func(*args, **kwargs)
            return await super()._do_execute(func, instance, args, kwargs)

        async def _do_cursor_execute(self, func: Any, instance: Any, args: Any,
                                     kwargs: Any) -> Any:
            if _outside_a_recorded_span():
                return await func(*args, **kwargs)
            return await super()._do_cursor_execute(func, instance, args, kwargs)

        async def _do_prepared_execute(self, func: Any, instance: Any, args: Any,
                                       kwargs: Any) -> Any:
            if _outside_a_recorded_span():
                return await func(*args, **kwargs)
            return await super()._do_prepared_execute(func, instance, args, kwargs)

    return SampledOnly()


def instrument_libraries(provider: TracerProvider) -> None:
    """Switch on the maintained instrumentations (they patch classes, so this runs before
    the service builds its channels, pools and clients)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    # No aiohttp instrumentation. The server one built its attributes and recorded its
    # metrics before sampling, 100-200 us per request sampled or not: the gateway writes
    # its request spans itself (dfms/gateway/tracing.py), and the other services serve
    # only /health, /ready and /metrics. The client one: the only aiohttp clients are
    # the S3 node clients, whose call spans (dfms/storage/client.py) carry the node,
    # operation, bytes and outcome; it added a span per attempt under each, and its
    # trace hooks ran on every request and every body slice sent, sampled or not: 3% of
    # the chunk service's CPU at the default ratio. No GrpcAioInstrumentorClient:
    # dfms/chunkservice/client.py writes the client spans (see _client_span there). The
    # chunk service installs its server interceptor itself (dfms/runtime/grpc_tracing.py).
    for instrumentor in (sampled_only_asyncpg(), RedisInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)


class Telemetry:
    """The installed tracing of one process; ``shutdown()`` flushes what is left."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider

    def shutdown(self) -> None:
        self.provider.shutdown()


def setup_tracing(service: str, cfg: TelemetryConfig,
                  env: Mapping[str, str] | None = None) -> Telemetry | None:
    """Install tracing for this process, or do nothing (None) when no endpoint is set."""
    settings = resolve(cfg, os.environ if env is None else env)
    if not settings.enabled:
        return None
    provider = make_provider(service, settings)
    trace.set_tracer_provider(provider)
    instrument_libraries(provider)
    log.info("tracing on", extra={"endpoint": settings.traces_url,
                                  "protocol": settings.protocol, "sampler": settings.sampler,
                                  "ratio": settings.sampler_arg})
    return Telemetry(provider)


def trace_exemplar() -> dict[str, str] | None:
    """The current sampled span's trace id as a Prometheus exemplar (``observe(x,
    exemplar)``): a latency sample in a histogram leads to a trace that shows why. None
    outside a sampled span, so an exemplar always points at a trace that was exported."""
    ctx = trace.get_current_span().get_span_context()
    if not (ctx.is_valid and ctx.trace_flags.sampled):
        return None
    return {"trace_id": trace.format_trace_id(ctx.trace_id)}


def tracing_active() -> bool:
    """Whether this process installed an SDK provider (so spans can record)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)
