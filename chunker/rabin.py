"""Rabin fingerprint chunking over a 64-byte window, scanned by the C extension ``_rabin``.

A boundary follows a byte when the chunk is at least ``min_size`` long and
the fingerprint of the 64 bytes ending there has its low ``log2(avg_size)``
bits all set; a chunk is cut at ``max_size`` otherwise. The mean chunk comes
out near ``min_size + avg_size`` (less the share truncated at max).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from dfms.chunker import _rabin
from dfms.chunker.base import BytesLike, Chunker, byte_view
from dfms.chunker.params import RABIN, RABIN_WINDOW_SIZE_BYTES, ChunkerParams

# Irreducible over GF(2), degree 53. It is compiled into _rabin (never drawn at
# random), so boundaries are the same in every process; changing it changes
# every boundary.
POLYNOMIAL: Final = 0x3DA3358B4DC173
POLYNOMIAL_DEGREE: Final = 53
WINDOW_SIZE_BYTES: Final = RABIN_WINDOW_SIZE_BYTES

if (_rabin.POLYNOMIAL, _rabin.WINDOW_SIZE) != (POLYNOMIAL, WINDOW_SIZE_BYTES):
    raise ImportError("dfms.chunker._rabin was built with another polynomial or window size")


def fingerprint(data: BytesLike) -> int:
    """Rabin fingerprint of the last 64 bytes of ``data`` (all of it if shorter)."""
    return _rabin.fingerprint(data)


class RabinChunker(Chunker):
    """Rabin-Karp rolling hash chunker."""

    def __init__(self, params: ChunkerParams) -> None:
        super().__init__(params)
        if params.algorithm != RABIN:
            raise ValueError(f"RabinChunker got params for {params.algorithm!r}")
        self._min = params.min_size_bytes
        self._max = params.max_size_bytes
        self._mask = params.avg_size_bytes - 1

    def first_length(self, buffer: BytesLike) -> int:
        return _rabin.find_cut(buffer, 0, self._min, self._max, self._mask)

    def cut(self, buffer: BytesLike) -> Iterator[tuple[int, int]]:
        # One call per chunk rather than one for the whole buffer: the GIL is
        # released during each scan, so a caller can hash chunk k on another
        # thread while chunk k+1 is being found.
        view = byte_view(buffer)
        offset, size = 0, len(view)
        while offset < size:
            length = _rabin.find_cut(view, offset, self._min, self._max, self._mask)
            yield offset, length
            offset += length
