"""Builds the chunker a configuration asks for."""

from __future__ import annotations

from dfms.chunker.base import Chunker
from dfms.chunker.params import (
    AVG_SIZE_BYTES,
    DEFAULT_ALGORITHM,
    FASTCDC,
    MAX_SIZE_BYTES,
    MIN_SIZE_BYTES,
    ChunkerParams,
)


def make_chunker(
    algorithm: str = DEFAULT_ALGORITHM,
    min_size: int = MIN_SIZE_BYTES,
    avg_size: int = AVG_SIZE_BYTES,
    max_size: int = MAX_SIZE_BYTES,
) -> Chunker:
    """Return a chunker; raise InvalidChunkerParams if the parameters are unusable."""
    return make_chunker_from(ChunkerParams(algorithm, min_size, avg_size, max_size))


def make_chunker_from(params: ChunkerParams) -> Chunker:
    params.validate()
    # Imported here so that a missing compiled backend only breaks its own algorithm.
    if params.algorithm == FASTCDC:
        from dfms.chunker.fastcdc import FastCDCChunker

        return FastCDCChunker(params)
    from dfms.chunker.rabin import RabinChunker

    return RabinChunker(params)
