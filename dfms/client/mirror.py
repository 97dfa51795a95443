"""``dfms sync LOCAL_DIR REMOTE_FOLDER``: a one-way, incremental mirror of a local tree.

The plan compares three things: the local tree (a scan of stats, no reads), the remote
tree (one folder listing per folder) and a state file of what this client last knew
about each local file (size, mtime, inode -> SHA-256). A file whose stat is the one
recorded and whose recorded SHA-256 is the remote file's is skipped without being read;
a file of another size than the remote one is uploaded; one of the same size is hashed
first and uploaded only if its SHA-256 differs. Uploads go through ``put_chunked`` (only
the chunks the server lacks are sent) with If-Match on the remote version the plan saw,
so a change made meanwhile elsewhere fails that file (412) instead of being overwritten.

The state file is under ``$XDG_CACHE_HOME/dfms/sync/``, one per (gateway, user, local
dir, remote folder); losing it costs reads, never correctness: the remote listing and
the server's missing-chunk check decide what is sent. A stat recorded within
``RACY_NS`` of the file's mtime is not trusted (the file may change again within the
same mtime tick without its stat showing it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfms.client import cli
from dfms.client.chunking import sha256_file
from dfms.client.client import DfmsClient
from dfms.client.errors import Conflict, DfmsError, NotFound
from dfms.client.manifest_cache import RACY_NS, cache_dir
from dfms.client.models import File, Folder, PutResult
from dfms.client.paths import PAGE, child, make_folders, resolve_folder, split_path
from dfms.client.progress import human_bytes

STATE_VERSION = 1
SAVE_EVERY_S = 5.0
FILE_KINDS = ("upload", "update", "check", "skip")


# --- local side -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LocalFile:
    rel: str  # "a/b.txt": the remote names (NFC, trimmed) joined by "/"
    path: Path
    size: int
    mtime_ns: int
    ino: int

    @property
    def stat_key(self) -> tuple[int, int, int]:
        return (self.size, self.mtime_ns, self.ino)


def rel_name(root: Path, path: Path) -> str:
    return "/".join(split_path(path.relative_to(root).as_posix()))


def stat_file(root: Path, path: Path) -> LocalFile | None:
    """The file's stat, or None when it is gone or not a regular file."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not path.is_file() or path.is_symlink():
        return None
    return LocalFile(rel_name(root, path), path, st.st_size, st.st_mtime_ns, st.st_ino)


def scan_local(root: Path) -> tuple[list[LocalFile], list[str]]:
    """Regular files and directories under ``root`` (symlinks are not followed), sorted.
    Blocking: call it in a thread."""
    files: list[LocalFile] = []
    dirs: list[str] = []
    for top, dirnames, filenames in os.walk(root):
        here = Path(top)
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        dirs.extend(rel_name(root, here / d) for d in dirnames)
        for name in filenames:
            found = stat_file(root, here / name)
            if found is not None:
                files.append(found)
    return sorted(files, key=lambda f: f.rel), sorted(dirs)


# --- the state file ---------------------------------------------------------------------

def token_subject(token: str | None) -> str:
    """The user id an access token names (its JWT ``sub``, read unverified: it only
    names a cache file). Another token of the same user gives the same name."""
    try:
        payload = (token or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return hashlib.sha256((token or "").encode()).hexdigest()[:16]


@dataclass(slots=True)
class SyncState:
    """What this client knows about each local file: ``rel -> [size, mtime_ns, ino,
    sha256, checked_ns]`` (checked_ns: the wall clock when that stat was taken)."""

    path: Path | None  # None: never written (a dry run)
    key: dict[str, str]
    files: dict[str, list[Any]] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def open(cls, key: dict[str, str], directory: Path | None = None) -> SyncState:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        path = (directory or cache_dir() / "sync") / f"{name}.json"
        state = cls(path, key)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return state
        if isinstance(data, dict) and data.get("version") == STATE_VERSION and \
                data.get("key") == key and isinstance(data.get("files"), dict):
            state.files = {k: v for k, v in data["files"].items()
                           if isinstance(v, list) and len(v) == 5}
        return state

    def known_sha(self, f: LocalFile) -> str | None:
        """The SHA-256 recorded for this exact stat, when the record can be trusted."""
        entry = self.files.get(f.rel)
        if entry is None or tuple(entry[:3]) != f.stat_key:
            return None
        if f.mtime_ns >= int(entry[4]) - RACY_NS:
            return None  # recorded in the same moment the file was written
        return str(entry[3])

    def record(self, f: LocalFile, sha256: str, checked_ns: int | None = None) -> None:
        self.files[f.rel] = [f.size, f.mtime_ns, f.ino, sha256,
                             time.time_ns() if checked_ns is None else checked_ns]
        self.dirty = True

    def forget(self, rel: str) -> None:
        if self.files.pop(rel, None) is not None:
            self.dirty = True

    def keep_only(self, rels: set[str]) -> None:
        for rel in set(self.files) - rels:
            self.forget(rel)

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, "key": self.key,
                                   "files": self.files}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self.dirty = False


def state_key(client: DfmsClient, local_dir: Path, remote_folder: str) -> dict[str, str]:
    tokens = client.tokens
    return {"url": client.base_url,
            "user": token_subject(tokens.access_token if tokens else None),
            "local": str(local_dir.resolve()),
            "remote": "/" + "/".join(split_path(remote_folder))}


# --- remote side ----------------------------------------------------------------------

@dataclass(slots=True)
class RemoteTree:
    """The files and folders below the mirrored folder, by relative path ("" is it)."""

    files: dict[str, File] = field(default_factory=dict)
    # rel -> folder id (None: the root). Without "": the folder does not exist yet.
    folders: dict[str, str | None] = field(default_factory=dict)


async def list_remote(client: DfmsClient, folder_id: str | None) -> RemoteTree:
    tree = RemoteTree(folders={"": folder_id})
    todo = [""]
    while todo:
        rel = todo.pop()
        cursor: str | None = None
        while True:
            page = await client.list_folder(tree.folders[rel], cursor=cursor, per_page=PAGE)
            for sub in page.folders if cursor is None else ():
                tree.folders[join_rel(rel, sub.name)] = sub.id
                todo.append(join_rel(rel, sub.name))
            for f in page.files:
                tree.files[join_rel(rel, f.name)] = f
            if not page.next_cursor:
                break
            cursor = page.next_cursor
    return tree


def join_rel(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_rel(rel: str) -> str:
    return rel.rpartition("/")[0]


def parents(rel: str) -> list[str]:
    """"a/b/c" -> ["a", "a/b"]."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


# --- the plan -------------------------------------------------------------------------

# Kinds: mkdir, upload (new), update (other size), check (same size: hash, then update
# or skip), skip, trash (a file), trash_folder (with what is in it), conflict.
@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    rel: str
    local: LocalFile | None = None
    remote: File | None = None
    folder_id: str | None = None  # trash_folder's folder
    files_inside: int = 0  # trash_folder: remote files it takes along
    note: str = ""


def plan(local_files: list[LocalFile], local_dirs: list[str], remote: RemoteTree,
         state: SyncState, delete: bool) -> list[Action]:
    """What a sync does, in order: folders (parents first), files, then trash."""
    local_rels = {f.rel for f in local_files}
    dir_set = set(local_dirs)
    actions = [Action("mkdir", d) for d in sorted(dir_set)
               if d not in remote.folders and d not in remote.files]
    for rel in sorted(dir_set & set(remote.files)):
        actions.append(Action("conflict", rel, note="a local folder has a remote file's name"))
    for f in local_files:
        actions.append(file_action(f, remote, state))
    if delete:
        actions.extend(trash_actions(local_rels, dir_set, remote))
    return actions


def file_action(f: LocalFile, remote: RemoteTree, state: SyncState) -> Action:
    if f.rel in remote.folders:
        return Action("conflict", f.rel, f, note="a local file has a remote folder's name")
    r = remote.files.get(f.rel)
    if r is None:
        return Action("upload", f.rel, f)
    if state.known_sha(f) == r.sha256:
        return Action("skip", f.rel, f, r)
    if f.size != r.size:
        return Action("update", f.rel, f, r)
    return Action("check", f.rel, f, r)


def trash_actions(local_rels: set[str], local_dirs: set[str],
                  remote: RemoteTree) -> list[Action]:
    """Remote files and folders gone locally: a folder gone as a whole is one trash item
    (restored as a whole); what is inside it is not listed again."""
    present = local_dirs | {""}
    gone = sorted(d for d in remote.folders if d and d not in present
                  and parent_rel(d) in present)
    inside = dict.fromkeys(gone, 0)
    for rel in remote.files:
        top = next((p for p in parents(rel) if p in inside), None)
        if top is not None:
            inside[top] += 1
    out = [Action("trash_folder", d, folder_id=remote.folders[d], files_inside=inside[d])
           for d in gone]
    for rel, r in sorted(remote.files.items()):
        if rel not in local_rels and parent_rel(rel) in present and rel not in local_dirs:
            out.append(Action("trash", rel, remote=r))
    return out


# --- carrying it out --------------------------------------------------------------------

@dataclass(slots=True)
class Report:
    scanned: int = 0
    uploaded: int = 0
    skipped: int = 0
    trashed: int = 0
    failed: int = 0
    folders_made: int = 0
    bytes_logical: int = 0  # of the files uploaded
    bytes_sent: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)


Say = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class Mirror:
    """One sync run: the client, the mirrored folder, its state, what to tell."""

    client: DfmsClient
    root: Path
    remote_path: str
    state: SyncState
    say: Say
    dry_run: bool = False
    jobs: int = 2
    report: Report = field(default_factory=Report)

    def remote_of(self, rel: str) -> str:
        return "/" + "/".join([*split_path(self.remote_path), *split_path(rel)])

    def tell(self, event: str, rel: str, **extra: Any) -> None:
        item = {"event": event, "path": self.remote_of(rel), **extra}
        self.report.items.append(item)
        self.say(item)

    async def run(self, delete: bool) -> Report:
        tree = await self.remote_tree()
        files, dirs = await asyncio.to_thread(scan_local, self.root)
        self.report.scanned = len(files)
        self.state.keep_only({f.rel for f in files})
        actions = plan(files, dirs, tree, self.state, delete)
        for a in actions:
            if a.kind == "mkdir":
                await self.mkdir(a, tree)
            elif a.kind == "conflict":
                self.fail(a.rel, Conflict(409, "name_taken", a.note))
        await self.transfer([a for a in actions if a.kind in FILE_KINDS], tree)
        for a in actions:
            if a.kind in ("trash", "trash_folder"):
                await self.trash(a)
        if not self.dry_run:
            self.state.save()
        return self.report

    async def remote_tree(self) -> RemoteTree:
        """The remote side; a dry run makes nothing, so a missing folder is empty."""
        if not self.dry_run:
            return await list_remote(self.client, await make_folders(self.client,
                                                                     self.remote_path))
        try:
            return await list_remote(self.client, await resolve_folder(self.client,
                                                                       self.remote_path))
        except NotFound:
            return RemoteTree()

    async def mkdir(self, a: Action, tree: RemoteTree) -> None:
        if self.dry_run:
            self.tell("would_mkdir", a.rel)
            return
        parent = parent_rel(a.rel)
        if parent not in tree.folders:
            return  # its parent failed (and said so)
        try:
            tree.folders[a.rel] = await child_folder(self.client, tree.folders[parent],
                                                     a.rel.rpartition("/")[2])
        except DfmsError as e:
            self.fail(a.rel, e)
            return
        self.report.folders_made += 1
        self.tell("mkdir", a.rel)

    async def transfer(self, actions: list[Action], tree: RemoteTree) -> None:
        gate = asyncio.Semaphore(self.jobs)
        last_save = time.monotonic()

        async def one(a: Action) -> None:
            nonlocal last_save
            async with gate:
                await self.sync_file(a, tree)
                if not self.dry_run and time.monotonic() - last_save > SAVE_EVERY_S:
                    last_save = time.monotonic()
                    self.state.save()  # an interrupted sync keeps what it learnt

        await asyncio.gather(*(one(a) for a in actions))

    async def sync_file(self, a: Action, tree: RemoteTree) -> None:
        f = a.local
        assert f is not None
        if a.kind == "skip":
            self.report.skipped += 1
            return
        try:
            if a.kind == "check":
                sha = await asyncio.to_thread(sha256_file, f.path)
                if a.remote is not None and sha == a.remote.sha256:
                    self.state.record(f, sha)
                    self.report.skipped += 1
                    return
            if self.dry_run:
                self.report.uploaded += 1
                self.report.bytes_logical += f.size
                self.tell("would_upload", a.rel, size=f.size, new=a.remote is None)
                return
            if parent_rel(a.rel) not in tree.folders:
                raise NotFound(404, "not_found", "its remote folder could not be made")
            put = await upload_file(self.client, self.state, f, tree.folders[parent_rel(a.rel)],
                                    a.remote.sha256 if a.remote else None)
        except (DfmsError, OSError) as e:
            self.fail(a.rel, e)
            return
        self.report.uploaded += 1
        self.report.bytes_logical += put.bytes_read
        self.report.bytes_sent += put.bytes_sent
        self.tell("uploaded", a.rel, version=put.file.version, size=put.file.size,
                  bytes_sent=put.bytes_sent, chunks_sent=put.chunks_sent,
                  chunks_total=put.chunks_total, unchanged=put.file.unchanged)

    async def trash(self, a: Action) -> None:
        n = a.files_inside if a.kind == "trash_folder" else 1
        if self.dry_run:
            self.report.trashed += n
            self.tell("would_trash", a.rel, files=n, folder=a.kind == "trash_folder")
            return
        try:
            if a.kind == "trash_folder":
                assert a.folder_id is not None
                await self.client.delete_folder(a.folder_id, recursive=True)
            else:
                assert a.remote is not None
                await self.client.delete(a.remote.id)
        except NotFound:
            return  # already gone: what --delete wanted
        except DfmsError as e:
            self.fail(a.rel, e)
            return
        self.report.trashed += n
        self.tell("trashed", a.rel, files=n, folder=a.kind == "trash_folder")

    def fail(self, rel: str, error: BaseException) -> None:
        self.report.failed += 1
        self.tell("failed", rel, error=describe_error(error))


async def child_folder(client: DfmsClient, parent_id: str | None, name: str) -> str:
    """The id of folder ``name`` in ``parent_id``, made if missing (one made meanwhile by
    another client is used)."""
    try:
        return (await client.create_folder(name, parent_id)).id
    except Conflict:
        found = await child(client, parent_id, name)
        if not isinstance(found, Folder):
            raise
        return found.id


def describe_error(error: BaseException) -> str:
    if isinstance(error, DfmsError):
        status = f"{error.status} " if error.status else ""
        return f"{status}{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


async def upload_file(client: DfmsClient, state: SyncState, f: LocalFile,
                      folder_id: str | None, if_match: str | None) -> PutResult:
    """Put one file and record its stat against the stored SHA-256 — only if the stat
    did not change while it was read (else the next run reads it again)."""
    checked_ns = time.time_ns()
    put = await client.put_chunked(f.path, f.rel.rpartition("/")[2], folder_id,
                                   if_match=if_match)
    if await asyncio.to_thread(stat_key, f.path) == f.stat_key:
        state.record(f, put.file.sha256, checked_ns)
    return put


def stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


# --- the command ------------------------------------------------------------------------

def check_sync(args: argparse.Namespace) -> None:
    if not Path(args.local_dir).is_dir():
        raise cli.UsageError(f"no such local directory: {args.local_dir}")


def line_of(item: dict[str, Any]) -> str:
    """One human line per event of a sync (or of the watcher)."""
    ev, path = str(item["event"]), str(item["path"])
    if ev == "uploaded":
        what = "unchanged" if item.get("unchanged") else f"v{item['version']}"
        return (f"uploaded {path}  {what} {human_bytes(item['size'])}, sent "
                f"{human_bytes(item['bytes_sent'])} ({item['chunks_sent']}/"
                f"{item['chunks_total']} chunks)")
    if ev in ("trashed", "would_trash"):
        inside = f" (folder, {item['files']} files)" if item.get("folder") else ""
        return f"{ev.replace('_', ' ')} {path}{inside}"
    if ev == "would_upload":
        return f"would upload {path} ({'new' if item['new'] else 'changed'}, " \
               f"{human_bytes(item['size'])})"
    if ev == "failed":
        return f"failed {path}: {item['error']}"
    verb = {"mkdir": "made folder", "would_mkdir": "would make folder"}.get(ev, ev)
    return f"{verb} {path}"


def summary(r: Report, seconds: float, dry_run: bool) -> str:
    head = "dry run (nothing changed): " if dry_run else "sync: "
    verb = "to upload" if dry_run else "uploaded"
    trash = "to trash" if dry_run else "trashed"
    text = (f"{head}{r.scanned} files scanned, {r.uploaded} {verb}, {r.skipped} skipped, "
            f"{r.trashed} {trash}; {human_bytes(r.bytes_logical)} logical, "
            f"{human_bytes(r.bytes_sent)} sent, {seconds:.1f} s")
    return text + (f"; {r.failed} FAILED" if r.failed else "")


async def do_sync(args: argparse.Namespace, c: DfmsClient) -> int:
    root = Path(args.local_dir)
    key = state_key(c, root, args.remote_folder)
    state = SyncState.open(key)
    if args.dry_run:
        state.path = None  # a dry run writes nothing, not even the cache

    def say(item: dict[str, Any]) -> None:
        if not args.json:
            print(line_of(item), flush=True)

    started = time.monotonic()
    mirror = Mirror(c, root, args.remote_folder, state, say, dry_run=args.dry_run,
                    jobs=args.jobs)
    report = await mirror.run(args.delete)
    seconds = time.monotonic() - started
    data = {k: getattr(report, k) for k in report.__dataclass_fields__}
    cli.emit(args, {**data, "dry_run": args.dry_run, "seconds": seconds,
                    "local": str(root), "remote": mirror.remote_of("")},
             summary(report, seconds, args.dry_run))
    return 1 if report.failed else 0


def add_command(add: cli.AddCommand) -> None:
    sync = cli._json_flag(add(
        "sync", "mirror a local directory into a remote folder, one way: new and changed "
        "files uploaded (only missing chunks sent), unchanged ones skipped",
        cli.command(do_sync, check_sync)))
    sync.add_argument("local_dir", metavar="LOCAL_DIR")
    sync.add_argument("remote_folder", metavar="REMOTE_FOLDER")
    sync.add_argument("--delete", action="store_true",
                      help="move remote files (and folders) gone locally to the trash")
    sync.add_argument("--dry-run", action="store_true",
                      help="print what would be done, change nothing")
    sync.add_argument("--jobs", type=cli._positive, default=2, help="files at a time (2)")
    sync.add_argument("--parallel", type=cli._positive, default=4,
                      help="chunks in flight per file (4)")
