"""Pins the exact chunk boundaries so that no optimisation can silently move them.

Regenerate (only when a boundary change is intended, which breaks dedup
against everything stored before) with:

    python tests/unit/test_chunker_golden.py --regenerate
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from dfms.chunker import make_chunker
from dfms.chunker.rabin import POLYNOMIAL, POLYNOMIAL_DEGREE, WINDOW_SIZE_BYTES, fingerprint

GOLDEN_PATH = Path(__file__).parent / "golden" / "chunker_boundaries.json"
KIB = 1024
MIB = 1024 * KIB
SEED = 1234

# (min, avg, max, input size): a small grid around the shapes the tests and
# the service use.
GRID = [
    (64, 256, 1 * KIB, 256 * KIB),
    (1 * KIB, 4 * KIB, 16 * KIB, 1 * MIB),
    (8 * KIB, 32 * KIB, 128 * KIB, 4 * MIB),
    (256 * KIB, 1 * MIB, 4 * MIB, 24 * MIB),
]
ALGORITHMS = ("fastcdc", "rabin")


@cache
def golden_input(size: int) -> bytes:
    """Seeded bytes with a run of zeros and a repeated stretch, same on every Python."""
    rng = random.Random(SEED)
    quarter = size // 4
    head = rng.randbytes(quarter)
    return (head + bytes(quarter) + head[: quarter // 2] + rng.randbytes(size))[:size]


def case_id(algorithm: str, min_size: int, avg_size: int, max_size: int, size: int) -> str:
    return f"{algorithm}-{min_size}-{avg_size}-{max_size}-{size}"


def compute_lengths(
    algorithm: str, min_size: int, avg_size: int, max_size: int, size: int
) -> list[int]:
    chunker = make_chunker(algorithm, min_size, avg_size, max_size)
    return [length for _, length in chunker.cut(golden_input(size))]


def all_cases() -> list[tuple[str, int, int, int, int]]:
    return [(alg, *sizes) for alg in ALGORITHMS for sizes in GRID]


@cache
def load_golden() -> dict[str, dict[str, object]]:
    return json.loads(GOLDEN_PATH.read_text())


def test_golden_input_is_stable() -> None:
    # Guards the PRNG itself: if this moved, every case below would too.
    digest = hashlib.sha256(golden_input(1 * MIB)).hexdigest()
    assert digest == load_golden()["input_sha256_1mib"]


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: case_id(*c))
def test_boundaries_match_golden(case: tuple[str, int, int, int, int]) -> None:
    expected = load_golden()["cases"][case_id(*case)]
    lengths = compute_lengths(*case)
    assert len(lengths) == expected["count"]
    assert lengths == expected["lengths"]
    assert sum(lengths) == case[-1]


def test_boundaries_are_identical_in_a_fresh_process() -> None:
    code = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_chunker_golden import compute_lengths\n"
        "print(json.dumps({alg: compute_lengths(alg, 1024, 4096, 16384, 1 << 20)"
        " for alg in ('fastcdc', 'rabin')}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    fresh = json.loads(out)
    for alg in ALGORITHMS:
        assert fresh[alg] == compute_lengths(alg, 1024, 4096, 16384, 1 * MIB)


# --- Rabin against a from-scratch Python reference ---------------------------


def poly_mod(value: int, modulus: int) -> int:
    degree = modulus.bit_length() - 1
    while value.bit_length() - 1 >= degree:
        value ^= modulus << (value.bit_length() - 1 - degree)
    return value


def poly_mul_mod(a: int, b: int, modulus: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        b >>= 1
    return poly_mod(product, modulus)


def poly_gcd(a: int, b: int) -> int:
    while b:
        a, b = b, poly_mod(a, b)
    return a


def test_polynomial_is_irreducible_with_the_stated_degree() -> None:
    # Rabin's test for a prime degree n: x^(2^n) = x (mod P) and
    # gcd(x^2 - x, P) = 1 (x^2 - x is x^2 + x over GF(2)).
    assert POLYNOMIAL.bit_length() - 1 == POLYNOMIAL_DEGREE == 53
    power = 0b10  # x
    for _ in range(POLYNOMIAL_DEGREE):
        power = poly_mul_mod(power, power, POLYNOMIAL)
    assert power == 0b10
    assert poly_gcd(POLYNOMIAL, 0b110) == 1


def reference_fingerprint(window: bytes) -> int:
    return poly_mod(int.from_bytes(window, "big"), POLYNOMIAL)


def reference_rabin_lengths(data: bytes, min_size: int, avg_size: int, max_size: int) -> list[int]:
    mask, start = avg_size - 1, 0
    lengths: list[int] = []
    while start < len(data):
        end = min(len(data), start + max_size)
        cut = end
        for i in range(start + min_size - 1, end):
            window = data[i + 1 - WINDOW_SIZE_BYTES : i + 1]
            if reference_fingerprint(window) & mask == mask:
                cut = i + 1
                break
        lengths.append(cut - start)
        start = cut
    return lengths


def test_rabin_fingerprint_matches_reference() -> None:
    data = golden_input(4 * KIB)
    for end in (1, 63, 64, 65, 1000, len(data)):
        window = data[max(0, end - WINDOW_SIZE_BYTES) : end]
        assert fingerprint(data[:end]) == reference_fingerprint(window)


@pytest.mark.parametrize(
    ("min_size", "avg_size", "max_size"), [(64, 256, 1024), (1024, 4096, 16384)]
)
def test_rabin_matches_reference(min_size: int, avg_size: int, max_size: int) -> None:
    data = golden_input(48 * KIB)
    expected = reference_rabin_lengths(data, min_size, avg_size, max_size)
    assert compute_lengths("rabin", min_size, avg_size, max_size, len(data)) == expected


def regenerate() -> None:
    cases = {}
    for case in all_cases():
        lengths = compute_lengths(*case)
        cases[case_id(*case)] = {"count": len(lengths), "lengths": lengths}
    golden = {
        "seed": SEED,
        "input_sha256_1mib": hashlib.sha256(golden_input(1 * MIB)).hexdigest(),
        "cases": cases,
    }
    GOLDEN_PATH.write_text(json.dumps(golden, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    regenerate()
