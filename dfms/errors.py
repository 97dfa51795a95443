"""The DFMS exception tree.

Every package-level failure is a ``DfmsError``; boundaries (HTTP, gRPC, CLI)
translate these into their own error shapes. Third-party exceptions are
wrapped with ``raise ... from`` so the cause is kept.
"""

from __future__ import annotations


class DfmsError(Exception):
    """Base of every error DFMS raises on purpose."""


class ConfigError(DfmsError, ValueError):
    """A configuration value is missing, malformed or out of range."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid config {key}={value!r}: {allowed}")


class NoConfigError(DfmsError):
    """A command that needs a cluster's config found none (no file, no environment)."""


class StackError(DfmsError):
    """The local cluster could not be started or stopped."""


class ClusterLockedError(StackError):
    """Another `dfms up` already owns the data directory."""


class MigrationError(DfmsError):
    """A schema migration failed or the migration history is inconsistent."""


class DependencyUnavailable(DfmsError):
    """A dependency (database, cache, broker, node) could not be reached; the same
    request may succeed once it is back. Each subclass names one dependency, and the
    HTTP edge answers each with 503, ``Retry-After`` and its own stable code."""


class MetadataUnavailable(DependencyUnavailable):
    """PostgreSQL, which holds the metadata, is down, refusing or shutting down."""


class ChunkServiceUnavailable(DependencyUnavailable):
    """The chunk service cannot be reached."""


class StorageUnavailable(DependencyUnavailable):
    """Too few storage nodes answer: no write quorum, or no replica can be read."""


class BrokerUnavailable(DependencyUnavailable):
    """The Kafka-API broker cannot be reached."""


class RateLimiterUnavailable(DependencyUnavailable):
    """Redis, behind the rate limits, cannot be reached (and limits fail closed)."""
