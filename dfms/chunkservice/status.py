"""One table mapping chunk-service errors to gRPC status codes, used both ways."""

from __future__ import annotations

import grpc

from dfms import errors as deps
from dfms.chunkservice import errors as e

STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    e.QuorumNotReached: grpc.StatusCode.UNAVAILABLE,
    e.ChunkUnavailable: grpc.StatusCode.DATA_LOSS,
    e.UploadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.ChecksumMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    e.DigestMismatch: grpc.StatusCode.INVALID_ARGUMENT,
    e.ChunkTooLarge: grpc.StatusCode.OUT_OF_RANGE,
    e.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    e.ManifestNotFound: grpc.StatusCode.NOT_FOUND,
    e.NoRing: grpc.StatusCode.FAILED_PRECONDITION,
    e.ChunkBeingSwept: grpc.StatusCode.UNAVAILABLE,  # retryable: the sweep finishes
    # Each dependency by name, so that the client rebuilds which one is away.
    deps.DependencyUnavailable: grpc.StatusCode.UNAVAILABLE,
    deps.MetadataUnavailable: grpc.StatusCode.UNAVAILABLE,
    deps.StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    deps.BrokerUnavailable: grpc.StatusCode.UNAVAILABLE,
}

# The error type travels in trailing metadata so the client can rebuild it exactly.
ERROR_TYPE_KEY = "dfms-error"
ERROR_TYPES: dict[str, type[Exception]] = {cls.__name__: cls for cls in STATUS_OF}


def status_for(exc: Exception) -> grpc.StatusCode | None:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return None
