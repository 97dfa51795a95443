"""S3 storage-node clients: one per node, chunk objects under ``hh/hh/<sha256>``."""

from dfms.storage.client import NodeClient, chunk_key
from dfms.storage.errors import (
    NodeUnavailable,
    ObjectNotFound,
    StorageError,
    StorageRejected,
)

__all__ = ["NodeClient", "NodeUnavailable", "ObjectNotFound", "StorageError",
           "StorageRejected", "chunk_key"]
