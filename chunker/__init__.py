"""Content-defined chunkers (imported as ``dfms.chunker``).

This folder sits at the repository's top level and is mapped to
``dfms.chunker`` by ``[tool.setuptools.package-dir]`` in pyproject.toml.

FastCDC (the default) and Rabin fingerprinting cut bytes at boundaries that
depend only on the bytes and on ``ChunkerParams``::

    chunker = make_chunker("fastcdc", min_size=..., avg_size=..., max_size=...)
    for offset, length in chunker.cut(buffer): ...
    async for chunk in chunker.stream(frames): ...
    digests = hash_chunks(buffer, chunker)  # cut and SHA-256 on all cores
"""

from dfms.chunker.base import BytesLike, Chunker
from dfms.chunker.errors import ChunkerError, InvalidChunkerParams
from dfms.chunker.factory import make_chunker, make_chunker_from
from dfms.chunker.hashing import ChunkDigest, hash_chunks, hash_stream
from dfms.chunker.params import (
    ALGORITHMS,
    AVG_SIZE_BYTES,
    DEFAULT_ALGORITHM,
    FASTCDC,
    MAX_SIZE_BYTES,
    MIN_SIZE_BYTES,
    RABIN,
    ChunkerParams,
)

__all__ = [
    "ALGORITHMS",
    "AVG_SIZE_BYTES",
    "DEFAULT_ALGORITHM",
    "FASTCDC",
    "MAX_SIZE_BYTES",
    "MIN_SIZE_BYTES",
    "RABIN",
    "BytesLike",
    "ChunkDigest",
    "Chunker",
    "ChunkerError",
    "ChunkerParams",
    "InvalidChunkerParams",
    "hash_chunks",
    "hash_stream",
    "make_chunker",
    "make_chunker_from",
]
