"""Version changes a user asks for: rollback to an earlier version, and deleting one.

Each runs under the file's row lock, so two of them (or one and an upload of a new
version) cannot interleave: the version numbers and ``current_version`` stay
consistent. The caller's transaction holds the locks until it ends.
"""

from __future__ import annotations

import uuid

from dfms.config import LifecycleConfig
from dfms.metadata import lifecycle as lc
from dfms.metadata.db import Connection
from dfms.metadata.errors import LastVersion, QuotaExceeded, VersionNotFound

_SOURCE = """
SELECT v.manifest_id, v.mime_type, m.size FROM file_versions v
JOIN manifests m ON m.id = v.manifest_id WHERE v.file_id = $1 AND v.version = $2
"""


async def lock_file(conn: Connection, file_id: uuid.UUID) -> None:
    """Row-lock the file until the transaction ends: its versions change one at a time."""
    await conn.execute("SELECT 1 FROM files WHERE id = $1 FOR UPDATE", file_id)


async def restore_version(conn: Connection, owner: uuid.UUID, file_id: uuid.UUID,
                          version: int, cfg: LifecycleConfig) -> int:
    """Add a new current version whose manifest is ``version``'s (no bytes copied).

    Returns the new version's number. Raises ``VersionNotFound``, or
    ``QuotaExceeded`` when the owner has no room for another copy of its size (a
    rollback counts like an upload). Run it inside the caller's transaction.
    """
    # The owner's lock first, as every commit takes it: quota checks cannot race.
    await lc.lock_user(conn, owner)
    await lock_file(conn, file_id)
    source = await conn.fetchrow(_SOURCE, file_id, version)
    if source is None:
        raise VersionNotFound(f"file {file_id} has no version {version}")
    room = await lc.room_left(conn, owner, cfg)
    if room is not None and source["size"] > room:
        raise QuotaExceeded(await lc.quota_bytes(conn, owner, cfg))
    return await lc.add_version(conn, file_id, source["manifest_id"], source["mime_type"])


async def delete_version(conn: Connection, file_id: uuid.UUID, version: int) -> None:
    """Delete one version; deleting the current one promotes the newest remaining.

    Raises ``VersionNotFound``, or ``LastVersion`` for a file's only version (the
    file itself is deleted instead). Run it inside the caller's transaction.
    """
    await lock_file(conn, file_id)
    count = await conn.fetchval("SELECT count(*) FROM file_versions WHERE file_id = $1",
                                file_id)
    exists = await conn.fetchval(
        "SELECT 1 FROM file_versions WHERE file_id = $1 AND version = $2", file_id, version)
    if exists is None:
        raise VersionNotFound(f"file {file_id} has no version {version}")
    if count == 1:
        raise LastVersion(f"file {file_id} keeps at least one version")
    await lc.delete_version(conn, file_id, version)
