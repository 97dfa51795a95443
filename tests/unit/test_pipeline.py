"""Range mapping and streaming over manifests, with an in-memory store."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfms.chunkservice.errors import InvalidRequest
from dfms.chunkservice.pipeline import ChunkEntry, check_manifest, resolve_range, stream_range


class FakeStore:
    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.reads: list[bytes] = []

    async def get(self, digest: bytes) -> bytes:
        self.reads.append(digest)
        return self.blobs[digest]


def manifest(sizes: list[int], store: FakeStore) -> tuple[list[ChunkEntry], bytes]:
    entries, data, offset = [], b"", 0
    for i, size in enumerate(sizes):
        blob = bytes([i % 251]) * size + i.to_bytes(4, "big")
        digest = hashlib.sha256(blob).digest()
        store.blobs[digest] = blob
        entries.append(ChunkEntry(digest, offset, len(blob)))
        offset += len(blob)
        data += blob
    return entries, data


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=12),
       a=st.integers(0, 5000), b=st.integers(0, 5000),
       frame=st.integers(1, 97), prefetch=st.integers(1, 4))
async def test_any_range_streams_exactly_its_bytes(sizes: list[int], a: int, b: int,
                                                   frame: int, prefetch: int) -> None:
    store = FakeStore()
    entries, data = manifest(sizes, store)
    check_manifest(entries)
    start, end = sorted((a % (len(data) + 1), b % (len(data) + 1)))
    lo, hi = resolve_range(entries, start, end - start)
    pieces = [p async for p in stream_range(store, entries, lo, hi,  # type: ignore[arg-type]
                                            prefetch=prefetch, frame_size=frame)]
    assert b"".join(pieces) == data[start:end]
    assert all(0 < len(p) <= frame for p in pieces)
    # Only chunks overlapping the range are read: no reading from the start.
    overlapping = [e.sha256 for e in entries
                   if e.offset < end and e.offset + e.size > start and start < end]
    assert sorted(store.reads) == sorted(overlapping)


def test_ranges_outside_the_content_are_refused() -> None:
    store = FakeStore()
    entries, data = manifest([10, 10], store)
    assert resolve_range(entries, 0, -1) == (0, len(data))
    assert resolve_range(entries, len(data), -1) == (len(data), len(data))
    with pytest.raises(InvalidRequest):
        resolve_range(entries, len(data) + 1, -1)
    with pytest.raises(InvalidRequest):
        resolve_range(entries, 5, len(data))
    with pytest.raises(InvalidRequest):
        resolve_range(entries, -1, 3)


def test_a_manifest_with_gaps_is_refused() -> None:
    digest = b"\1" * 32
    with pytest.raises(InvalidRequest):
        check_manifest([ChunkEntry(digest, 0, 10), ChunkEntry(digest, 11, 10)])
    with pytest.raises(InvalidRequest):
        check_manifest([ChunkEntry(b"short", 0, 10)])
