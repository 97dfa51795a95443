"""The SDK's exception tree, and the one place an API error answer becomes an exception.

Every failure the API answers carries ``{"error": {"code", "message", "request_id"}}``;
``error_from_response`` maps it to the class of its status (and, for 503/429, keeps the
``Retry-After`` the server asked for), so callers switch on a class or on ``code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dfms.errors import DfmsError as _ProjectError


class DfmsError(_ProjectError):
    """Any failure the SDK reports: an API error answer, or a transport failure (status 0)."""

    def __init__(self, status: int, code: str, message: str, *,
                 retry_after: float | None = None, request_id: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")


class BadRequest(DfmsError):
    """400: validation_error, invalid_name, digest_mismatch, ..."""


class Unauthorized(DfmsError):
    """401: no token, a bad or expired one, wrong credentials, a spent refresh token."""


class Forbidden(DfmsError):
    """403."""


class NotFound(DfmsError):
    """404."""


class Conflict(DfmsError):
    """409: name_taken, email_taken, missing_chunks, ..."""


class PreconditionFailed(DfmsError):
    """412: If-Match no longer matches."""


class PayloadTooLarge(DfmsError):
    """413: chunk_too_large, a body over the limit."""


class RangeNotSatisfiable(DfmsError):
    """416."""


class ChecksumMismatch(DfmsError):
    """422 from the server, or a download whose bytes do not hash to the file's SHA-256."""


class RateLimited(DfmsError):
    """429: wait ``retry_after`` seconds."""


class Unavailable(DfmsError):
    """503: a dependency is away or the gateway sheds load; wait ``retry_after`` seconds."""


class ServerError(DfmsError):
    """500, 502 and other 5xx answers."""


class QuotaExceeded(DfmsError):
    """507."""


class FileChanged(DfmsError):
    """A local file changed while it was being uploaded (status 0)."""


class TransportError(DfmsError):
    """No answer: the connection failed or broke off (status 0)."""


# Status -> class; a status not listed falls back by its hundred (see error_class).
ERROR_CLASSES: Mapping[int, type[DfmsError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    412: PreconditionFailed, 413: PayloadTooLarge, 416: RangeNotSatisfiable,
    422: ChecksumMismatch, 429: RateLimited, 503: Unavailable, 507: QuotaExceeded,
}


def error_class(status: int) -> type[DfmsError]:
    if status in ERROR_CLASSES:
        return ERROR_CLASSES[status]
    return ServerError if status >= 500 else DfmsError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; the API sends delta-seconds only."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0)


def error_from_response(status: int, body: Any, headers: Mapping[str, str]) -> DfmsError:
    """The exception for an error answer: its class from ``status``, the rest from the
    API's error envelope (or a generic code when the body is not one, as from a proxy)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code, message = error["code"], str(error.get("message", ""))
        request_id = error.get("request_id")
    else:
        code, message, request_id = f"http_{status}", _text(body), None
    return error_class(status)(
        status, code, message, retry_after=parse_retry_after(headers.get("Retry-After")),
        request_id=request_id if isinstance(request_id, str) else headers.get("X-Request-Id"))


def _text(body: Any) -> str:
    if isinstance(body, bytes):
        return body[:200].decode("utf-8", "replace")
    return str(body)[:200]
