"""The gateway's request spans: one SERVER span per API request, named by route template.

Written here rather than by the maintained aiohttp-server instrumentation, which builds
a dozen attributes (URL parsing, query redaction, header lookups) and records two
metric instruments for every request before the sampler decides: 100-200 us of CPU per
request on this machine, at any sampling ratio, for the 99 requests in 100 whose span
is then dropped (benchmarks/bench_tracing.py). Here the sampler decides first and only a
recorded span gets its attributes. An incoming ``traceparent`` is honoured, so a caller
that traces can put the gateway into its own trace.

The URL attributes never carry a share link's secret (``/s/{token}``, ``?password=``);
the caller's user id is set by ``set_user`` when a request authenticates (never the
token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from dfms.runtime.telemetry import OPS_PATHS

__all__ = ["Middleware", "redacted_url", "request_span_middleware", "set_user"]

REDACTED = "REDACTED"
# Path parameters and query parameters that are credentials.
SECRET_PARAMS = frozenset({"token"})
SECRET_QUERY = frozenset({"password", "token", "access_token", "ticket"})
# Only these headers are looked at for a caller's trace context (W3C trace context).
_CONTEXT_HEADERS = ("traceparent", "tracestate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def set_user(user_id: object) -> None:
    """Record the authenticated caller on the current request span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("enduser.id", str(user_id))


def redacted_url(request: web.Request) -> tuple[str, str] | None:
    """``(path, query)`` with every secret replaced; None when the request has none."""
    path_secrets = [v for k, v in request.match_info.items() if k in SECRET_PARAMS and v]
    if not path_secrets and not SECRET_QUERY.intersection(request.query):
        return None
    path = request.path
    for value in path_secrets:
        path = path.replace(value, REDACTED)
    query = urlencode([(k, REDACTED if k in SECRET_QUERY else v)
                       for k, v in request.query.items()])
    return path, query


def route_template(request: web.Request) -> str:
    """``/api/v1/files/{file_id}``; empty for a path no route matched (a 404)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def span_name(request: web.Request) -> str:
    """``GET /api/v1/files/{file_id}``: the template, never the raw path, so names stay
    few and ids never become span names."""
    template = route_template(request)
    return f"{request.method} {template}" if template else request.method


def request_attributes(request: web.Request) -> dict[str, str | int]:
    """The HTTP semantic conventions' request attributes, secrets redacted."""
    path, query = redacted_url(request) or (request.path, request.query_string)
    attributes: dict[str, str | int] = {
        "http.request.method": request.method, "url.scheme": request.scheme,
        "url.path": path, "http.route": route_template(request),
        "network.protocol.version": f"{request.version.major}.{request.version.minor}"}
    if query:
        attributes["url.query"] = query
    host, _, port = request.host.rpartition(":")
    attributes["server.address"] = host if port.isdigit() else request.host
    if port.isdigit():
        attributes["server.port"] = int(port)
    if request.remote:
        attributes["client.address"] = request.remote
    if agent := request.headers.get("User-Agent"):
        attributes["user_agent.original"] = agent
    return attributes


def _caller_context(request: web.Request) -> context.Context | None:
    """The caller's trace context, when it sent one (most callers don't: skip the
    propagator's work for them)."""
    carrier = {k: v for k in _CONTEXT_HEADERS if (v := request.headers.get(k))}
    return propagate.extract(carrier) if carrier else None


def _finish(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def request_span_middleware(tracer: trace.Tracer | None = None) -> Middleware:
    """The outermost middleware: the request's SERVER span (``tracer``: the global
    provider's by default)."""
    tracer = tracer or trace.get_tracer("dfms.gateway")

    @web.middleware
    async def request_span(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPS_PATHS:
            return await handler(request)
        with tracer.start_as_current_span(
                span_name(request), context=_caller_context(request), kind=SpanKind.SERVER,
                record_exception=False, set_status_on_exception=False) as span:
            if not span.is_recording():
                return await handler(request)
            span.set_attributes(request_attributes(request))
            return await _traced(span, request, handler)
    return request_span


async def _traced(span: trace.Span, request: web.Request, handler: Handler
                  ) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _finish(span, exc.status)
        raise
    except Exception as exc:
        # The error middleware below renders every DfmsError and bug as a response;
        # what gets here is a lost connection (a cancellation passes untouched).
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        raise
    _finish(span, response.status)
    return response
