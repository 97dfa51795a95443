"""Requests aiohttp refuses before any middleware runs, answered like every other error.

aiohttp's HTTP parser raises on an oversized request line or header, on too many
headers and on malformed HTTP. ``RequestHandler.handle_error`` then answers with
a plain-text 400 that quotes the start of the offending line, no request id, and
nothing counted. ``GatewayRequestHandler`` overrides that one method: 414, 431 or
400 with the error envelope, a fixed message (never a byte of the input; the
limits come from config, ``gateway.max_line_bytes``, ``max_header_bytes`` and
``max_headers``), ``X-Request-Id``, and a count in ``dfms_http_requests_total``
(route ``unparsed``). ``GatewayRunner`` makes the server use it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_request import BaseRequest

from dfms.gateway.middleware import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    REQUESTS,
    log,
    method_label,
)

# How a request line (Python parser: "GET /...") or a request target (C parser: the
# URL alone, origin- or absolute-form) starts; a header line starts with its name.
_REQUEST_LINE_START = re.compile(rb"[A-Z]+ |/|\*|[A-Za-z][A-Za-z0-9+.-]*://")

# The route label of requests that never reached the router.
UNPARSED_ROUTE = "unparsed"

# aiohttp's message for the header count limit (the C and the Python parser alike).
_TOO_MANY_HEADERS = "Too many headers"

# Malformed requests (400): what is wrong, in the client's terms, by parser exception.
_MALFORMED: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (BadHttpMethod, "the request method is not a valid HTTP method"),
    (BadStatusLine, "the request line is not valid HTTP/1.1"),
    (InvalidURLError, "the request target (URL) is malformed"),
    (InvalidHeader, "a request header is malformed"),
    (PayloadEncodingError, "the body framing (Content-Length, Transfer-Encoding) is invalid"),
)


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Limits:
    line: int  # max_line_size: the request line
    field: int  # max_field_size: one header (name and value)
    headers: int  # max_headers


def refusal(exc: BaseException | None, status: int, limits: Limits) -> Refusal:
    """The answer to a request the parser (or the server itself) gave up on."""
    if isinstance(exc, LineTooLong):
        if _is_request_line(exc, limits):
            return Refusal(414, "uri_too_long",
                           f"the request line (URL) is longer than {limits.line} bytes")
        return Refusal(431, "headers_too_large",
                       f"a request header is longer than {limits.field} bytes")
    if isinstance(exc, BadHttpMessage) and exc.message.startswith(_TOO_MANY_HEADERS):
        return Refusal(431, "too_many_headers",
                       f"the request has more than {limits.headers} headers")
    if isinstance(exc, HttpProcessingError):
        text = next((m for kind, m in _MALFORMED if isinstance(exc, kind)),
                    "the request is not valid HTTP/1.1")
        return Refusal(exc.code if 400 <= exc.code < 500 else 400, "malformed_request", text)
    if status == 504:
        return Refusal(504, "timeout", "the server took too long to handle this request")
    return Refusal(500, "internal_error", "the server failed to handle this request")


def _is_request_line(exc: LineTooLong, limits: Limits) -> bool:
    """Which limit was passed: the request line's, or a header's.

    The parser reports the limit it enforced; with both limits configured alike it
    is told by the start of the line (the URL, or the request line itself).
    """
    limit = exc.args[1] if len(exc.args) > 1 else None
    if limits.line != limits.field and limit in (limits.line, limits.field):
        return bool(limit == limits.line)
    start = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b""
    return _REQUEST_LINE_START.match(start) is not None


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with the gateway's error answer."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # Like aiohttp: once bytes of a response are out, only closing is left.
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; closing")
        answer = refusal(exc, status, Limits(self.max_line_size, self.max_field_size,
                                             self.max_headers))
        rid = request.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        if isinstance(exc, HttpProcessingError):
            # The client's doing: no traceback, nothing of the request logged. Not HTTP
            # at all (TLS or a scanner on the port) is routine: debug, as aiohttp does.
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.INFO
            log.log(level, "request refused", extra={"request_id": rid, "code": answer.code,
                                                     "status": answer.status})
            REQUESTS.labels(UNPARSED_ROUTE, "-", str(answer.status)).inc()
        else:  # a handler failed outside the middlewares (which count what they answer)
            log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
            REQUESTS.labels("unhandled", method_label(request.method),
                            str(answer.status)).inc()
        resp = web.json_response(
            {"error": {"code": answer.code, "message": answer.message, "request_id": rid}},
            status=answer.status, headers={REQUEST_ID_HEADER: rid})
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """aiohttp's low-level server, whose connections use ``GatewayRequestHandler``."""

    def __call__(self) -> web.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose server answers parser errors the gateway's way.

    ``Application._make_handler`` builds a plain ``web.Server`` (with the app's
    handler, request factory and the runner's limits); only its class changes, to
    the subclass that creates ``GatewayRequestHandler`` connections.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = GatewayServer
        return server
