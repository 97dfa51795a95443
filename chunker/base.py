"""The interface every chunker implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Iterator

from dfms.chunker.params import ChunkerParams
from dfms.chunker.stream import stream_chunks

# Anything exposing a contiguous byte buffer without a copy.
BytesLike = bytes | bytearray | memoryview


def byte_view(buffer: BytesLike) -> memoryview:
    """A flat unsigned-byte view of ``buffer``, so that lengths count bytes."""
    view = memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class Chunker(ABC):
    """Cuts bytes into content-defined chunks.

    Boundaries are a pure function of the bytes and ``params``. A boundary
    only depends on the bytes in ``[start, start + max_size)`` of its chunk,
    which is what lets ``stream`` cut a stream piece by piece.

    Chunkers hold no state between calls: one instance can serve many
    threads and tasks at once.
    """

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params.validate()

    @property
    def max_size(self) -> int:
        return self.params.max_size_bytes

    @abstractmethod
    def first_length(self, buffer: BytesLike) -> int:
        """Length of the first chunk of ``buffer``.

        Final once ``len(buffer) >= max_size``; shorter buffers are treated
        as the end of the input.
        """

    @abstractmethod
    def cut(self, buffer: BytesLike) -> Iterator[tuple[int, int]]:
        """Yield ``(offset, length)`` pairs that cover the whole buffer in order."""

    async def stream(self, frames: AsyncIterable[BytesLike]) -> AsyncIterator[bytes]:
        """Yield the chunks of the concatenated frames, however they were split."""
        async for chunk in stream_chunks(self, frames):
            yield chunk

    def __repr__(self) -> str:
        p = self.params
        return (
            f"{type(self).__name__}(min={p.min_size_bytes}, avg={p.avg_size_bytes}, "
            f"max={p.max_size_bytes})"
        )
