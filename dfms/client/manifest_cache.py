"""Manifests of local files already cut, keyed by each file's stat, so that putting an
unchanged file again costs a stat and a few small requests instead of reading it.

The decision is restic's and git's: a file whose size, modification and change times,
inode and device are all what they were when it was cut has the same content. The
change time (ctime) is set by the kernel on every write and cannot be set back by a
user, so a tool that restores the mtime after editing is still caught. A record taken in
the same moment as the file's last change is not trusted ("racy": a write in the same
clock tick leaves the times equal), and a file that changed while it was being read is
not recorded. Chunks that are sent are read again and checked against their hash
(``read_chunk``); the cache only spares reading the ones the server already has.

One small JSON file per local path and chunker (a manifest depends on the chunker's
parameters), under ``$XDG_CACHE_HOME/dfms/manifests`` (0700), written atomically, so two
processes never see half a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from dfms.client.chunking import ChunkRef, Manifest
from dfms.client.models import ChunkerInfo

CACHE_VERSION = 1
# A record is trusted only when the file last changed this long before it was taken.
RACY_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class FileStat:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, path: Path) -> FileStat:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """The client's cache directory (``dfms sync`` keeps its state here too)."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "dfms"


class ManifestCache:
    """Blocking file I/O: call it from a thread (``asyncio.to_thread``)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or cache_dir() / "manifests"

    def get(self, path: Path, info: ChunkerInfo, stat: FileStat) -> Manifest | None:
        """The manifest recorded for this file in exactly this stat, when trusted."""
        try:
            record = json.loads(self._record_path(path, info).read_text())
        except (OSError, ValueError):
            return None
        try:
            return _manifest_of(record, self._key(path, info), stat)
        except (KeyError, TypeError, ValueError):  # a record of another shape: a miss
            return None

    def put(self, path: Path, info: ChunkerInfo, stat: FileStat, manifest: Manifest,
            checked_ns: int) -> None:
        """Record ``manifest`` for the file as it was at ``stat``, taken at ``checked_ns``
        (the wall clock before the file was read)."""
        if max(stat.mtime_ns, stat.ctime_ns) >= checked_ns - RACY_NS:
            return  # changed in the same moment it was read: the next put reads it again
        record = {"version": CACHE_VERSION, "key": self._key(path, info),
                  "stat": list(astuple(stat)), "size": manifest.size, "sha256": manifest.sha256,
                  "chunks": [[c.offset, c.size, c.sha256] for c in manifest.chunks]}
        target = self._record_path(path, info)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            tmp.write_text(json.dumps(record, separators=(",", ":")))
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except OSError:  # a full or read-only cache only costs the next put a read
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _key(path: Path, info: ChunkerInfo) -> str:
        return json.dumps([str(path.resolve()), info.algorithm, info.min_size_bytes,
                           info.avg_size_bytes, info.max_size_bytes, info.digest])

    def _record_path(self, path: Path, info: ChunkerInfo) -> Path:
        name = hashlib.sha256(self._key(path, info).encode()).hexdigest()[:40]
        return self.directory / f"{name}.json"


def _manifest_of(record: dict[str, Any], key: str, stat: FileStat) -> Manifest | None:
    if record.get("version") != CACHE_VERSION or record.get("key") != key:
        return None
    if tuple(record["stat"]) != astuple(stat) or int(record["size"]) != stat.size:
        return None
    chunks = tuple(ChunkRef(int(o), int(n), str(h)) for o, n, h in record["chunks"])
    if sum(c.size for c in chunks) != stat.size:
        return None
    return Manifest(stat.size, str(record["sha256"]), chunks)
