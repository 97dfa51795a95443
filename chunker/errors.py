"""The chunker's exception tree."""

from __future__ import annotations

from dfms.errors import DfmsError


class ChunkerError(DfmsError):
    """Base of every error the chunker raises on purpose."""


class InvalidChunkerParams(ChunkerError, ValueError):
    """A chunker parameter is out of range or inconsistent with the others."""

    def __init__(self, param: str, value: object, allowed: str) -> None:
        self.param = param
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid chunker parameter {param}={value!r}: {allowed}")
