"""Small request helpers: JSON bodies, ids, pagination parameters."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from dfms.gateway.context import CONFIG_KEY
from dfms.gateway.errors import ApiError, bad_request, not_found


async def read_json(request: web.Request) -> dict[str, Any]:
    limit = request.app[CONFIG_KEY].gateway.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"JSON bodies are limited to {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"JSON bodies are limited to {limit} bytes")
    try:
        doc = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("invalid_json", "the body must be a JSON object")
    try:
        # JSON may escape lone UTF-16 surrogates ("\ud800"), which are not text.
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise bad_request("invalid_json", "the body contains invalid Unicode") from None
    return doc


def field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], *,
          required: bool = True) -> Any:
    if name not in doc or doc[name] is None:
        if required:
            raise bad_request("validation_error", f"'{name}' is required")
        return None
    value = doc[name]
    if isinstance(value, bool) and kind is not bool:
        raise bad_request("validation_error", f"'{name}' has the wrong type")
    if not isinstance(value, kind):
        raise bad_request("validation_error", f"'{name}' has the wrong type")
    return value


def parse_uuid(value: str | None, what: str) -> uuid.UUID:
    """An id from a path or body; a malformed one is simply not found."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise not_found(what) from None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request("validation_error", f"'{name}' must be an integer") from None
    if not lo <= value <= hi:
        raise bad_request("validation_error", f"'{name}' must be between {lo} and {hi}")
    return value
