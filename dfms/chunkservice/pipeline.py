"""Streaming upload and download over the chunk store, with bounded memory.

Upload: frames -> chunker -> SHA-256 per chunk (worker threads) -> up to
``parallel`` chunk writes in flight, results kept in file order. Memory holds
about one max chunk plus one frame in the chunker and ``parallel`` chunks in
flight. The whole-stream SHA-256 runs on its own thread, in frame order.

Download: the manifest maps the byte range to chunks (bisect, no reading from
the start); up to ``prefetch`` chunks are fetched ahead while earlier ones
stream out in frames.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dfms.chunker import Chunker, hash_stream
from dfms.chunkservice.errors import ChecksumMismatch, InvalidRequest, UploadTooLarge

if TYPE_CHECKING:  # annotations only: clients (the gateway) import this module for
    # ChunkEntry/UploadSummary without the store, its asyncpg code and its metrics
    from dfms.chunkservice.store import ChunkStore, StoreOutcome


@dataclass(frozen=True, slots=True)
class ChunkEntry:
    sha256: bytes
    offset: int
    size: int


@dataclass
class UploadSummary:
    chunks: list[ChunkEntry] = field(default_factory=list)
    total_size: int = 0
    sha256: bytes = b""
    new_chunks: int = 0
    dedup_chunks: int = 0
    new_bytes: int = 0
    dedup_bytes: int = 0
    under_replicated_chunks: int = 0

    def add(self, entry: ChunkEntry, outcome: StoreOutcome, replicas_n: int) -> None:
        self.chunks.append(entry)
        if outcome.new:
            self.new_chunks += 1
            self.new_bytes += entry.size
            if outcome.replicas < replicas_n:
                self.under_replicated_chunks += 1
        else:
            self.dedup_chunks += 1
            self.dedup_bytes += entry.size


class _StreamHash:
    """SHA-256 of a stream on one worker thread: overlaps the chunk hashing, keeps order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dfms-stream-hash")
        self._last: asyncio.Future[None] | None = None

    def update(self, frame: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._last = loop.run_in_executor(self._pool, self._hash.update, frame)

    async def digest(self) -> bytes:
        if self._last is not None:
            await self._last  # one worker runs the updates in submission order
        return self._hash.digest()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def ingest(store: ChunkStore, chunker: Chunker, frames: AsyncIterable[bytes], *,
                 parallel: int, max_size: int = 0, expected_sha256: bytes = b"",
                 expected_size: int = -1) -> UploadSummary:
    summary = UploadSummary()
    stream_hash = _StreamHash()

    async def counted() -> AsyncIterator[bytes]:
        async for frame in frames:
            summary.total_size += len(frame)
            if max_size and summary.total_size > max_size:
                raise UploadTooLarge(f"upload exceeds its limit of {max_size} bytes")
            stream_hash.update(frame)
            yield frame

    in_flight: deque[tuple[asyncio.Task[StoreOutcome], ChunkEntry]] = deque()
    offset = 0
    try:
        async for digest, chunk in hash_stream(chunker, counted()):
            entry = ChunkEntry(digest, offset, len(chunk))
            offset += len(chunk)
            in_flight.append((asyncio.create_task(store.put(digest, chunk)), entry))
            if len(in_flight) >= parallel:
                task, done = in_flight.popleft()
                summary.add(done, await task, store.n)
        while in_flight:
            task, done = in_flight.popleft()
            summary.add(done, await task, store.n)
        summary.sha256 = await stream_hash.digest()
    finally:
        for task, _ in in_flight:
            task.cancel()
        await asyncio.gather(*(t for t, _ in in_flight), return_exceptions=True)
        stream_hash.close()
    _check_expectations(summary, expected_sha256, expected_size)
    return summary


def _check_expectations(summary: UploadSummary, expected_sha256: bytes,
                        expected_size: int) -> None:
    if expected_size >= 0 and summary.total_size != expected_size:
        raise ChecksumMismatch(f"received {summary.total_size} bytes, expected "
                               f"{expected_size}")
    if expected_sha256 and summary.sha256 != expected_sha256:
        raise ChecksumMismatch(f"content SHA-256 is {summary.sha256.hex()}, expected "
                               f"{expected_sha256.hex()}")


async def read_ahead(frames: AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """Keep reading ``frames`` into a buffer of up to ``max_bytes`` while the consumer works.

    Without it, a pull-based consumer that is busy writing chunks stops reading
    the network; HTTP/2 flow control then stalls the sender, and each resume
    costs a round trip.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    room = asyncio.Semaphore(max(1, max_bytes // (256 * 1024)))  # in 256 KiB credits

    async def pump() -> None:
        try:
            async for frame in frames:
                credits = max(1, len(frame) // (256 * 1024))
                for _ in range(credits):
                    await room.acquire()
                await queue.put(frame)
            await queue.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put(exc)

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            for _ in range(max(1, len(item) // (256 * 1024))):
                room.release()
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


# --- download -----------------------------------------------------------------------

def resolve_range(chunks: Sequence[ChunkEntry], offset: int, length: int) -> tuple[int, int]:
    """(first byte, end) of the requested range; ``length < 0`` means to the end."""
    total = chunks[-1].offset + chunks[-1].size if chunks else 0
    if offset < 0 or offset > total:
        raise InvalidRequest(f"offset {offset} is outside 0..{total}")
    end = total if length < 0 else offset + length
    if end > total:
        raise InvalidRequest(f"range {offset}+{length} runs past the end ({total} bytes)")
    return offset, end


def check_manifest(chunks: Sequence[ChunkEntry]) -> None:
    expected = 0
    for i, entry in enumerate(chunks):
        if entry.offset != expected or entry.size < 0 or len(entry.sha256) != 32:
            raise InvalidRequest(f"manifest entry {i} is not contiguous or malformed")
        expected += entry.size


async def stream_range(store: ChunkStore, chunks: Sequence[ChunkEntry], start: int, end: int,
                       *, prefetch: int, frame_size: int) -> AsyncIterator[bytes]:
    """The bytes [start, end) of the manifest, in frames of at most ``frame_size``."""
    if start >= end:
        return
    offsets = [c.offset for c in chunks]
    first = bisect.bisect_right(offsets, start) - 1
    wanted = [c for c in chunks[first:] if c.offset < end]
    fetches: deque[tuple[asyncio.Task[bytes], ChunkEntry]] = deque()
    upcoming = iter(wanted)
    try:
        for entry in upcoming:
            fetches.append((asyncio.create_task(store.get(entry.sha256)), entry))
            if len(fetches) >= prefetch:
                break
        while fetches:
            task, entry = fetches.popleft()
            data = await task
            nxt = next(upcoming, None)
            if nxt is not None:
                fetches.append((asyncio.create_task(store.get(nxt.sha256)), nxt))
            lo = max(start, entry.offset) - entry.offset
            hi = min(end, entry.offset + entry.size) - entry.offset
            if lo == 0 and hi == len(data) <= frame_size:
                yield data  # the whole chunk in one frame: no copy
                continue
            view = memoryview(data)[lo:hi]
            for pos in range(0, len(view), frame_size):
                yield bytes(view[pos:pos + frame_size])
    finally:
        for task, _ in fetches:
            task.cancel()
        for task, _ in fetches:
            with contextlib.suppress(BaseException):
                await task
