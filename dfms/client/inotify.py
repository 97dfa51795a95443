"""Linux inotify over ctypes: change events of a directory tree, read on the asyncio loop.

``dfms watch`` uses these events only to wake its scanner at once (the scan of the tree
stays the truth about what changed), so this module reports what the kernel reports and
says when it can no longer be trusted: ``on_lost`` is called once, and the watch stops,
when the kernel's queue overflowed (events were dropped) or the watch table is full
(``inotify_add_watch`` answered ENOSPC: ``fs.inotify.max_user_watches``, shared by every
process of the user, or this object's own ``max_watches``), or the root itself went away.
The caller then polls. ``start()`` raises ``InotifyUnavailable`` when inotify cannot be
used at all (not Linux, no libc symbol, too many instances, the limit hit while adding
the first watches).

inotify is not recursive: every directory needs its own watch. The tree's directories are
watched at start; a directory created or moved in later is watched when its event is read,
and walked, since whatever was made in it before its watch existed sent no event.
Symlinks are not followed (as ``scan_local`` does not follow them).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfms.errors import DfmsError

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCHED = (IN_CLOSE_WRITE | IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE
           | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
# Only directories are watched (a file's events come through its directory's watch), and
# a symlink to a directory is not entered.
WATCH_FLAGS = WATCHED | IN_ONLYDIR | IN_DONT_FOLLOW
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
READ_SIZE = 64 * 1024  # many events per read; far above one event's maximum (16 + 256)
# Then back to the loop (which calls again while events remain): a process writing without
# pause must not keep the loop in this reader.
READS_PER_WAKE = 16
GONE = (errno.ENOENT, errno.ENOTDIR, errno.EACCES)  # a subdirectory that vanished meanwhile


class InotifyUnavailable(DfmsError):
    """inotify cannot watch this tree: the caller polls instead."""


@dataclass(frozen=True, slots=True)
class Change:
    """One inotify event: ``path`` is the watched directory joined with the event's name
    (the directory itself for IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW has no path)."""

    path: Path | None
    mask: int
    cookie: int = 0

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & IN_ISDIR)


def parse(buf: bytes) -> list[tuple[int, int, int, bytes]]:
    """The (wd, mask, cookie, name) records of one read; the name's NUL padding removed."""
    out, at = [], 0
    while at + EVENT.size <= len(buf):
        wd, mask, cookie, length = EVENT.unpack_from(buf, at)
        at += EVENT.size
        out.append((wd, mask, cookie, buf[at:at + length].rstrip(b"\0")))
        at += length
    return out


class Libc:
    """The three inotify calls of libc, with errno kept (ctypes drops it otherwise)."""

    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise InotifyUnavailable(f"inotify is Linux only (this is {sys.platform})")
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self.init1 = lib.inotify_init1
            self.add = lib.inotify_add_watch
            self.rm = lib.inotify_rm_watch
        except (OSError, AttributeError) as e:
            raise InotifyUnavailable(f"no inotify in libc: {e}") from e
        self.init1.argtypes, self.init1.restype = [ctypes.c_int], ctypes.c_int
        self.add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add.restype = ctypes.c_int
        self.rm.argtypes, self.rm.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int

    @staticmethod
    def check(result: int, what: str, path: Path | None = None) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}", None if path is None
                          else str(path))
        return result


class TreeWatch:
    """inotify watches on ``root`` and every directory below it; ``on_change`` gets the
    events of each read (on the event loop), ``on_lost`` the reason once they stop."""

    def __init__(self, root: Path, on_change: Callable[[list[Change]], None],
                 on_lost: Callable[[str], None], *, max_watches: int | None = None) -> None:
        self.root = Path(root)
        self.on_change = on_change
        self.on_lost = on_lost
        self.max_watches = max_watches  # None: only the kernel's limit
        self.fd = -1
        self.paths: dict[int, Path] = {}  # watch descriptor -> the directory it watches
        # Directories moved away during one read, by cookie: the IN_MOVED_TO that follows
        # (renamed within the tree) keeps their watches, else they are dropped.
        self.moved: dict[int, Path] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.libc: Libc | None = None

    @property
    def running(self) -> bool:
        return self.fd >= 0

    def start(self) -> None:
        """Watch the tree, reading events on the running loop. Again once started: nothing."""
        if self.running:
            return
        self.libc = self.libc or Libc()
        loop = asyncio.get_running_loop()
        try:
            self.fd = Libc.check(self.libc.init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        except OSError as e:  # EMFILE: fs.inotify.max_user_instances reached
            raise InotifyUnavailable(str(e)) from e
        try:
            self.add_watch(self.root)
            self.add_tree(self.root)
        except OSError as e:
            self.stop()
            raise InotifyUnavailable(watch_failure(e, self.root)) from e
        loop.add_reader(self.fd, self.read)
        self.loop = loop

    def stop(self) -> None:
        """Stop reading and close the descriptor (the kernel drops its watches). Safe to
        call again, and after a ``start()`` that failed."""
        if self.loop is not None:
            self.loop.remove_reader(self.fd)
            self.loop = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.paths.clear()
        self.moved.clear()

    def add_watch(self, path: Path) -> int:
        """Watch the directory ``path``; its watch descriptor. OSError when it cannot be
        watched: ENOSPC when the watch table is full, ENOENT when it does not exist."""
        if self.libc is None or self.fd < 0:
            raise OSError(errno.EBADF, "the watch is not started")
        if self.max_watches is not None and len(self.paths) >= self.max_watches:
            raise OSError(errno.ENOSPC, f"more than {self.max_watches} directories", str(path))
        wd = Libc.check(self.libc.add(self.fd, os.fsencode(path), WATCH_FLAGS),
                        "inotify_add_watch", path)
        self.paths[wd] = path  # the same directory again (renamed) keeps its wd: new path
        return wd

    def add_tree(self, top: Path) -> None:
        """Watch every directory below ``top`` (not ``top`` itself). A directory gone
        meanwhile is skipped; ENOSPC is raised."""
        for here, dirnames, _ in os.walk(top):
            keep = []
            for name in dirnames:
                try:
                    self.add_watch(Path(here, name))
                    keep.append(name)
                except OSError as e:
                    if e.errno not in GONE:
                        raise
            dirnames[:] = keep  # os.walk does not enter symlinks: ONLYDIR|DONT_FOLLOW agree

    def drop_tree(self, top: Path) -> None:
        """Forget the watches of ``top`` and below: it was moved out of the tree."""
        assert self.libc is not None
        for wd, path in list(self.paths.items()):
            if path == top or top in path.parents:
                self.libc.rm(self.fd, wd)  # EINVAL if the kernel dropped it already: fine
                del self.paths[wd]

    def read(self) -> None:
        """The loop's reader: the events the descriptor holds (up to READS_PER_WAKE reads),
        then one ``on_change``."""
        changes: list[Change] = []
        for _ in range(READS_PER_WAKE):
            if not self.running:
                return
            try:
                buf = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self.lose(f"reading inotify events: {e}")
                return
            for wd, mask, cookie, name in parse(buf):
                change = self.take(wd, mask, cookie, name)
                if change is not None:
                    changes.append(change)
        for gone in self.moved.values():  # moved out: no IN_MOVED_TO came with its cookie
            self.drop_tree(gone)
        self.moved.clear()
        if changes and self.running:
            self.on_change(changes)

    def take(self, wd: int, mask: int, cookie: int, name: bytes) -> Change | None:
        """Keep the watch table in step with one event; the event as a Change (None for
        the kernel's own IN_IGNORED). Loses the watch on overflow or a full table."""
        if mask & IN_Q_OVERFLOW:
            self.lose("the inotify event queue overflowed (fs.inotify.max_queued_events)")
            return Change(None, mask, cookie)
        base = self.paths.get(wd)
        if mask & IN_IGNORED:
            self.paths.pop(wd, None)  # the directory was deleted: the kernel dropped its watch
            return None
        if base is None:
            return None  # a watch already forgotten (drop_tree): its last events
        path = base / os.fsdecode(name) if name else base
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and base == self.root:
            self.lose(f"the watched directory {self.root} was deleted or moved")
        elif mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
            self.moved.pop(cookie, None)  # renamed within the tree: not gone
            self.watch_new(path)
        elif mask & IN_ISDIR and mask & IN_MOVED_FROM:
            self.moved[cookie] = path
        return Change(path, mask, cookie)

    def watch_new(self, path: Path) -> None:
        """A directory made or moved into the tree: watch it and everything in it. A
        directory renamed within the tree keeps its watch descriptors (they belong to the
        inode): adding them again only records their new paths."""
        try:
            self.add_watch(path)
            self.add_tree(path)
        except OSError as e:
            if e.errno not in GONE:
                self.lose(watch_failure(e, path))

    def lose(self, reason: str) -> None:
        """Events can no longer be trusted: stop, and tell the owner (once)."""
        if self.running:
            self.stop()
            self.on_lost(reason)


def watch_failure(error: OSError, top: Path) -> str:
    """Why a directory (``error.filename``, else somewhere below ``top``) is not watched."""
    where = error.filename or top
    if error.errno == errno.ENOSPC:
        return (f"too many directories to watch ({error.strerror}, at {where}; the kernel's "
                f"limit is fs.inotify.max_user_watches)")
    return f"cannot watch {where}: {error.strerror or error}"
