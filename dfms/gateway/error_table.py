"""One table from the DFMS exception tree to HTTP answers, for the error middleware.

Like ``dfms.chunkservice.status`` does for gRPC: an exception is looked up along its
MRO, so the most specific entry wins (``InvalidCredentials`` before
``AuthenticationFailed`` before ``AuthError``). An ``ApiError`` carries its own
answer; anything not in the table is a 500 ``internal_error``. Handlers raise domain
errors (or let them through) and only build an ``ApiError`` where the answer depends
on the request (a limit, a quota, a byte range).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dfms import errors as deps
from dfms.auth import errors as auth
from dfms.auth.tokens import InvalidToken
from dfms.chunkservice import errors as chunks
from dfms.gateway.errors import ApiError, IncompleteBody, Overloaded
from dfms.gateway.event_hub import EventsUnavailable
from dfms.metadata import errors as meta
from dfms.metadata.db import metadata_outage
from dfms.nodes import InvalidNode
from dfms.ring.errors import InvalidRing, RingConflict

_BEARER = MappingProxyType({"WWW-Authenticate": 'Bearer realm="dfms"'})
_RETRY = MappingProxyType({"Retry-After": "5"})
_RETRY_SOON = MappingProxyType({"Retry-After": "1"})  # the rate limiter retries Redis each second


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """Status, stable code, message (``None``: the exception's own text) and headers."""

    status: int
    code: str
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def error(self, exc: BaseException) -> ApiError:
        headers = dict(self.headers)
        if isinstance(exc, Overloaded):  # its wait is a setting (gateway.shed_retry_after_s)
            headers["Retry-After"] = str(exc.retry_after_s)
        return ApiError(self.status, self.code,
                        str(exc) if self.message is None else self.message, headers)


INTERNAL = HttpAnswer(500, "internal_error", "the server failed to handle this request")

ANSWERS: Mapping[type[BaseException], HttpAnswer] = MappingProxyType({
    # the request
    IncompleteBody: HttpAnswer(400, "incomplete_body"),
    InvalidNode: HttpAnswer(400, "validation_error"),
    InvalidRing: HttpAnswer(400, "validation_error"),
    # accounts and tokens: the code is the error's own ``code``
    auth.AuthError: HttpAnswer(500, "internal_error", "unexpected authentication failure"),
    auth.InvalidInput: HttpAnswer(400, auth.InvalidInput.code),
    auth.InvalidEmail: HttpAnswer(400, auth.InvalidEmail.code),
    auth.WeakPassword: HttpAnswer(400, auth.WeakPassword.code),
    auth.EmailTaken: HttpAnswer(409, auth.EmailTaken.code),
    auth.AuthenticationFailed: HttpAnswer(401, auth.AuthenticationFailed.code, None, _BEARER),
    auth.InvalidCredentials: HttpAnswer(401, auth.InvalidCredentials.code, None, _BEARER),
    auth.AccountDisabled: HttpAnswer(401, auth.AccountDisabled.code, None, _BEARER),
    auth.InvalidRefreshToken: HttpAnswer(401, auth.InvalidRefreshToken.code, None, _BEARER),
    auth.RefreshTokenReused: HttpAnswer(401, auth.RefreshTokenReused.code, None, _BEARER),
    InvalidToken: HttpAnswer(401, "invalid_token", None, _BEARER),
    # versions and ring membership: the metadata layer's refusals
    meta.VersionNotFound: HttpAnswer(404, "not_found", "version not found"),
    meta.LastVersion: HttpAnswer(409, "last_version", "a file keeps at least one version; "
                                 "delete the file instead"),
    meta.QuotaExceeded: HttpAnswer(507, "quota_exceeded"),
    meta.NodeNotFound: HttpAnswer(404, "not_found", "node not found"),
    meta.NodeExists: HttpAnswer(409, "node_exists"),
    meta.NodeRemoved: HttpAnswer(409, "node_removed"),
    meta.LastActiveNode: HttpAnswer(409, "last_active_node"),
    meta.NodeHoldsOnlyCopy: HttpAnswer(409, "node_holds_only_copy"),
    meta.NodeUnreachable: HttpAnswer(422, "node_unreachable"),
    # the ring
    RingConflict: HttpAnswer(409, "ring_conflict", "the ring was changed concurrently by "
                             "another writer; retry the request"),
    # the chunk service (uploads; a download maps its failures itself: headers are out)
    chunks.ChunkServiceError: HttpAnswer(502, "storage_error", "the storage layer failed"),
    chunks.ChecksumMismatch: HttpAnswer(422, "checksum_mismatch"),
    chunks.InvalidRequest: HttpAnswer(400, "invalid_upload"),
    chunks.DigestMismatch: HttpAnswer(400, "digest_mismatch"),
    chunks.ChunkTooLarge: HttpAnswer(413, "chunk_too_large"),
    chunks.ChunkUnavailable: HttpAnswer(503, "content_unavailable", None, _RETRY),
    chunks.ChunkBeingSwept: HttpAnswer(
        503, "storage_unavailable", "a chunk of this upload is being removed by the garbage "
        "collector; send it again shortly", _RETRY),
    chunks.QuorumNotReached: HttpAnswer(
        503, "storage_unavailable", "not enough storage nodes accepted the data; "
        "try again later", _RETRY),
    # the gateway itself at capacity (dfms.gateway.shedding): 503 before any work
    Overloaded: HttpAnswer(503, "overloaded", None, _RETRY_SOON),
    # dependency outages: 503, a code naming what is down, never an address or a secret
    deps.DependencyUnavailable: HttpAnswer(
        503, "service_unavailable", "a service DFMS depends on is unavailable; try again "
        "later", _RETRY),
    deps.MetadataUnavailable: HttpAnswer(
        503, "metadata_unavailable", "the metadata database is unavailable; try again "
        "later", _RETRY),
    deps.ChunkServiceUnavailable: HttpAnswer(
        503, "chunk_service_unavailable", "the chunk service is unavailable; try again "
        "later", _RETRY),
    deps.StorageUnavailable: HttpAnswer(
        503, "storage_unavailable", "too few storage nodes are available; try again later",
        _RETRY),
    EventsUnavailable: HttpAnswer(
        503, "events_unavailable", "live events are unavailable; try again shortly",
        _RETRY_SOON),
    deps.RateLimiterUnavailable: HttpAnswer(
        503, "rate_limiter_unavailable", "the rate limiter is unavailable; try again "
        "shortly", _RETRY_SOON),
})


def answer_for(exc: BaseException) -> HttpAnswer | None:
    """The table's entry for ``exc``'s most specific class, or ``None``.

    A database driver's error that means PostgreSQL is away counts as
    ``MetadataUnavailable``: handlers let such errors through, the edge names them.
    """
    exc = metadata_outage(exc) or exc
    for cls in type(exc).__mro__:
        if cls in ANSWERS:
            return ANSWERS[cls]
    return None


def api_error(exc: BaseException) -> ApiError:
    """The HTTP answer to ``exc``: its own, the table's, or 500 ``internal_error``."""
    if isinstance(exc, ApiError):
        return exc
    return (answer_for(exc) or INTERNAL).error(exc)
