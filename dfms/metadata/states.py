"""The state vocabulary of the metadata tables: one name for each value a state column holds.

The values are the ones the migrations' ``CHECK`` constraints allow (``chunks.state``,
``chunk_replicas.state``, ``nodes.admin_state``); a node's ``health`` is
``dfms.healthmon.state.Health``. SQL the code builds interpolates these members
into module-level constants once, at import (``f"... state = '{ChunkState.LIVE}'"``),
so the text stays readable and never depends on input. Being ``StrEnum``s, the
members compare equal to the strings PostgreSQL returns.
"""

from __future__ import annotations

from enum import StrEnum


class ChunkState(StrEnum):
    """``chunks.state``: live → condemned (unreferenced) → sweeping (being deleted)."""

    LIVE = "live"
    CONDEMNED = "condemned"
    SWEEPING = "sweeping"


class ReplicaState(StrEnum):
    """``chunk_replicas.state``: ok, or why a replica was found bad."""

    OK = "ok"
    CORRUPT = "corrupt"
    MISSING = "missing"


class AdminState(StrEnum):
    """``nodes.admin_state``: what an operator chose for a node."""

    ACTIVE = "active"
    DRAINING = "draining"
    REMOVED = "removed"
