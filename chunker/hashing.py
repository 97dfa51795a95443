"""SHA-256 of every chunk, overlapping the cutting with the hashing.

hashlib and both chunkers release the GIL on large inputs, so hashing chunk k
on worker threads while the caller's thread finds chunk k+1 uses every core.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Final, NamedTuple

from dfms.chunker.base import BytesLike, Chunker, byte_view

# Enough chunks in flight to keep every worker busy; more would only hold
# memory in the streaming case.
MAX_IN_FLIGHT_PER_WORKER: Final = 2

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class ChunkDigest(NamedTuple):
    offset: int
    length: int
    digest: bytes  # SHA-256, 32 bytes


def sha256(data: BytesLike) -> bytes:
    return hashlib.sha256(data).digest()


def default_executor() -> ThreadPoolExecutor:
    """A process-wide pool with one hashing thread per core, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="dfms-chunk-hash")
        return _pool


def hash_chunks(
    buffer: BytesLike, chunker: Chunker, *, executor: Executor | None = None
) -> list[ChunkDigest]:
    """Cut ``buffer`` and return ``(offset, length, sha256)`` of each chunk, in order."""
    pool = executor or default_executor()
    view = byte_view(buffer)
    jobs = [
        (offset, length, pool.submit(sha256, view[offset : offset + length]))
        for offset, length in chunker.cut(view)
    ]
    return [ChunkDigest(offset, length, job.result()) for offset, length, job in jobs]


async def hash_stream(
    chunker: Chunker, frames: AsyncIterable[BytesLike], *, executor: Executor | None = None
) -> AsyncIterator[tuple[bytes, bytes]]:
    """Yield ``(sha256, chunk)`` for each chunk of the stream, in order.

    At most a few chunks wait for their digest at once, so memory stays
    bounded like ``Chunker.stream``'s.
    """
    pool = executor or default_executor()
    limit = MAX_IN_FLIGHT_PER_WORKER * (os.cpu_count() or 1)
    in_flight: deque[tuple[asyncio.Future[bytes], bytes]] = deque()
    loop = asyncio.get_running_loop()
    async for chunk in chunker.stream(frames):
        in_flight.append((loop.run_in_executor(pool, sha256, chunk), chunk))
        if len(in_flight) >= limit:
            digest_job, done = in_flight.popleft()
            yield await digest_job, done
    while in_flight:
        digest_job, done = in_flight.popleft()
        yield await digest_job, done
