"""What the gateway adds to the aiohttp instrumentation's request span.

The span is named by route template (``GET /api/v1/files/{file_id}``) by the
instrumentation itself. It also records the request's URL, which for a share link holds
the link's secret (``/s/{token}``, ``?password=``): this middleware, run inside the
span, writes those URL attributes again with the secrets replaced. The caller's user id
is set by ``set_user`` when a request authenticates (never the token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace

__all__ = ["Middleware", "redact_secrets", "redacted_url", "set_user"]

REDACTED = "REDACTED"
# Path parameters and query parameters that are credentials.
SECRET_PARAMS = frozenset({"token"})
SECRET_QUERY = frozenset({"password", "token", "access_token"})
# The URL attributes of both semantic-convention generations the instrumentation writes.
_URL_ATTRS = ("http.target", "http.url", "url.path", "url.query", "url.full")

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


def _rewrite(span: trace.Span, request: web.Request, path: str, query: str) -> None:
    target = f"{path}?{query}" if query else path
    origin = f"{request.scheme}://{request.host}"
    values = {"http.target": target, "http.url": origin + target, "url.path": path,
              "url.query": query, "url.full": origin + target}
    present = getattr(span, "attributes", None) or {}
    span.set_attributes({k: values[k] for k in _URL_ATTRS if k in present})


@web.middleware
async def redact_secrets(request: web.Request, handler: Handler) -> web.StreamResponse:
    span = trace.get_current_span()
    if span.is_recording():
        cleaned = redacted_url(request)
        if cleaned is not None:
            _rewrite(span, request, *cleaned)
    return await handler(request)
