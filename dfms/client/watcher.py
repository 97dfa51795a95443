"""``dfms watch LOCAL_DIR REMOTE_FOLDER``: upload each file of a directory once it has
stopped changing (the mini-drive watcher).

A scan of the tree (a stat of every file) decides what is due: a file is due once its
stat (size, mtime, inode) has not changed for ``settle`` seconds, counted from its mtime;
it is then uploaded with the code ``dfms sync`` uses (``put_chunked``: only the chunks the
server lacks are sent) and its stat recorded in the same state file. Restarted, a file
whose stat is recorded is not even read; one that is not is hashed and the server's
missing-chunk check sends nothing it already holds.

When to scan: on Linux, inotify (dfms/client/inotify.py, every directory of the tree
watched) wakes the watcher at once on any change, and a pending file wakes it when it is
due, so a file closed after writing is uploaded ``settle`` seconds after its last change.
The events only say *that* something changed (the scan still says what), so a burst of
them costs one scan: the scans they trigger are at least ``MIN_GAP_S`` apart, and at least
``GAP_PER_SCAN`` times the last scan's duration (a file written without pause in a large
tree keeps at most a fifth of a core scanning). A safety rescan still runs every
``max(interval, RESCAN_S)`` seconds, for what inotify does not report: writes through
``mmap``, a file system mounted inside the tree. Without inotify (not Linux, the libc call
fails, the watch limit ``fs.inotify.max_user_watches`` is reached, the event queue
overflowed: events were lost) the watcher says so once (stderr, and the JSON stream) and
polls: a scan every ``interval`` seconds, as ``--poll`` asks for on network file systems,
where inotify sees nothing of other machines' writes.

Failures: a gateway that does not answer (or answers 429/5xx) leaves the file queued,
retried with exponential backoff up to ``BACKOFF_MAX_S``; any other refusal (quota, a
name taken by a folder) is reported once and retried only after the file changes. Each
completion or failure is one line (one JSON object with --json). SIGINT/SIGTERM stop the
watcher between scans, an upload in flight is abandoned (a later run resumes it: the
chunks already sent are not sent again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dfms.client import cli
from dfms.client.client import DfmsClient
from dfms.client.errors import DfmsError, FileChanged, NotFound, ServerError, Unauthorized
from dfms.client.inotify import Change, InotifyUnavailable, TreeWatch
from dfms.client.mirror import (
    LocalFile,
    SyncState,
    describe_error,
    line_of,
    parent_rel,
    scan_local,
    stat_key,
    state_key,
    upload_file,
)
from dfms.client.paths import make_folders, split_path
from dfms.client.retry import RETRYABLE, RetryPolicy

# Short per-request retries: the watcher's own backoff keeps a file queued for as long
# as the gateway is away, without one request blocking the scanner for a minute.
WATCH_RETRY = RetryPolicy(attempts=3, max_delay_s=2.0)
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# With inotify: the safety rescan's period (or --interval if longer), and the spacing of
# the scans that events trigger (see the module docstring).
RESCAN_S = 30.0
MIN_GAP_S = 0.2
GAP_PER_SCAN = 4.0
# The shortest pause: a file due but not uploaded (changed just before) is scanned again
# after this, not in a tight loop.
MIN_PAUSE_S = 0.05

StatKey = tuple[int, int, int]


@dataclass(slots=True)
class Pending:
    """A file seen changed and not yet stored."""

    stat: StatKey
    stable_since: float  # monotonic: when its stat was last seen to change
    attempts: int = 0
    not_before: float = 0.0  # monotonic: the backoff after a failure
    refused: bool = False  # refused for good at this stat; tried again once it changes


def settled_since(f: LocalFile, now: float, wall_ns: int) -> float:
    """When a newly seen stat stopped changing, on the monotonic clock: its mtime's age
    counts (a file untouched for an hour is settled when first seen)."""
    return now - max(0.0, (wall_ns - f.mtime_ns) / 1e9)


def backoff_s(attempts: int) -> float:
    return float(min(BACKOFF_BASE_S * 2 ** (attempts - 1), BACKOFF_MAX_S))


def is_retryable(error: DfmsError) -> bool:
    """Worth trying again later without the file changing: the gateway was away, busy or
    failing, or the remote folder went (it is made again)."""
    return isinstance(error, (*RETRYABLE, ServerError, NotFound))


@dataclass(slots=True)
class Watcher:
    client: DfmsClient
    root: Path
    remote_path: str
    state: SyncState
    say: Callable[[dict[str, Any]], None]
    settle_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    pending: dict[str, Pending] = field(default_factory=dict)
    stored: dict[str, StatKey] = field(default_factory=dict)  # uploaded by this run
    folders: dict[str, str | None] = field(default_factory=dict)

    def remote_of(self, rel: str) -> str:
        return "/" + "/".join([*split_path(self.remote_path), *split_path(rel)])

    def observe(self, files: list[LocalFile], wall_ns: int | None = None) -> None:
        """Take in one scan: new or changed stats become pending, files gone are dropped."""
        now, wall = self.clock(), time.time_ns() if wall_ns is None else wall_ns
        seen = set()
        for f in files:
            seen.add(f.rel)
            p = self.pending.get(f.rel)
            if p is not None and p.stat == f.stat_key:
                continue
            if self.stored.get(f.rel) == f.stat_key or (
                    p is None and self.state.known_sha(f) is not None):
                self.stored[f.rel] = f.stat_key
                self.pending.pop(f.rel, None)
                continue
            self.pending[f.rel] = Pending(f.stat_key, settled_since(f, now, wall))
        for rel in set(self.pending) - seen:
            del self.pending[rel]

    def next_due_in(self) -> float | None:
        """Seconds until the next pending file is due (0 or less: now), None if none is."""
        times = [max(p.stable_since + self.settle_s, p.not_before)
                 for p in self.pending.values() if not p.refused]
        return min(times) - self.clock() if times else None

    def due(self) -> list[str]:
        now = self.clock()
        return sorted(rel for rel, p in self.pending.items() if not p.refused
                      and now - p.stable_since >= self.settle_s and now >= p.not_before)

    async def folder_of(self, rel: str) -> str | None:
        parent = parent_rel(rel)
        if parent not in self.folders:
            self.folders[parent] = await make_folders(self.client, self.remote_of(parent))
        return self.folders[parent]

    async def upload(self, rel: str) -> None:
        p = self.pending[rel]
        path = self.root.joinpath(*rel.split("/"))
        if await asyncio.to_thread(stat_key, path) != p.stat:
            return  # changed since the scan: the next scan sees it
        f = LocalFile(rel, path, *p.stat)
        started = self.clock()
        try:
            put = await upload_file(self.client, self.state, f, await self.folder_of(rel), None)
        except (FileChanged, FileNotFoundError):
            return  # still being written, or gone: the next scan decides
        except (DfmsError, OSError) as e:
            self.failed(rel, p, e)
            return
        self.stored[rel] = p.stat
        del self.pending[rel]
        self.state.save()
        self.say({"event": "uploaded", "path": self.remote_of(rel), "version": put.file.version,
                  "size": put.file.size, "sha256": put.file.sha256,
                  "bytes_sent": put.bytes_sent, "chunks_sent": put.chunks_sent,
                  "chunks_total": put.chunks_total, "unchanged": put.file.unchanged,
                  "seconds": round(self.clock() - started, 3)})

    def failed(self, rel: str, p: Pending, error: BaseException) -> None:
        item: dict[str, Any] = {"event": "failed", "path": self.remote_of(rel),
                                "error": describe_error(error), "attempts": p.attempts + 1}
        if isinstance(error, DfmsError) and is_retryable(error):
            p.attempts += 1
            p.not_before = self.clock() + backoff_s(p.attempts)
            item["retry_in"] = backoff_s(p.attempts)
            if isinstance(error, NotFound):
                self.folders.clear()  # a remote folder was removed: make it again
        else:
            p.refused = True
            item["retry_in"] = None  # not until the file changes
        self.say(item)

    async def run(self, stop: asyncio.Event, wake: Wakeup) -> None:
        while not stop.is_set():
            wake.changed.clear()  # a change from here on ends the next pause
            started = self.clock()
            files, _ = await asyncio.to_thread(scan_local, self.root)
            scan_s = self.clock() - started
            self.observe(files)
            for rel in self.due():
                if stop.is_set():
                    break
                await until_stopped(self.upload(rel), stop)
            await wake.pause(stop, self.next_due_in(), scan_s)


@dataclass(slots=True)
class Wakeup:
    """What ends the watcher's pause between two scans: a change inotify reports (while
    it works), the next pending file's due time, and the period (``period_s``)."""

    root: Path
    interval_s: float
    say: Callable[[dict[str, Any]], None]
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tree: TreeWatch | None = None
    polling: str | None = "not started"  # why it polls; None while inotify works

    def start(self, poll: bool) -> None:
        """Watch the tree with inotify unless ``poll``; fall back to polling if it fails."""
        if poll:
            self.polling = "--poll"
            return
        self.tree = TreeWatch(self.root, self.on_change, self.fall_back)
        self.polling = None
        try:
            self.tree.start()
        except InotifyUnavailable as e:
            self.fall_back(str(e))

    def stop(self) -> None:
        if self.tree is not None:
            self.tree.stop()

    @property
    def period_s(self) -> float:
        return self.interval_s if self.polling else max(self.interval_s, RESCAN_S)

    def on_change(self, changes: list[Change]) -> None:
        self.changed.set()

    def fall_back(self, reason: str) -> None:
        """inotify failed or lost events: poll from now on, scanning at once (what
        changed meanwhile may have sent no event). Said once."""
        if self.tree is None:
            return
        self.tree.stop()
        self.tree = None
        self.polling = reason
        self.changed.set()
        self.say({"event": "polling", "reason": reason, "interval_s": self.interval_s})

    async def pause(self, stop: asyncio.Event, due_in: float | None, scan_s: float) -> None:
        """Until the period ends, the next file is due, a change is reported (then a
        short gap more, which gathers a burst of events into one scan) or ``stop``."""
        timeout = self.period_s if due_in is None else min(self.period_s, due_in)
        await first_of([stop.wait(), self.changed.wait()], max(timeout, MIN_PAUSE_S))
        if self.changed.is_set() and not stop.is_set():
            await first_of([stop.wait()], max(MIN_GAP_S, GAP_PER_SCAN * scan_s))


async def first_of(waits: list[Coroutine[Any, Any, Any]], seconds: float) -> None:
    """Wait until one of ``waits`` is done, or ``seconds``; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until_stopped(work: Any, stop: asyncio.Event) -> None:
    """Run ``work`` unless ``stop`` is set first (then it is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- the command ------------------------------------------------------------------------

def printer(as_json: bool) -> Callable[[dict[str, Any]], None]:
    def say(item: dict[str, Any]) -> None:
        stamp = datetime.now(UTC)
        if item["event"] == "polling":  # a warning: on stderr, also in the JSON stream
            print(f"dfms: watch: inotify unavailable ({item['reason']}); scanning every "
                  f"{item['interval_s']:g} s instead", file=sys.stderr, flush=True)
            if not as_json:
                return
        if as_json:
            print(json.dumps({"time": stamp.isoformat(timespec="milliseconds"), **item}),
                  flush=True)
            return
        text = line_of(item)
        if item["event"] == "watching":
            text = f"watching {item['local']} -> {item['path']} ({when_scanned(item)}, " \
                   f"upload after {item['settle_s']:g} s unchanged)"
        elif item["event"] == "stopped":
            text += f" ({item['queued']} files still queued)" if item["queued"] else ""
        elif item["event"] == "failed":
            wait = item.get("retry_in")
            text += f" (retry in {wait:.0f} s)" if wait else " (not retried until it changes)"
        print(f"{stamp.strftime('%H:%M:%S')} {text}", flush=True)
    return say


def when_scanned(watching: dict[str, Any]) -> str:
    if watching["mode"] == "inotify":
        return f"inotify, a full rescan every {watching['rescan_s']:g} s"
    return f"a scan every {watching['rescan_s']:g} s"


class WatchSession(cli.Session):
    """The CLI's session with short per-request retries (see WATCH_RETRY)."""

    def __post_init__(self) -> None:
        self.client = DfmsClient(self.creds.url, token=self.creds.access_token,
                                 refresh_token=self.creds.refresh_token, retry=WATCH_RETRY,
                                 parallel=self.parallel, on_tokens=self.store_tokens)


async def watch(args: argparse.Namespace) -> int:
    path, creds = cli.current_credentials()
    session = WatchSession(path, await cli.fresh_credentials(path, creds),
                           parallel=args.parallel)
    root = Path(args.local_dir)
    say = printer(args.json)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with session.client as c:
        state = SyncState.open(state_key(c, root, args.remote_folder))
        w = Watcher(c, root, args.remote_folder, state, say, settle_s=args.settle)
        wake = Wakeup(root, args.interval, say)
        wake.start(args.poll)  # before the first scan: no change falls between the two
        say({"event": "watching", "path": w.remote_of(""), "local": str(root),
             "interval_s": args.interval, "settle_s": args.settle,
             "mode": "poll" if wake.polling else "inotify", "rescan_s": wake.period_s})
        try:
            await w.run(stop, wake)
        finally:
            wake.stop()
        state.save()
        say({"event": "stopped", "path": w.remote_of(""), "queued": len(w.pending)})
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    if not Path(args.local_dir).is_dir():
        print(f"dfms: no such local directory: {args.local_dir}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(watch(args))
    except Unauthorized as e:
        e.message += "; sign in again with `dfms login`"
        return cli.error_exit(args, e)
    except DfmsError as e:
        return cli.error_exit(args, e)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600: {text}")
    return value


def add_command(add: cli.AddCommand) -> None:
    watch_p = cli._json_flag(add(
        "watch", "upload each file of a local directory into a remote folder once it has "
        "stopped changing; keeps going while the gateway is away (Ctrl-C stops)", cmd_watch))
    watch_p.add_argument("local_dir", metavar="LOCAL_DIR")
    watch_p.add_argument("remote_folder", metavar="REMOTE_FOLDER")
    watch_p.add_argument("--settle", type=_seconds, default=2.0, metavar="SECONDS",
                         help="upload a file once it has not changed for this long (2)")
    watch_p.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                         help="seconds between scans of the directory when polling (1); "
                         f"with inotify, a safety rescan every max(this, {RESCAN_S:g}) s")
    watch_p.add_argument("--poll", action="store_true",
                         help="scan every --interval seconds, no inotify (network file "
                         "systems: inotify sees nothing of other machines' writes)")
    watch_p.add_argument("--parallel", type=cli._positive, default=4,
                         help="chunks in flight (4)")
