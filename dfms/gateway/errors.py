"""API errors: every failure answers ``{"error": {"code", "message", "request_id"}}``.

Codes are stable strings clients can switch on; messages are for people. An
``ApiError`` carries its own status and code; any other exception is answered by
the table in ``dfms.gateway.error_table``.
"""

from __future__ import annotations

from collections.abc import Mapping

from dfms.errors import DfmsError


class IncompleteBody(DfmsError):
    """The request body broke off or stalled; the upload must not be committed."""


class Overloaded(DfmsError):
    """The gateway serves as many requests of this class as it is configured to
    (``dfms.gateway.shedding``). Refused before any work was done, so the same
    request may be sent again as it is, after ``retry_after_s``."""

    def __init__(self, route_class: str, retry_after_s: int) -> None:
        self.route_class = route_class
        self.retry_after_s = retry_after_s
        super().__init__(f"the gateway is serving all the {route_class} it can at once; "
                         f"retry after {retry_after_s} s")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(f"{status} {code}: {message}")


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def unauthorized(message: str = "authentication required",
                 code: str = "unauthorized") -> ApiError:
    return ApiError(401, code, message, {"WWW-Authenticate": 'Bearer realm="dfms"'})


def forbidden(message: str = "not allowed") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


# Status codes aiohttp raises itself (unknown route, wrong method, oversized body...).
HTTP_STATUS_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
    413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    416: "range_not_satisfiable", 422: "unprocessable", 429: "rate_limited",
    431: "headers_too_large", 500: "internal_error", 503: "unavailable",
}
