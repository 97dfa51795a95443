"""Behaviour of dfms.chunker: API, validation, distribution, properties, streaming, hashing."""

from __future__ import annotations

import array
import asyncio
import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dfms.chunker as chunker_pkg
from dfms.chunker import (
    AVG_SIZE_BYTES,
    MAX_SIZE_BYTES,
    MIN_SIZE_BYTES,
    BytesLike,
    Chunker,
    ChunkerError,
    ChunkerParams,
    InvalidChunkerParams,
    hash_chunks,
    hash_stream,
    make_chunker,
    make_chunker_from,
)

KIB = 1024
MIB = 1024 * KIB
ALGORITHMS = ("fastcdc", "rabin")
# Small sizes keep the property tests fast while still giving dozens of chunks.
SMALL = (1 * KIB, 4 * KIB, 16 * KIB)
TINY = (64, 256, 1 * KIB)

T = TypeVar("T")
FAST = settings(max_examples=40, deadline=None)


def seeded(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk_bytes(chunker: Chunker, data: bytes) -> list[bytes]:
    return [data[offset : offset + length] for offset, length in chunker.cut(data)]


async def frames_of(data: bytes, cuts: Iterable[int]) -> AsyncIterator[bytes]:
    start = 0
    for end in sorted(cuts):
        yield data[start:end]
        start = end
    yield data[start:]


def offsets(chunks: list[bytes]) -> list[int]:
    result, total = [], 0
    for chunk in chunks:
        result.append(total)
        total += len(chunk)
    return result


def run(coro: Coroutine[Any, Any, T]) -> T:
    # A private loop: asyncio.run would reset the current loop pytest-asyncio uses.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def collect(chunker: Chunker, data: bytes, cuts: Iterable[int]) -> list[bytes]:
    return [chunk async for chunk in chunker.stream(frames_of(data, cuts))]


# --- API ---------------------------------------------------------------------


def test_defaults_and_exports() -> None:
    assert (MIN_SIZE_BYTES, AVG_SIZE_BYTES, MAX_SIZE_BYTES) == (256 * KIB, 1 * MIB, 4 * MIB)
    chunker = make_chunker()
    assert isinstance(chunker, Chunker)
    assert chunker.params == ChunkerParams("fastcdc", 256 * KIB, 1 * MIB, 4 * MIB)
    for name in chunker_pkg.__all__:
        assert hasattr(chunker_pkg, name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_make_chunker_from_params(algorithm: str) -> None:
    params = ChunkerParams(algorithm, *SMALL)
    chunker = make_chunker_from(params)
    assert chunker.params is params
    assert type(chunker) is type(make_chunker(algorithm, *SMALL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.min_size_bytes = 1  # type: ignore[misc]


def test_fastcdc_uses_the_compiled_library() -> None:
    from dfms.chunker import fastcdc

    module = __import__(fastcdc.FastCDC.__module__, fromlist=["_"])
    assert module.__file__ is not None
    assert module.__file__.endswith((".so", ".pyd"))


def test_rabin_extension_rejects_bad_arguments() -> None:
    from dfms.chunker import _rabin

    with pytest.raises(ValueError, match="min_size"):
        _rabin.find_cut(b"x" * 100, 0, 32, 1024, 255)
    with pytest.raises(ValueError, match="start"):
        _rabin.find_cut(b"x" * 100, 101, 64, 1024, 255)
    with pytest.raises(TypeError):
        _rabin.find_cut("text", 0, 64, 1024, 255)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_and_short_inputs(algorithm: str) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    assert list(chunker.cut(b"")) == []
    assert list(chunker.cut(b"a")) == [(0, 1)]
    assert list(chunker.cut(bytes(SMALL[0]))) == [(0, SMALL[0])]
    assert run(collect(chunker, b"", [])) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_any_buffer_type_gives_the_same_boundaries(algorithm: str) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    data = seeded(1, 200 * KIB)
    expected = list(chunker.cut(data))
    words = array.array("I", data)  # a non-byte format: lengths must still count bytes
    for buffer in (bytearray(data), memoryview(data), memoryview(words)):
        assert list(chunker.cut(buffer)) == expected


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "sizes", "param", "value"),
    [
        ("fastcdc", (4096, 4096, 16384), "min_size", 4096),
        ("rabin", (8192, 4096, 16384), "min_size", 8192),
        ("fastcdc", (1024, 16384, 16384), "max_size", 16384),
        ("fastcdc", (1024, 3000, 16384), "avg_size", 3000),
        ("rabin", (1024, 5000, 16384), "avg_size", 5000),
        ("rabin", (32, 4096, 16384), "min_size", 32),
        ("fastcdc", (1024, 4096, 32 * MIB), "max_size", 32 * MIB),
        ("fastcdc", (1024, 8 * MIB, 16 * MIB), "avg_size", 8 * MIB),
        ("rabin", (1024, 4096.0, 16384), "avg_size", 4096.0),
        ("rabin", (True, 4096, 16384), "min_size", True),
        ("zstd", (1024, 4096, 16384), "algorithm", "zstd"),
    ],
)
def test_invalid_params_name_the_parameter(
    algorithm: str, sizes: tuple[int, int, int], param: str, value: object
) -> None:
    with pytest.raises(InvalidChunkerParams) as caught:
        make_chunker(algorithm, *sizes)
    error = caught.value
    assert isinstance(error, ChunkerError)
    assert isinstance(error, ValueError)
    assert (error.param, error.value) == (param, value)
    assert f"{param}={value!r}" in str(error)
    assert error.allowed in str(error)


def test_params_validate_returns_itself() -> None:
    params = ChunkerParams("rabin", *SMALL)
    assert params.validate() is params
    with pytest.raises(InvalidChunkerParams, match="power of two"):
        ChunkerParams("rabin", 1024, 6144, 16384).validate()


# --- distribution ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chunk_size_distribution(algorithm: str) -> None:
    min_size, avg_size, max_size = 4 * KIB, 16 * KIB, 64 * KIB
    lengths = [
        n for _, n in make_chunker(algorithm, min_size, avg_size, max_size).cut(seeded(7, 16 * MIB))
    ]
    mean = sum(lengths) / len(lengths)
    # Both algorithms skip min_size bytes before looking for a boundary, so the
    # mean is near avg + min (Rabin loses a little to chunks truncated at max).
    target = avg_size + min_size
    assert 0.9 * target <= mean <= 1.1 * target
    at_max = sum(n == max_size for n in lengths[:-1]) / len(lengths)
    assert at_max < (0.01 if algorithm == "fastcdc" else 0.04)
    assert min(lengths[:-1]) >= min_size


# --- properties --------------------------------------------------------------

inputs = st.one_of(
    st.binary(max_size=3 * KIB),
    st.builds(seeded, st.integers(0, 2**32), st.integers(0, 160 * KIB)),
    # Long zero runs and repeats: no boundary candidates, so cuts at max.
    st.builds(
        lambda seed, size, zeros: seeded(seed, size) + bytes(zeros) + seeded(seed, size),
        st.integers(0, 2**32),
        st.integers(0, 40 * KIB),
        st.integers(0, 40 * KIB),
    ),
)
configs = st.sampled_from([(alg, sizes) for alg in ALGORITHMS for sizes in (SMALL, TINY)])


@FAST
@given(data=inputs, config=configs)
def test_chunks_cover_the_input_within_bounds(
    data: bytes, config: tuple[str, Sequence[int]]
) -> None:
    algorithm, (min_size, _, max_size) = config
    cuts = list(make_chunker(algorithm, *config[1]).cut(data))
    assert b"".join(data[o : o + n] for o, n in cuts) == data
    starts = [o for o, _ in cuts]
    assert starts == [sum(n for _, n in cuts[:i]) for i in range(len(cuts))]
    for _, length in cuts[:-1]:
        assert min_size <= length <= max_size
    if cuts:
        assert 0 < cuts[-1][1] <= max_size


@FAST
@given(data=inputs, config=configs)
def test_first_length_agrees_with_cut(data: bytes, config: tuple[str, Sequence[int]]) -> None:
    chunker = make_chunker(config[0], *config[1])
    cuts = list(chunker.cut(data))
    if cuts:
        # The stream relies on this: the first cut of a max_size prefix is final.
        assert chunker.first_length(data[: chunker.max_size]) == cuts[0][1]
        assert chunker.first_length(data) == cuts[0][1]


@FAST
@given(data=inputs, config=configs, split=st.data())
def test_stream_is_independent_of_frame_splitting(
    data: bytes, config: tuple[str, Sequence[int]], split: st.DataObject
) -> None:
    chunker = make_chunker(config[0], *config[1])
    positions = st.integers(0, len(data))
    cuts = split.draw(st.lists(positions, max_size=40), label="frame boundaries")
    assert run(collect(chunker, data, cuts)) == chunk_bytes(chunker, data)


@FAST
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    seed=st.integers(0, 2**32),
    size=st.integers(64 * KIB, 256 * KIB),
    where=st.floats(1 / 3, 2 / 3),
    kind=st.sampled_from(["replace", "insert", "delete"]),
    width=st.integers(1, 64),
)
def test_an_edit_only_changes_nearby_chunks(
    algorithm: str, seed: int, size: int, where: float, kind: str, width: int
) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    data = seeded(seed, size)
    pos = int(size * where)
    patch = seeded(seed + 1, width)
    edited = {
        "replace": data[:pos] + patch + data[pos + width :],
        "insert": data[:pos] + patch + data[pos:],
        "delete": data[:pos] + data[pos + width :],
    }[kind]
    before, after = chunk_bytes(chunker, data), chunk_bytes(chunker, edited)
    # Chunks that end before the edit cannot see it.
    untouched = [c for c, o in zip(before, offsets(before), strict=True) if o + len(c) < pos]
    assert after[: len(untouched)] == untouched
    # After the edit the cuts resynchronise within a few chunks (measured: at
    # most 4 new chunks in 3000 random edits), so most chunks are kept.
    old = set(before)
    changed = sum(chunk not in old for chunk in after)
    assert changed <= 6
    assert changed <= len(after) // 2


# --- streaming -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_stream_with_extreme_frames(algorithm: str) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    data = seeded(3, 300 * KIB)
    expected = chunk_bytes(chunker, data)

    async def odd_frames() -> AsyncIterator[BytesLike]:
        yield b""
        yield data[:1]
        yield bytearray(data[1:5000])
        yield b""
        yield memoryview(data)[5000:5001]
        yield data[5001:]  # one frame far larger than max
        yield b""

    assert [c async for c in chunker.stream(odd_frames())] == expected
    one_byte_frames = range(1, 40 * KIB)
    head = data[: 40 * KIB]
    assert await collect(chunker, head, one_byte_frames) == chunk_bytes(chunker, head)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_stream_emits_chunks_before_the_input_ends(algorithm: str) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    frame_size, frames_read = 1 * KIB, 0
    data = seeded(5, 1 * MIB)

    async def counted() -> AsyncIterator[bytes]:
        nonlocal frames_read
        for start in range(0, len(data), frame_size):
            frames_read += 1
            yield data[start : start + frame_size]

    read_when_emitted = []
    async for _ in chunker.stream(counted()):
        read_when_emitted.append(frames_read * frame_size)
    # Bounded buffering: a chunk comes out once max_size bytes past its start
    # have arrived, not at the end of the input.
    starts = offsets(chunk_bytes(chunker, data))
    assert len(starts) > 100
    for start, read in zip(starts, read_when_emitted, strict=True):
        assert read <= start + chunker.max_size + frame_size or read == len(data)
    assert read_when_emitted[0] < len(data) // 10


# --- hashing -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hash_chunks_matches_cut(algorithm: str) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    data = seeded(11, 500 * KIB)
    result = hash_chunks(data, chunker)
    assert [(r.offset, r.length) for r in result] == list(chunker.cut(data))
    for r in result:
        assert r.digest == hashlib.sha256(data[r.offset : r.offset + r.length]).digest()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_hash_stream_matches_stream(algorithm: str) -> None:
    chunker = make_chunker(algorithm, *SMALL)
    data = seeded(13, 500 * KIB)
    pairs = [p async for p in hash_stream(chunker, frames_of(data, range(0, len(data), 7000)))]
    assert [chunk for _, chunk in pairs] == chunk_bytes(chunker, data)
    assert all(digest == hashlib.sha256(chunk).digest() for digest, chunk in pairs)
