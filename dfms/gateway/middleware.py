"""Request ids and the error envelope, for every response the gateway sends."""

from __future__ import annotations

import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter, Histogram

from dfms.gateway.error_table import INTERNAL, answer_for
from dfms.gateway.errors import HTTP_STATUS_CODES, ApiError
from dfms.runtime.logs import get_logger
from dfms.runtime.telemetry import trace_exemplar

log = get_logger("gateway")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

REQUESTS = Counter("dfms_http_requests_total", "Gateway requests",
                   ["route", "method", "status"])
LATENCY = Histogram("dfms_http_request_seconds", "Gateway time to response headers",
                    ["route", "method"],
                    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 120))


# Methods a client may send are any token: others share one label value, so a
# scanner cannot grow the series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def request_id(request: web.Request) -> str:
    return request.get(REQUEST_ID_KEY, "")


def error_response(request: web.Request, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "request_id": request_id(request)}}
    return web.json_response(body, status=status, headers=headers)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def request_id_middleware(request: web.Request,
                                handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request[REQUEST_ID_KEY] = given if _CLIENT_ID_RE.match(given) else uuid.uuid4().hex
    route, method = _route_name(request), method_label(request.method)
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        REQUESTS.labels(route, method, str(exc.status)).inc()
        raise
    finally:
        # Observed inside the instrumentation's request span (its middleware runs
        # outside this one), so a slow bucket leads to the trace of a slow request.
        LATENCY.labels(route, method).observe(time.perf_counter() - start, trace_exemplar())
    REQUESTS.labels(route, method, str(response.status)).inc()
    return response


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed ones included, names its request."""
    if REQUEST_ID_KEY in request:
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID_KEY]


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(request, 405, "method_not_allowed",
                              f"{exc.method} is not allowed here; allowed: {allowed}",
                              {"Allow": exc.headers["Allow"]})
    except web.HTTPException as exc:
        if exc.status < 400 or exc.status_code in (304,):
            raise
        code = HTTP_STATUS_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() in ("allow", "retry-after", "content-range")}
        return error_response(request, exc.status, code, exc.reason, headers)
    except (ConnectionResetError, web.HTTPClientError):
        raise
    except Exception as exc:
        answer = answer_for(exc)
        if answer is None:
            log.exception("unhandled error", extra={"request_id": request_id(request),
                                                    "path": request.path})
            answer = INTERNAL
        error = answer.error(exc)
        return error_response(request, error.status, error.code, error.message,
                              error.headers)
