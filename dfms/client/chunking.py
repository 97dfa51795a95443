"""Client-side chunking: cut a local file exactly as the server would, and hash it.

Runs in a worker thread (``asyncio.to_thread``): the file is read in blocks and less than
one maximal chunk plus one block is held at a time, so memory stays bounded whatever the
file's size. Only the manifest (offset, size, SHA-256 per chunk) is kept; the chunks to
send are read again by offset when they are sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfms.chunker import Chunker, ChunkerError, ChunkerParams, make_chunker_from
from dfms.client.errors import FileChanged
from dfms.client.models import ChunkerInfo

READ_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChunkRef:
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    size: int
    sha256: str
    chunks: tuple[ChunkRef, ...]


def local_chunker(info: ChunkerInfo) -> Chunker | None:
    """The chunker the server advertises, or None when this client cannot reproduce it
    (unknown algorithm or digest, parameters our chunker refuses, a missing backend)."""
    if info.digest != "sha256":
        return None
    params = ChunkerParams(info.algorithm, info.min_size_bytes, info.avg_size_bytes,
                           info.max_size_bytes)
    try:
        return make_chunker_from(params)
    except (ChunkerError, ImportError):
        return None


def build_manifest(path: Path, chunker: Chunker, block: int = READ_BLOCK,
                   on_read: Callable[[int], None] | None = None) -> Manifest:
    """Cut and hash the file at ``path`` (blocking: call it in a thread). ``on_read`` is
    told the bytes read so far after each block (for a progress display)."""
    whole = hashlib.sha256()
    chunks: list[ChunkRef] = []
    pending = bytearray()
    offset = 0  # of pending's first byte in the file
    with path.open("rb") as f:
        while data := f.read(block):
            whole.update(data)
            pending += data
            offset = _take_settled(chunker, pending, offset, chunks)
            if on_read is not None:
                on_read(offset + len(pending))
    with memoryview(pending) as view:
        for start, length in chunker.cut(view):
            chunks.append(_ref(view, start, length, offset + start))
    return Manifest(offset + len(pending), whole.hexdigest(), tuple(chunks))


def _take_settled(chunker: Chunker, pending: bytearray, offset: int,
                  chunks: list[ChunkRef]) -> int:
    """Append the chunks later bytes cannot change (a boundary depends only on the
    ``max_size`` bytes from its chunk's start), drop them; return the new offset."""
    start = 0
    with memoryview(pending) as view:
        while len(view) - start >= chunker.max_size:
            length = chunker.first_length(view[start:start + chunker.max_size])
            chunks.append(_ref(view, start, length, offset + start))
            start += length
    del pending[:start]
    return offset + start


def _ref(view: memoryview, start: int, length: int, file_offset: int) -> ChunkRef:
    return ChunkRef(file_offset, length, hashlib.sha256(view[start:start + length]).hexdigest())


def read_chunk(path: Path, ref: ChunkRef) -> bytes:
    """The bytes of one chunk (blocking), checked against its hash: a file changed since
    it was cut must not be sent under the old hash (the server would refuse it anyway)."""
    with path.open("rb") as f:
        f.seek(ref.offset)
        data = f.read(ref.size)
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise FileChanged(0, "file_changed", f"{path} changed while it was being uploaded")
    return data


def sha256_file(path: Path, block_bytes: int = 1024 * 1024) -> str:
    """The SHA-256 of a whole file, read in ``block_bytes`` pieces (run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()
