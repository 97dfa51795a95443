"""The inotify wrapper of `dfms watch` (dfms/client/inotify.py) on a real temporary
directory and the real kernel: events of a subdirectory made after the start, renames
within and out of the tree, the watch limit (the object's own, which takes the kernel's
ENOSPC path), a real queue overflow, the root going away, and start/stop in any order."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dfms.client.inotify import (
    EVENT,
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    Change,
    InotifyUnavailable,
    TreeWatch,
    parse,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")

KINDS = {IN_CREATE: "create", IN_MODIFY: "modify", IN_CLOSE_WRITE: "close_write",
         IN_MOVED_FROM: "moved_from", IN_MOVED_TO: "moved_to", IN_DELETE: "delete",
         IN_ATTRIB: "attrib"}


class Seen:
    """What a TreeWatch reported: its changes (one list per read) and lost reasons."""

    def __init__(self, root: Path, **kw: int) -> None:
        self.root = root
        self.reads: list[list[Change]] = []
        self.lost: list[str] = []
        self.watch = TreeWatch(root, self.reads.append, self.lost.append, **kw)

    @property
    def changes(self) -> list[Change]:
        return [c for read in self.reads for c in read]

    def kinds(self) -> list[tuple[str, str]]:
        """(path under the root, kind[+dir]) of each event, in order."""
        out = []
        for c in self.changes:
            kind = next((k for bit, k in KINDS.items() if c.mask & bit), hex(c.mask))
            rel = "" if c.path is None else c.path.relative_to(self.root).as_posix()
            out.append((rel, kind + ("+dir" if c.is_dir else "")))
        return out

    async def until(self, ok: Callable[[], bool], seconds: float = 5.0) -> None:
        """Let the loop read events until ``ok()``; fails after ``seconds``."""
        for _ in range(int(seconds / 0.01)):
            if ok():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not within {seconds} s; events: {self.kinds()}, "
                             f"lost: {self.lost}")


async def test_events_of_a_subdirectory_made_after_the_start(tmp_path: Path) -> None:
    seen = Seen(tmp_path)
    seen.watch.start()
    try:
        (tmp_path / "new" / "deeper").mkdir(parents=True)  # both made before any read
        await seen.until(lambda: ("new", "create+dir") in seen.kinds())
        f = tmp_path / "new" / "deeper" / "clip.bin"
        with f.open("wb") as out:
            out.write(b"x" * 1000)
        f.rename(f.with_name("clip2.bin"))
        f.with_name("clip2.bin").unlink()
        want = [("new/deeper/clip.bin", "create"), ("new/deeper/clip.bin", "modify"),
                ("new/deeper/clip.bin", "close_write"),
                ("new/deeper/clip.bin", "moved_from"), ("new/deeper/clip2.bin", "moved_to"),
                ("new/deeper/clip2.bin", "delete")]
        await seen.until(lambda: seen.kinds()[-len(want):] == want)
        assert seen.lost == []
        moved = [c for c in seen.changes if c.mask & (IN_MOVED_FROM | IN_MOVED_TO)]
        assert moved[0].cookie == moved[1].cookie != 0  # the kernel pairs the two halves
        assert sorted(p.relative_to(tmp_path).as_posix() for p in seen.watch.paths.values()
                      ) == [".", "new", "new/deeper"]
    finally:
        seen.watch.stop()


async def test_a_renamed_directory_is_followed_and_one_moved_out_is_dropped(
        tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    seen = Seen(root)
    seen.watch.start()
    try:
        (root / "a").rename(root / "c")
        (root / "c" / "b" / "f").write_bytes(b"1")  # before the rename was read
        await seen.until(lambda: ("c/b/f", "close_write") in seen.kinds())
        assert sorted(p.relative_to(root).as_posix() for p in seen.watch.paths.values()
                      ) == [".", "c", "c/b"]
        (root / "c").rename(outside / "c")
        await seen.until(lambda: ("c", "moved_from+dir") in seen.kinds())
        assert list(seen.watch.paths.values()) == [root]
        count = len(seen.changes)
        (outside / "c" / "b" / "g").write_bytes(b"2")  # no longer in the tree: no event
        (root / "here").write_bytes(b"3")
        await seen.until(lambda: ("here", "close_write") in seen.kinds())
        assert all(c.path is not None and c.path.name == "here"
                   for c in seen.changes[count:]), seen.kinds()
    finally:
        seen.watch.stop()


async def test_start_and_stop_in_any_order(tmp_path: Path) -> None:
    seen = Seen(tmp_path / "missing")
    with pytest.raises(InotifyUnavailable, match="cannot watch"):
        seen.watch.start()
    assert not seen.watch.running
    seen.watch.stop()
    seen.watch.stop()  # after a failed start, twice: nothing to do
    seen = Seen(tmp_path)
    seen.watch.start()
    fd = seen.watch.fd
    seen.watch.start()  # started: nothing
    assert seen.watch.fd == fd
    seen.watch.stop()
    seen.watch.stop()
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF
    (tmp_path / "after").write_bytes(b"x")
    await asyncio.sleep(0.05)
    assert seen.changes == [] and seen.lost == []
    seen.watch.start()  # again after a stop: a new descriptor, events again
    try:
        (tmp_path / "again").write_bytes(b"x")
        await seen.until(lambda: ("again", "close_write") in seen.kinds())
    finally:
        seen.watch.stop()


async def test_add_watch_on_a_missing_path_or_before_the_start(tmp_path: Path) -> None:
    seen = Seen(tmp_path)
    with pytest.raises(OSError) as early:
        seen.watch.add_watch(tmp_path)
    assert early.value.errno == errno.EBADF
    seen.watch.start()
    try:
        with pytest.raises(FileNotFoundError):
            seen.watch.add_watch(tmp_path / "nope")
        (tmp_path / "file").write_bytes(b"")
        with pytest.raises(NotADirectoryError):  # only directories are watched
            seen.watch.add_watch(tmp_path / "file")
    finally:
        seen.watch.stop()


async def test_the_watch_limit_at_start_and_later(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / "big" / name).mkdir(parents=True)
    full = Seen(tmp_path / "big", max_watches=3)
    with pytest.raises(InotifyUnavailable, match="too many directories"):
        full.watch.start()
    assert not full.watch.running and full.watch.paths == {}
    (tmp_path / "small").mkdir()
    seen = Seen(tmp_path / "small", max_watches=2)
    seen.watch.start()
    try:
        (tmp_path / "small" / "one").mkdir()
        await seen.until(lambda: ("one", "create+dir") in seen.kinds())
        assert seen.lost == [] and len(seen.watch.paths) == 2
        (tmp_path / "small" / "two").mkdir()  # the third watch: over the limit
        await seen.until(lambda: bool(seen.lost))
        assert len(seen.lost) == 1 and "fs.inotify.max_user_watches" in seen.lost[0]
        assert not seen.watch.running
        count = len(seen.changes)
        (tmp_path / "small" / "one" / "f").write_bytes(b"x")
        await asyncio.sleep(0.05)
        assert len(seen.changes) == count and len(seen.lost) == 1  # stopped, said once
    finally:
        seen.watch.stop()


def queue_limit() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


async def test_a_queue_overflow_is_reported_once(tmp_path: Path) -> None:
    limit = queue_limit()
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"")
    b.write_bytes(b"")
    seen = Seen(tmp_path)
    seen.watch.start()
    try:
        # Without yielding to the loop, nothing is read: alternating files keep the
        # kernel from merging the events, so the queue fills and overflows.
        for i in range(limit + 10):
            os.utime(a if i % 2 else b, ns=(i, i))
        await seen.until(lambda: bool(seen.lost))
        assert len(seen.lost) == 1 and "overflowed" in seen.lost[0]
        assert not seen.watch.running
    finally:
        seen.watch.stop()


async def test_the_root_going_away_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    seen = Seen(root)
    seen.watch.start()
    try:
        root.rmdir()
        await seen.until(lambda: bool(seen.lost))
        assert "deleted or moved" in seen.lost[0] and not seen.watch.running
    finally:
        seen.watch.stop()


async def test_not_linux_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    seen = Seen(tmp_path)
    with pytest.raises(InotifyUnavailable, match="Linux only"):
        seen.watch.start()
    seen.watch.stop()


def test_parse_splits_records_and_strips_the_name_padding() -> None:
    buf = (EVENT.pack(1, IN_CREATE | IN_ISDIR, 0, 16) + b"sub".ljust(16, b"\0")
           + EVENT.pack(2, IN_Q_OVERFLOW, 0, 0)
           + EVENT.pack(3, IN_MOVED_TO, 7, 4) + b"\xff\0\0\0")
    assert parse(buf) == [(1, IN_CREATE | IN_ISDIR, 0, b"sub"), (2, IN_Q_OVERFLOW, 0, b""),
                          (3, IN_MOVED_TO, 7, b"\xff")]
