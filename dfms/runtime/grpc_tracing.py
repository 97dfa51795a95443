"""The chunk service's gRPC server spans, skipped for calls whose trace is not sampled.

The maintained aio server interceptor (opentelemetry-instrumentation-grpc 0.66b1) runs
its whole span set-up for every call before the sampler speaks: the call's metadata
copied into a dict twice, the peer address parsed, attributes built, a span started, the
servicer context wrapped in a proxy, and every streamed response passed through one more
generator. Under the default ratio 99 calls in 100 arrive with the gateway's decision
already made: ``traceparent`` with the sampled flag off. For those this interceptor only
puts the caller's (unsampled) context in place, so everything below follows it and
starts no span of its own (``sampled_span``, ``sampled_only_asyncpg``). Calls that are
sampled, or carry no context, get the maintained interceptor's span as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.instrumentation.grpc._server import _wrap_rpc_behavior

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Behavior = Callable[..., Any]
# W3C trace context: only these metadata keys are read to find the caller's decision.
_CONTEXT_KEYS = ("traceparent", "tracestate")


def unsampled_caller(metadata: Sequence[tuple[str, str | bytes]] | None
                     ) -> context.Context | None:
    """The caller's trace context when it says "not sampled"; None when the call has no
    valid context or a sampled one (those get a span)."""
    carrier = {key: value for key, value in metadata or ()
               if key in _CONTEXT_KEYS and isinstance(value, str)}
    if "traceparent" not in carrier:
        return None
    ctx = propagate.extract(carrier)
    parent = trace.get_current_span(ctx).get_span_context()
    if not parent.is_valid or parent.trace_flags.sampled:
        return None
    return ctx


def _in_context(behavior: Behavior, ctx: context.Context, response_streaming: bool
                ) -> Behavior:
    """``behavior`` run with ``ctx`` as the current context."""
    if response_streaming:
        async def stream(request: Any, servicer_context: Any) -> AsyncIterator[Any]:
            token = context.attach(ctx)
            try:
                async for response in behavior(request, servicer_context):
                    yield response
            finally:
                context.detach(token)
        return stream

    async def unary(request: Any, servicer_context: Any) -> Any:
        token = context.attach(ctx)
        try:
            return await behavior(request, servicer_context)
        finally:
            context.detach(token)
    return unary


class SampledOnlyServerInterceptor(grpc.aio.ServerInterceptor):
    """A server span only where it can be kept (see the module's doc)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._traced: OpenTelemetryAioServerInterceptor = aio_server_interceptor(provider)

    async def intercept_service(self, continuation: Continuation,
                                handler_call_details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler | None:
        ctx = unsampled_caller(handler_call_details.invocation_metadata)
        if ctx is None:
            return await self._traced.intercept_service(continuation, handler_call_details)
        handler = await continuation(handler_call_details)
        return _wrap_rpc_behavior(
            handler, lambda behavior, _req, resp: _in_context(behavior, ctx, resp))


def server_interceptors(tracing_on: bool) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a gRPC server of DFMS installs: none when tracing is off."""
    if not tracing_on:
        return []
    return [SampledOnlyServerInterceptor()]
