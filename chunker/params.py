"""Chunker parameters, their defaults and the limits of each algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dfms.chunker.errors import InvalidChunkerParams

MIN_SIZE_BYTES: Final = 256 * 1024  # 256 KiB
AVG_SIZE_BYTES: Final = 1024 * 1024  # 1 MiB
MAX_SIZE_BYTES: Final = 4 * 1024 * 1024  # 4 MiB

FASTCDC: Final = "fastcdc"
RABIN: Final = "rabin"
ALGORITHMS: Final = (FASTCDC, RABIN)
DEFAULT_ALGORITHM: Final = FASTCDC

RABIN_WINDOW_SIZE_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """Inclusive [lo, hi] bounds an algorithm accepts for each size."""

    min_size: tuple[int, int]
    avg_size: tuple[int, int]
    max_size: tuple[int, int]


# pyfastcdc's own bounds; it keeps sizes in 32-bit fields.
FASTCDC_LIMITS: Final = SizeLimits(
    min_size=(64, 1024 * 1024),  # 64 B .. 1 MiB
    avg_size=(256, 4 * 1024 * 1024),  # 256 B .. 4 MiB
    max_size=(1024, 16 * 1024 * 1024),  # 1 KiB .. 16 MiB
)
# The Rabin scan needs a full 64-byte window before the first possible cut,
# and its mask must stay below the polynomial's degree (53 bits).
RABIN_LIMITS: Final = SizeLimits(
    min_size=(RABIN_WINDOW_SIZE_BYTES, 1024 * 1024 * 1024),  # 64 B .. 1 GiB
    avg_size=(256, 1024 * 1024 * 1024),  # 256 B .. 1 GiB
    max_size=(1024, 4 * 1024 * 1024 * 1024),  # 1 KiB .. 4 GiB
)
LIMITS: Final = {FASTCDC: FASTCDC_LIMITS, RABIN: RABIN_LIMITS}


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """Everything that determines chunk boundaries, besides the bytes."""

    algorithm: str = DEFAULT_ALGORITHM
    min_size_bytes: int = MIN_SIZE_BYTES
    avg_size_bytes: int = AVG_SIZE_BYTES
    max_size_bytes: int = MAX_SIZE_BYTES

    def validate(self) -> ChunkerParams:
        """Raise InvalidChunkerParams unless the parameters are usable; return self."""
        if self.algorithm not in ALGORITHMS:
            raise InvalidChunkerParams("algorithm", self.algorithm, f"one of {list(ALGORITHMS)}")
        limits = LIMITS[self.algorithm]
        sizes = {
            "min_size": (self.min_size_bytes, limits.min_size),
            "avg_size": (self.avg_size_bytes, limits.avg_size),
            "max_size": (self.max_size_bytes, limits.max_size),
        }
        for name, (value, (lo, hi)) in sizes.items():
            _check_range(name, value, lo, hi, self.algorithm)
        _check_order(self.min_size_bytes, self.avg_size_bytes, self.max_size_bytes)
        if not _is_power_of_two(self.avg_size_bytes):
            raise InvalidChunkerParams(
                "avg_size", self.avg_size_bytes, "must be a power of two (its log2 sets the mask)"
            )
        return self


def _check_range(name: str, value: object, lo: int, hi: int, algorithm: str) -> None:
    # bool is an int subclass, but True as a size is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidChunkerParams(name, value, "must be an int (bytes)")
    if not lo <= value <= hi:
        raise InvalidChunkerParams(name, value, f"must be in [{lo}, {hi}] for {algorithm}")


def _check_order(min_size: int, avg_size: int, max_size: int) -> None:
    if min_size >= avg_size:
        raise InvalidChunkerParams("min_size", min_size, f"must be less than avg_size ({avg_size})")
    if avg_size >= max_size:
        raise InvalidChunkerParams(
            "max_size", max_size, f"must be greater than avg_size ({avg_size})"
        )


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0
