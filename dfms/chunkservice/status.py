"""One table mapping chunk-service errors to gRPC status codes, used both ways."""

from __future__ import annotations

import grpc

from dfms.chunkservice import errors as e
from dfms.errors import DependencyUnavailable

STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    e.QuorumNotReached: grpc.StatusCode.UNAVAILABLE,
    e.ChunkUnavailable: grpc.StatusCode.DATA_LOSS,
    e.UploadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.ChecksumMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    e.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    e.ManifestNotFound: grpc.StatusCode.NOT_FOUND,
    e.NoRing: grpc.StatusCode.FAILED_PRECONDITION,
    e.ChunkBeingSwept: grpc.StatusCode.UNAVAILABLE,  # retryable: the sweep finishes
    DependencyUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# The error type travels in trailing metadata so the client can rebuild it exactly.
ERROR_TYPE_KEY = "dfms-error"
ERROR_TYPES: dict[str, type[Exception]] = {cls.__name__: cls for cls in STATUS_OF}


def status_for(exc: Exception) -> grpc.StatusCode | None:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return None
