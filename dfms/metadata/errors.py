"""Failures of the metadata layer's domain functions (versions, ring membership).

Each names what was refused, so every caller (the admin API, the CLI, ``dfms up``)
can tell the user the same thing; the HTTP edge turns them into answers.
"""

from __future__ import annotations

from dfms.errors import DfmsError
from dfms.ring.errors import InvalidRing


class VersionNotFound(DfmsError):
    """The file has no version with that number."""


class LastVersion(DfmsError):
    """A file keeps at least one version: its only one cannot be deleted."""


class QuotaExceeded(DfmsError):
    """The change would take the owner past their storage quota."""

    def __init__(self, quota_bytes: int | None) -> None:
        self.quota_bytes = quota_bytes
        super().__init__(f"this would exceed your storage quota of {quota_bytes} bytes")


class MembershipError(DfmsError):
    """A ring membership change (add, drain, remove, weight) was refused."""

    def __init__(self, node_id: str, message: str) -> None:
        self.node_id = node_id
        super().__init__(message)


class NodeNotFound(MembershipError):
    """No node has this id."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id, f"node {node_id!r} not found")


class NodeExists(MembershipError):
    """The id is taken, by a node in service or a removed one (ids are never reused)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id, f"a node with id {node_id!r} already exists (ids of "
                         "removed nodes are not reused: their replica records still name "
                         "them)")


class NodeRemoved(MembershipError):
    """The node was removed; it can no longer change."""

    def __init__(self, node_id: str, action: str) -> None:
        super().__init__(node_id, f"node {node_id!r} was removed; it cannot {action}")


class LastActiveNode(MembershipError):
    """The change would leave the ring without an active node."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id, f"node {node_id!r} is the ring's only active node")


class NodeHoldsOnlyCopy(MembershipError):
    """Removing the node would lose the only good replica of live chunks."""

    def __init__(self, node_id: str, chunks: int) -> None:
        self.chunks = chunks
        super().__init__(node_id, f"node {node_id!r} holds the only ok replica of {chunks} "
                         f"live chunk{'s' if chunks != 1 else ''}; drain it and wait until "
                         "the replication manager has copied them elsewhere")


class NodeUnreachable(MembershipError):
    """The node's S3 endpoint did not answer with the configured credentials."""

    def __init__(self, node_id: str, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        super().__init__(node_id, f"node {node_id}: the S3 endpoint {endpoint} did not "
                         f"answer: {reason}")


class RingRefused(MembershipError, InvalidRing):
    """The ring cannot take the change (a weight needing too many virtual nodes...);
    an ``InvalidRing``, so the HTTP edge answers it as a validation error."""

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(node_id, f"the ring cannot take node {node_id!r}: {reason}")
