"""Cuts an async stream of frames into chunks with bounded memory.

The buffer holds less than one max chunk plus the newest frame: whenever it
holds at least ``max_size`` bytes, its first chunk is final (a boundary only
depends on the ``max_size`` bytes from its chunk's start), so it is emitted
and dropped. The chunks are therefore the same as ``cut`` over the whole
input, however the input was split into frames.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dfms.chunker.base import BytesLike, Chunker


async def stream_chunks(chunker: Chunker, frames: AsyncIterable[BytesLike]) -> AsyncIterator[bytes]:
    """Yield the chunks of the concatenation of ``frames`` as bytes."""
    pending = bytearray()
    async for frame in frames:
        pending += frame
        if len(pending) < chunker.max_size:
            continue
        for chunk in _settled_chunks(chunker, pending):
            yield chunk
    with memoryview(pending) as view:
        for offset, length in chunker.cut(view):
            yield bytes(view[offset : offset + length])


def _settled_chunks(chunker: Chunker, pending: bytearray) -> Iterator[bytes]:
    """Yield, then drop from ``pending``, each chunk that later bytes cannot change."""
    start = 0
    with memoryview(pending) as view:
        while len(view) - start >= chunker.max_size:
            length = chunker.first_length(view[start : start + chunker.max_size])
            yield bytes(view[start : start + length])
            start += length
    # Deleting a bytearray's head only moves its start pointer in CPython, and
    # less than max_size bytes remain anyway, so nothing is copied quadratically.
    del pending[:start]
