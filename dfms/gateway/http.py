"""Small request helpers: JSON bodies, ids, pagination parameters."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Collection
from typing import Any

from aiohttp import web

from dfms.gateway.context import CONFIG_KEY
from dfms.gateway.errors import ApiError, IncompleteBody, bad_request, not_found
from dfms.gateway.names import clean_name

_INTEGER = re.compile(r"-?[0-9]+")

# Body fields that carry a file or folder name.
NAME_FIELDS = ("name", "file_name")


async def read_json(request: web.Request, limit: int | None = None) -> dict[str, Any]:
    """The JSON object of the body, at most ``limit`` bytes (``gateway.max_json_bytes``
    unless the operation allows more, as a commit's manifest may need)."""
    if limit is None:
        limit = request.app[CONFIG_KEY].gateway.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"JSON bodies are limited to {limit} bytes")
    raw = bytearray()
    idle_s = request.app[CONFIG_KEY].gateway.body_idle_timeout_s
    while len(raw) <= limit:  # read(n) answers what has arrived, not n bytes: loop
        try:
            async with asyncio.timeout(idle_s):
                piece = await request.content.read(limit + 1 - len(raw))
        except TimeoutError as exc:
            raise IncompleteBody(f"the request body stalled for {idle_s:.0f}s") from exc
        if not piece:
            break
        raw += piece
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"JSON bodies are limited to {limit} bytes")
    doc = _parse(bytes(raw))
    if not isinstance(doc, dict):
        raise bad_request("invalid_json", "the body must be a JSON object")
    _check_unicode(doc)
    return doc


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except UnicodeDecodeError:
        # Bytes that are not UTF-8: parsed again with each kept as U+DC80-U+DCFF, so
        # that one inside a name is reported as a name that is not UTF-8.
        try:
            return json.loads(raw.decode("utf-8-sig", errors="surrogateescape"))
        except ValueError as exc:
            raise bad_request("invalid_json", f"the body is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc}") from None


def _is_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_unicode(doc: dict[str, Any]) -> None:
    """JSON may escape lone UTF-16 surrogates ("\\ud800"), which are not text.

    In a name field they are what a client sends for a file name that is not UTF-8
    (Python's os.fsdecode turns byte 0xFF into "\\udcff"): the name validation says so.
    """
    for key, value in doc.items():
        if _is_text(key) and _is_text(value):
            continue
        if key in NAME_FIELDS and isinstance(value, str):
            clean_name(value, key)  # raises: not valid UTF-8
        raise bad_request("invalid_json", "the body contains invalid Unicode")


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


def only_fields(doc: dict[str, Any], allowed: Collection[str], where: str = "") -> None:
    """Refuse fields an operation does not take, as api/openapi.yaml promises (every
    request body schema is closed: additionalProperties false). Ignoring them would let
    a misspelt optional field (``max_download``) silently do other than asked."""
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise bad_request("validation_error",
                          f"unknown field(s){where}: {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed)) or 'none'}")


def parse_uuid(value: str | None, what: str) -> uuid.UUID:
    """An id from a path or body; a malformed one is simply not found."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise not_found(what) from None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # Plain decimal digits only: int() would also take " 5", "5_0" and "٥", and an
    # empty value is no integer either (api/openapi.yaml: type integer).
    if not _INTEGER.fullmatch(raw):
        raise bad_request("validation_error", f"'{name}' must be an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise bad_request("validation_error", f"'{name}' must be between {lo} and {hi}")
    return value


def bool_param(request: web.Request, name: str) -> bool:
    """A boolean query parameter: true/1/yes or false/0/no; absent is false."""
    raw = request.query.get(name, "").lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes"):
        return True
    raise bad_request("validation_error", f"'{name}' must be true or false")
