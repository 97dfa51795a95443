"""The gateway's upload frames: any stream of pieces becomes frames of exactly the
frame size (the last may be shorter), same bytes, same order."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from dfms.chunkservice.client import reframe


async def _pieces(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@pytest.mark.parametrize("size", [1, 7, 64, 1000])
async def test_frames_are_the_size_asked_and_carry_the_same_bytes(size: int) -> None:
    rng = random.Random(size)
    for _ in range(200):
        pieces = [rng.randbytes(rng.choice([0, size, rng.randint(1, 3 * size + 5)]))
                  for _ in range(rng.randint(0, 12))]
        frames = [f async for f in reframe(_pieces(pieces), size)]
        assert b"".join(frames) == b"".join(pieces)
        assert all(type(f) is bytes for f in frames)  # protobuf takes bytes, not views
        assert all(len(f) == size for f in frames[:-1])
        assert all(0 < len(f) <= size for f in frames[-1:])


async def test_a_piece_of_the_frame_size_goes_out_as_it_is() -> None:
    piece = bytes(range(64))
    frames = [f async for f in reframe(_pieces([piece, piece]), 64)]
    assert frames[0] is piece and frames[1] is piece
