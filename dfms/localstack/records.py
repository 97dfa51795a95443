"""Which processes a `dfms up` started, kept in the data dir so the next run can tell.

Each child's pid is recorded with its start time (``/proc/<pid>/stat`` field 22,
in clock ticks since boot), so a pid that the kernel has since given to an
unrelated process is never mistaken for ours. A `dfms up` killed with SIGKILL
cannot clean up; the next one on the same data dir reads the record and refuses
to start while any of those processes still lives, naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

RECORD_FILE = "processes.json"


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot); None if there is no such process
    or it is a zombie (exited, not reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    started: int  # start_ticks() when it was recorded

    @property
    def alive(self) -> bool:
        return start_ticks(self.pid) == self.started


def record_for(name: str, pid: int) -> Recorded | None:
    ticks = start_ticks(pid)
    return None if ticks is None else Recorded(name, pid, ticks)


class ProcessRecord:
    """``<data dir>/processes.json``: every process the current run started."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / RECORD_FILE
        self._entries: dict[str, Recorded] = {}

    def read(self) -> list[Recorded]:
        try:
            doc = json.loads(self.path.read_text())
            return [Recorded(name, int(e["pid"]), int(e["started"])) for name, e in doc.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []

    def survivors(self) -> list[Recorded]:
        """Processes of an earlier run that are still alive."""
        return [r for r in self.read() if r.alive]

    def add(self, name: str, pid: int) -> None:
        rec = record_for(name, pid)
        if rec is not None:
            # A restarted service replaces its earlier entry; several of one name
            # never live at once.
            self._entries[name] = rec
            self._write()

    def clear(self) -> None:
        self._entries.clear()
        self._write()

    def _write(self) -> None:
        doc = {r.name: {"pid": r.pid, "started": r.started} for r in self._entries.values()}
        write_private(self.path, json.dumps(doc, indent=2) + "\n")


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, readable by its owner only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)
