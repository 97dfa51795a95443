"""Errors of the chunk data plane; the gRPC boundary maps each to a status code."""

from __future__ import annotations

from dfms.errors import DfmsError


class ChunkServiceError(DfmsError):
    """Base of chunk-service failures."""


class QuorumNotReached(ChunkServiceError):
    """Fewer than w replicas acknowledged a chunk write."""

    @classmethod
    def for_chunk(cls, sha256_hex: str, acks: int, needed: int,
                  reasons: list[str]) -> QuorumNotReached:
        detail = "; ".join(reasons) if reasons else "no node available"
        return cls(f"chunk {sha256_hex[:16]}: {acks} of {needed} required replica writes "
                   f"succeeded ({detail})")


class ChunkUnavailable(ChunkServiceError):
    """No replica of a chunk could be read and verified."""


class UploadTooLarge(ChunkServiceError):
    """The stream passed the upload's size limit."""


class ChecksumMismatch(ChunkServiceError):
    """The stream's SHA-256 is not the one the caller announced."""


class DigestMismatch(ChunkServiceError):
    """A chunk sent under a SHA-256 (``PutChunk``) does not hash to it: nothing stored."""


class ChunkTooLarge(ChunkServiceError):
    """A chunk sent on its own (``PutChunk``) is empty or larger than the configured
    chunker's ``max_size_bytes``: nothing stored."""


class InvalidRequest(ChunkServiceError):
    """The request is malformed (bad context, range, manifest)."""


class ManifestNotFound(ChunkServiceError):
    """No manifest with that id."""


class NoRing(ChunkServiceError):
    """No ring has been stored yet, so chunks have nowhere to go."""


class ChunkBeingSwept(ChunkServiceError):
    """The garbage collector is deleting this chunk's bytes and did not finish in time
    for the write to wait it out; retrying the write later stores the chunk again."""
