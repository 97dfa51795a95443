"""``dfms watch LOCAL_DIR REMOTE_FOLDER``: upload each file of a directory once it has
stopped changing (the mini-drive watcher).

A polling scanner (``watchfiles`` is not a dependency; polling works on every file
system, network mounts included) stats the tree every ``interval`` seconds. A file is
due once its stat (size, mtime, inode) has not changed for ``settle`` seconds; it is then
uploaded with the code ``dfms sync`` uses (``put_chunked``: only the chunks the server
lacks are sent) and its stat recorded in the same state file. Restarted, a file whose
stat is recorded is not even read; one that is not is hashed and the server's
missing-chunk check sends nothing it already holds.

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
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dfms.client import cli
from dfms.client.client import DfmsClient
from dfms.client.errors import DfmsError, FileChanged, NotFound, ServerError, Unauthorized
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

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        while not stop.is_set():
            files, _ = await asyncio.to_thread(scan_local, self.root)
            self.observe(files)
            for rel in self.due():
                if stop.is_set():
                    break
                await until_stopped(self.upload(rel), stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


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
        if as_json:
            print(json.dumps({"time": stamp.isoformat(timespec="milliseconds"), **item}),
                  flush=True)
            return
        text = line_of(item)
        if item["event"] == "watching":
            text = (f"watching {item['local']} -> {item['path']} (a scan every "
                    f"{item['interval_s']:g} s, upload after {item['settle_s']:g} s unchanged)")
        elif item["event"] == "stopped":
            text += f" ({item['queued']} files still queued)" if item["queued"] else ""
        elif item["event"] == "failed":
            wait = item.get("retry_in")
            text += f" (retry in {wait:.0f} s)" if wait else " (not retried until it changes)"
        print(f"{stamp.strftime('%H:%M:%S')} {text}", flush=True)
    return say


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
        say({"event": "watching", "path": w.remote_of(""), "local": str(root),
             "interval_s": args.interval, "settle_s": args.settle})
        await w.run(stop, args.interval)
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
                         help="seconds between scans of the directory (1)")
    watch_p.add_argument("--parallel", type=cli._positive, default=4,
                         help="chunks in flight (4)")
