"""Errors of the storage-node client, independent of the S3 library underneath."""

from __future__ import annotations

from dfms.errors import DfmsError


class StorageError(DfmsError):
    """A storage-node call failed."""

    def __init__(self, node_id: str, message: str) -> None:
        self.node_id = node_id
        super().__init__(f"{node_id}: {message}")


class NodeUnavailable(StorageError):
    """The node could not be reached, timed out or answered 5xx: worth a retry elsewhere."""


class ObjectNotFound(StorageError):
    """The node answered, and it does not hold the object."""


class StorageRejected(StorageError):
    """The node refused the request (credentials, bad request): retrying will not help."""
