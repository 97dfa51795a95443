"""Chunker throughput and chunk-size distribution.

    python benchmarks/bench_chunker.py [--size-mib 256] [--repeat 3]

Every figure is the best of --repeat runs over one seeded random buffer.
"chunk+sha256" is ``hash_chunks`` (cutting overlapped with hashing on a
thread pool); its ratio to ``hashlib.sha256`` over the same buffer in the same
run is the figure that matters (target >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from dfms.chunker import (
    ALGORITHMS,
    AVG_SIZE_BYTES,
    MAX_SIZE_BYTES,
    MIN_SIZE_BYTES,
    Chunker,
    hash_chunks,
    make_chunker,
)

MIB = 1024 * 1024
FRAME_BYTES = 1 * MIB  # a typical upload frame for the stream figure


def seeded_bytes(size: int) -> bytes:
    # randbytes goes through one int of 8*size bits, which overflows past 256 MiB.
    rng, piece = random.Random(0), 16 * MIB
    return b"".join(rng.randbytes(min(piece, size - at)) for at in range(0, size, piece))


def best_seconds(run: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def cut_all(chunker: Chunker, buffer: bytes) -> list[tuple[int, int]]:
    return list(chunker.cut(buffer))


def cut_then_hash(chunker: Chunker, buffer: bytes) -> list[bytes]:
    view = memoryview(buffer)
    return [hashlib.sha256(view[o : o + n]).digest() for o, n in chunker.cut(view)]


def stream_all(chunker: Chunker, buffer: bytes) -> int:
    async def frames() -> AsyncIterator[bytes]:
        for start in range(0, len(buffer), FRAME_BYTES):
            yield buffer[start : start + FRAME_BYTES]

    async def drain() -> int:
        return sum([len(chunk) async for chunk in chunker.stream(frames())])

    return asyncio.run(drain())


def distribution(lengths: list[int], max_size: int) -> dict[str, float]:
    ordered = sorted(lengths)
    at_max = sum(n == max_size for n in lengths[:-1])
    return {
        "chunks": len(lengths),
        "mean": statistics.fmean(lengths),
        "p50": ordered[len(ordered) // 2],
        "p90": ordered[int(len(ordered) * 0.9)],
        "at_max": at_max / len(lengths),
    }


def measure(algorithm: str, buffer: bytes, repeat: int, sha_seconds: float) -> dict[str, Any]:
    chunker = make_chunker(algorithm, MIN_SIZE_BYTES, AVG_SIZE_BYTES, MAX_SIZE_BYTES)
    size = len(buffer)
    hashed = best_seconds(lambda: hash_chunks(buffer, chunker), repeat)
    return {
        "algorithm": algorithm,
        "chunk": mb_per_s(size, best_seconds(lambda: cut_all(chunker, buffer), repeat)),
        "stream": mb_per_s(size, best_seconds(lambda: stream_all(chunker, buffer), repeat)),
        "serial": mb_per_s(size, best_seconds(lambda: cut_then_hash(chunker, buffer), repeat)),
        "hashed": mb_per_s(size, hashed),
        "ratio": sha_seconds / hashed,
        **distribution([n for _, n in chunker.cut(buffer)], MAX_SIZE_BYTES),
    }


def fastcdc_libraries(buffer: bytes, repeat: int) -> list[tuple[str, float]]:
    """Raw speed of the two installed FastCDC libraries (their boundaries differ)."""
    from fastcdc.fastcdc_cy import fastcdc_cy
    from pyfastcdc.cy import FastCDC

    cdc = FastCDC(AVG_SIZE_BYTES, min_size=MIN_SIZE_BYTES, max_size=MAX_SIZE_BYTES)
    runs = {
        "pyfastcdc (used)": lambda: list(cdc.cut_buf(buffer)),
        "fastcdc": lambda: list(fastcdc_cy(buffer, MIN_SIZE_BYTES, AVG_SIZE_BYTES, MAX_SIZE_BYTES)),
    }
    return [(name, mb_per_s(len(buffer), best_seconds(run, repeat))) for name, run in runs.items()]


def print_report(size: int, sha: float, rows: list[dict[str, Any]], libs: list) -> None:
    print(
        f"buffer {size // MIB} MiB seeded random; sizes min/avg/max = "
        f"{MIN_SIZE_BYTES // 1024} KiB / {AVG_SIZE_BYTES // 1024} KiB / "
        f"{MAX_SIZE_BYTES // 1024} KiB"
    )
    print(f"hashlib.sha256 alone: {sha:8.0f} MB/s\n")
    head = ("algorithm", "chunk", "stream", "chunk+sha", "chunk+sha", "ratio vs")
    sub = ("", "MB/s", "MB/s", "serial MB/s", "overlap MB/s", "sha alone")
    for line in (head, sub):
        print("{:<10} {:>9} {:>9} {:>12} {:>13} {:>10}".format(*line))
    for r in rows:
        print(
            f"{r['algorithm']:<10} {r['chunk']:>9.0f} {r['stream']:>9.0f} {r['serial']:>12.0f} "
            f"{r['hashed']:>13.0f} {r['ratio']:>10.2f}"
        )
    print(
        "\n{:<10} {:>7} {:>10} {:>10} {:>10} {:>8}".format(
            "algorithm", "chunks", "mean KiB", "p50 KiB", "p90 KiB", "at max"
        )
    )
    for r in rows:
        print(
            f"{r['algorithm']:<10} {r['chunks']:>7} {r['mean'] / 1024:>10.0f} "
            f"{r['p50'] / 1024:>10.0f} {r['p90'] / 1024:>10.0f} {r['at_max']:>8.1%}"
        )
    print("\nFastCDC libraries, chunk only:")
    for name, speed in libs:
        print(f"  {name:<18} {speed:8.0f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    buffer = seeded_bytes(args.size_mib * MIB)
    sha_seconds = best_seconds(lambda: hashlib.sha256(buffer).digest(), args.repeat)
    rows = [measure(alg, buffer, args.repeat, sha_seconds) for alg in ALGORITHMS]
    libs = fastcdc_libraries(buffer, args.repeat)
    print_report(len(buffer), mb_per_s(len(buffer), sha_seconds), rows, libs)


if __name__ == "__main__":
    main()
