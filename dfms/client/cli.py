"""The ``dfms`` user commands: login, put, get, ls, mv, rm, trash, versions, restore, share,
search, usage; sync and watch (dfms/client/mirror.py, watcher.py). They use only the SDK
(``dfms.client``), never the server's modules.

``add_user_commands(add)`` adds them to ``dfms``'s parser (``dfms/cli.py``). Every command
takes ``--json`` (one JSON document on stdout, for scripts). Exit codes: 0 done, 1 an API
error (its code and message are printed; ``--json`` prints ``{"error": {...}}``), 2 a
usage error (a bad argument, a local file that is not there).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import getpass
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dfms.client import credentials as creds_mod
from dfms.client.client import DfmsClient
from dfms.client.credentials import DEFAULT_URL, Credentials
from dfms.client.errors import Conflict, DfmsError, NotFound, Unauthorized
from dfms.client.manifest_cache import ManifestCache
from dfms.client.models import File, Folder, PutProgress, PutResult, Tokens, TrashItem
from dfms.client.paths import join_path, make_folders, resolve, resolve_folder, split_path
from dfms.client.progress import PutDisplay, dedup_text, human_bytes, human_rate
from dfms.client.retry import RetryPolicy

AddCommand = Callable[..., argparse.ArgumentParser]
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
# Patient with a gateway that restarts or sheds load: 8 tries wait about a minute in all.
CLI_RETRY = RetryPolicy(attempts=8)
TICK_LIVE_S, TICK_PLAIN_S = 0.2, 0.5
OPERATOR_OPTIONS = {"--config", "--data-dir"}


class UsageError(Exception):
    """A bad command line or local argument: exit code 2."""


# --- output ---------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes, tuples and paths as plain JSON values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value == float("inf"):
        return None
    return value


def emit(args: argparse.Namespace, data: Any, text: str | Sequence[str]) -> None:
    """The command's result: ``data`` as JSON with --json, else the text lines."""
    if args.json:
        print(json.dumps(jsonable(data), indent=2, ensure_ascii=False))
        return
    for line in [text] if isinstance(text, str) else text:
        print(line)


def error_exit(args: argparse.Namespace, error: DfmsError) -> int:
    status = f"{error.status} " if error.status else ""
    print(f"dfms: error: {status}{error.code}: {error.message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"status": error.status, "code": error.code,
                                    "message": error.message,
                                    "request_id": error.request_id}}))
    return 1


# --- the session: credentials, the client, token persistence -----------------------------

@dataclass
class Session:
    """The signed-in client of one command, keeping refreshed tokens on disk."""

    path: Path
    creds: Credentials
    parallel: int = 4  # chunks in flight
    client: DfmsClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = DfmsClient(self.creds.url, token=self.creds.access_token,
                                 refresh_token=self.creds.refresh_token, retry=CLI_RETRY,
                                 parallel=self.parallel, on_tokens=self.store_tokens)

    def store_tokens(self, tokens: Tokens) -> None:
        if self.creds.from_env:
            return
        self.creds = self.creds.with_tokens(tokens)
        creds_mod.save(self.path, self.creds)


def current_credentials(require_token: bool = True) -> tuple[Path, Credentials]:
    path = creds_mod.credentials_path()
    creds = creds_mod.effective(path)
    if creds is None or (require_token and not creds.access_token):
        raise DfmsError(0, "not_logged_in", "not logged in: run `dfms login URL` "
                        f"(or set {creds_mod.ENV_URL} and {creds_mod.ENV_TOKEN})")
    return path, creds


async def fresh_credentials(path: Path, creds: Credentials) -> Credentials:
    """``creds``, its access token refreshed first when it is about to expire, under the
    lock other ``dfms`` processes take too (see dfms.client.credentials)."""
    if not creds.needs_refresh():
        return creds
    with creds_mod.locked(path):
        latest = creds_mod.load(path)
        if latest is not None and latest.url == creds.url and not latest.needs_refresh():
            return latest  # another process refreshed meanwhile
        session = Session(path, creds)
        async with session.client:
            await session.client.refresh()
        return session.creds


Body = Callable[[argparse.Namespace, DfmsClient], Awaitable[int]]
Check = Callable[[argparse.Namespace], None]


def run(args: argparse.Namespace, body: Body, check: Check | None = None) -> int:
    """Run one signed-in command: its exit code, 1 on an API error, 2 on a usage error
    (``check`` finds local usage errors before anything is asked of the server)."""
    async def main() -> int:
        path, creds = current_credentials()
        session = Session(path, await fresh_credentials(path, creds),
                          parallel=getattr(args, "parallel", 4))
        async with session.client:
            return await body(args, session.client)

    try:
        if check is not None:
            check(args)
        return asyncio.run(main())
    except UsageError as e:
        print(f"dfms: {e}", file=sys.stderr)
        return 2
    except Unauthorized as e:
        e.message += "; sign in again with `dfms login`"
        return error_exit(args, e)
    except DfmsError as e:
        return error_exit(args, e)


def command(body: Body, check: Check | None = None) -> Callable[[argparse.Namespace], int]:
    return lambda args: run(args, body, check)


# --- login, logout, whoami ------------------------------------------------------------

def cmd_login(args: argparse.Namespace) -> int:
    path = creds_mod.credentials_path()
    known = creds_mod.effective(path)
    url = (args.url or (known.url if known else None) or DEFAULT_URL).rstrip("/")
    try:
        email = args.email or input("Email: ").strip()
        password = (sys.stdin.readline().rstrip("\n") if args.password_stdin
                    else getpass.getpass("Password: "))
    except EOFError:
        print("dfms: login needs an email and a password", file=sys.stderr)
        return 2
    if not email or not password:
        print("dfms: login needs an email and a password", file=sys.stderr)
        return 2

    async def main() -> int:
        session = Session(path, Credentials(url, email=email))
        async with session.client:
            user = await session.client.login(email, password)  # stores the tokens
        emit(args, {"url": url, "user": user, "credentials": str(path)},
             f"logged in to {url} as {user.email} (tokens in {path})")
        return 0

    try:
        return asyncio.run(main())
    except DfmsError as e:
        return error_exit(args, e)


def cmd_logout(args: argparse.Namespace) -> int:
    path = creds_mod.credentials_path()
    stored = creds_mod.load(path)
    revoked = False
    if stored is not None and stored.access_token:
        try:
            asyncio.run(_revoke(path, stored, args.everywhere))
            revoked = True
        except DfmsError as e:  # the tokens go anyway: a dead session is still logged out
            print(f"dfms: warning: the server did not revoke the session: {e}",
                  file=sys.stderr)
    removed = creds_mod.remove(path)
    emit(args, {"logged_out": removed, "revoked": revoked},
         "logged out" if removed else "not logged in")
    return 0


async def _revoke(path: Path, stored: Credentials, everywhere: bool) -> None:
    session = Session(path, stored)
    async with session.client:
        await session.client.logout(everywhere=everywhere)


async def do_whoami(args: argparse.Namespace, c: DfmsClient) -> int:
    user = await c.me()
    emit(args, {"url": c.base_url, "user": user},
         f"{user.email} ({user.display_name}, {user.role}) at {c.base_url}; id {user.id}")
    return 0


# --- put ------------------------------------------------------------------------------

def split_put_args(paths: Sequence[str], to: str | None,
                   is_file: Callable[[str], bool]) -> tuple[list[str], str]:
    """(local files, remote folder). ``--to`` names the folder; otherwise, with two or
    more arguments, the last is the folder unless it is a local file (``put a b``
    uploads both to the root; ``put a /photos`` puts a into /photos)."""
    files = list(paths)
    if to is not None:
        return files, to
    if len(files) >= 2 and not is_file(files[-1]):
        return files[:-1], files[-1]
    return files, "/"


def check_local_files(files: Sequence[str]) -> list[Path]:
    out = []
    for name in files:
        path = Path(name)
        if path.is_dir():
            raise UsageError(f"{name} is a directory: put uploads files")
        if not path.is_file():
            raise UsageError(f"no such local file: {name}")
        out.append(path)
    return out


@dataclass
class PutTotals:
    results: list[dict[str, Any]] = field(default_factory=list)
    logical: int = 0
    sent: int = 0

    def add(self, local: Path, remote: str, put: PutResult) -> None:
        self.results.append({"local": str(local), "remote": remote, "file": put.file,
                             "bytes_read": put.bytes_read, "bytes_sent": put.bytes_sent,
                             "chunks_total": put.chunks_total, "chunks_sent": put.chunks_sent,
                             "chunked": put.chunked, "unchanged": put.file.unchanged,
                             "manifest_cached": put.manifest_cached})
        self.logical += put.bytes_read
        self.sent += put.bytes_sent

    def summary(self, seconds: float) -> str:
        n = len(self.results)
        return (f"{n} file{'s' if n != 1 else ''}: {human_bytes(self.logical)} logical, "
                f"{human_bytes(self.sent)} sent, {dedup_text(self.logical, self.sent)}, "
                f"{seconds:.1f} s ({human_rate(self.logical, seconds)})")


async def put_one(c: DfmsClient, local: Path, remote_dir: str, folder_id: str | None,
                  args: argparse.Namespace, display: PutDisplay | None) -> PutResult:
    prog = PutProgress()
    name = args.name or local.name
    cache = None if args.no_cache else ManifestCache()
    task = asyncio.ensure_future(c.put_chunked(local, name, folder_id, if_match=args.if_match,
                                               progress=prog, cache=cache))
    if display is not None:
        display.start(join_path(remote_dir, name), prog)
        while not task.done():
            display.tick()
            await asyncio.wait([task], timeout=TICK_LIVE_S if display.live else TICK_PLAIN_S)
        display.finish()
    return await task


def describe_put(remote: str, put: PutResult) -> str:
    f = put.file
    what = "unchanged" if f.unchanged else f"v{f.version}"
    return (f"{remote}  {what}  {human_bytes(f.size)}, sent {human_bytes(put.bytes_sent)} "
            f"({put.chunks_sent}/{put.chunks_total} chunks)")


def check_put(args: argparse.Namespace) -> None:
    files, args.remote_dir = split_put_args(args.paths, args.to, lambda p: Path(p).is_file())
    args.local_files = check_local_files(files)
    if args.name and len(args.local_files) != 1:
        raise UsageError("--name needs exactly one file")


async def do_put(args: argparse.Namespace, c: DfmsClient) -> int:
    locals_: list[Path] = args.local_files
    remote_dir: str = args.remote_dir
    folder_id = await make_folders(c, remote_dir)
    display = None if args.json or args.quiet else PutDisplay(
        sys.stderr, live=sys.stderr.isatty() and sys.stdout.isatty())
    totals, started = PutTotals(), time.monotonic()
    for local in locals_:
        put = await put_one(c, local, remote_dir, folder_id, args, display)
        remote = join_path(remote_dir, put.file.name)
        totals.add(local, remote, put)
        if not args.json:
            print(describe_put(remote, put), flush=True)
    seconds = time.monotonic() - started
    ratio = totals.logical / totals.sent if totals.sent else None
    emit(args, {"files": totals.results, "bytes_read": totals.logical,
                "bytes_sent": totals.sent, "dedup_ratio": ratio, "seconds": seconds},
         totals.summary(seconds))
    return 0


# --- get ------------------------------------------------------------------------------

async def remote_file(c: DfmsClient, ref: str) -> tuple[str, File]:
    """(path, file) of a remote path, or of a file id."""
    if UUID_RE.match(ref):
        return ref, await c.stat(ref)
    entry = await resolve(c, ref)
    if entry.file is None:
        raise UsageError(f"{entry.path} is a folder, not a file")
    return entry.path, entry.file


def local_target(dest: Path, name: str) -> tuple[Path, int]:
    """(where the file goes, bytes a partial ``.part`` of an earlier get already holds):
    into ``dest`` when it is a directory, under the remote name."""
    if dest.is_dir():
        dest = dest / name
    part = dest.with_name(dest.name + ".part")
    return dest, part.stat().st_size if part.exists() else 0


async def do_get(args: argparse.Namespace, c: DfmsClient) -> int:
    remote, file = await remote_file(c, args.remote)
    dest, resumed_from = local_target(Path(args.local), file.name)
    started = time.monotonic()
    got = await c.download(file.id, dest, version=args.version)
    seconds = time.monotonic() - started
    resumed = f", resumed from {human_bytes(resumed_from)}" if resumed_from else ""
    emit(args, {"remote": remote, "local": str(dest), "file": got, "sha256_verified": True,
                "resumed_from": resumed_from, "seconds": seconds},
         f"{remote}{'' if args.version is None else f' v{got.version}'} -> {dest}  "
         f"{human_bytes(got.size)}, SHA-256 verified{resumed}, "
         f"{seconds:.1f} s ({human_rate(got.size, seconds)})")
    return 0


# --- ls, mv, rm -----------------------------------------------------------------------

def file_line(f: File, long: bool) -> str:
    if not long:
        return f.name
    when = f.updated_at.strftime("%Y-%m-%d %H:%M")
    return f"{human_bytes(f.size):>10}  v{f.version:<3} {when}  {f.name}"


def folder_line(d: Folder, long: bool) -> str:
    if not long:
        return d.name + "/"
    return f"{'-':>10}  {'':<4} {d.updated_at.strftime('%Y-%m-%d %H:%M')}  {d.name}/"


async def do_ls(args: argparse.Namespace, c: DfmsClient) -> int:
    entry = await resolve(c, args.path)
    if entry.file is not None:
        emit(args, {"path": entry.path, "folders": [], "files": [entry.file]},
             file_line(entry.file, args.long))
        return 0
    folders: list[Folder] = []
    files: list[File] = []
    cursor: str | None = None
    while True:
        page = await c.list_folder(entry.folder_id, cursor=cursor, per_page=500)
        folders = list(page.folders)
        files.extend(page.files)
        if not (cursor := page.next_cursor):
            break
    folders.sort(key=lambda d: d.name)
    files.sort(key=lambda f: f.name)
    emit(args, {"path": entry.path, "folders": folders, "files": files},
         [folder_line(d, args.long) for d in folders] + [file_line(f, args.long)
                                                          for f in files])
    return 0


async def move_target(c: DfmsClient, dst: str) -> tuple[str | None, str | None]:
    """(folder id to move into, new name or None): into ``dst`` when it is a folder,
    else into its parent under its last name (as ``mv`` does)."""
    try:
        entry = await resolve(c, dst)
    except NotFound:
        entry = None
    if entry is not None and not entry.is_file:
        return entry.folder_id, None
    parts = split_path(dst)
    if not parts:
        return None, None
    return await resolve_folder(c, "/".join(parts[:-1])), parts[-1]


async def do_mv(args: argparse.Namespace, c: DfmsClient) -> int:
    src = await resolve(c, args.src)
    if src.file is None and src.folder is None:
        raise UsageError("cannot move the root folder")
    into, name = await move_target(c, args.dst)
    target = into or "root"
    if src.file is not None:
        moved: File | Folder = await c.update_file(src.file.id, name=name, folder_id=target)
    else:
        assert src.folder is not None
        moved = await c.update_folder(src.folder.id, name=name, parent_id=target)
    emit(args, {"from": src.path, "item": moved}, f"{src.path} -> {moved.name}")
    return 0


async def do_rm(args: argparse.Namespace, c: DfmsClient) -> int:
    done = []
    for ref in args.paths:
        entry = await resolve(c, ref)
        if entry.file is not None:
            await c.delete(entry.file.id)
            done.append({"path": entry.path, "type": "file", "id": entry.file.id})
        elif entry.folder is not None:
            try:
                await c.delete_folder(entry.folder.id, recursive=args.recursive)
            except Conflict as e:
                if e.code == "folder_not_empty":
                    e.message = f"{entry.path} is not empty: rm -r moves it all to the trash"
                raise
            done.append({"path": entry.path, "type": "folder", "id": entry.folder.id})
        else:
            raise UsageError("cannot remove the root folder")
    emit(args, {"trashed": done}, [f"trashed {d['path']}" for d in done])
    return 0


# --- trash ----------------------------------------------------------------------------

def trash_path(item: TrashItem) -> str:
    return join_path(item.original_path, item.name)


def pick_trash_item(items: Sequence[TrashItem], ref: str) -> TrashItem:
    """A trashed item by id, or by the path it had (the most recently deleted one when
    several had it: ``items`` come newest first)."""
    for item in items:
        if item.id == ref:
            return item
    wanted = "/" + "/".join(split_path(ref))
    for item in items:
        if trash_path(item) == wanted:
            return item
    raise DfmsError(404, "not_found", f"nothing in the trash is {ref}")


async def do_trash_ls(args: argparse.Namespace, c: DfmsClient) -> int:
    items = [i async for i in c.iter_trash()]
    emit(args, {"items": items}, [
        f"{i.id}  {i.type:<6} {human_bytes(i.size):>10}  "
        f"{i.deleted_at.strftime('%Y-%m-%d %H:%M')}  {trash_path(i)}" for i in items])
    return 0


async def do_trash_restore(args: argparse.Namespace, c: DfmsClient) -> int:
    items = [i async for i in c.iter_trash()]
    restored = []
    for ref in args.items:
        item = pick_trash_item(items, ref)
        restored.append(await c.restore_trash_item(item.id, rename=args.rename))
    emit(args, {"restored": restored}, [f"restored {r.name}" for r in restored])
    return 0


async def do_trash_purge(args: argparse.Namespace, c: DfmsClient) -> int:
    if args.all:
        if args.items:
            raise UsageError("trash purge: give items or --all, not both")
        await c.empty_trash()
        emit(args, {"purged": "all"}, "trash emptied")
        return 0
    if not args.items:
        raise UsageError("trash purge: name the items to purge (or --all)")
    items = [i async for i in c.iter_trash()]
    purged = []
    for ref in args.items:
        item = pick_trash_item(items, ref)
        await c.purge_trash_item(item.id)
        purged.append(item)
    emit(args, {"purged": purged}, [f"purged {trash_path(i)}" for i in purged])
    return 0


# --- versions, restore, share, search, usage -----------------------------------------

async def do_versions(args: argparse.Namespace, c: DfmsClient) -> int:
    path, file = await remote_file(c, args.path)
    versions = await c.versions(file.id)
    emit(args, {"path": path, "file_id": file.id, "versions": versions}, [
        f"v{v.version:<4}{'*' if v.current else ' '} {human_bytes(v.size):>10}  "
        f"{v.created_at.strftime('%Y-%m-%d %H:%M:%S')}  {v.sha256[:16]}" for v in versions])
    return 0


async def do_restore(args: argparse.Namespace, c: DfmsClient) -> int:
    path, file = await remote_file(c, args.path)
    restored = await c.restore_version(file.id, args.version)
    emit(args, {"path": path, "file": restored},
         f"{path}: v{args.version}'s content is now v{restored.version}")
    return 0


async def do_share_create(args: argparse.Namespace, c: DfmsClient) -> int:
    path, file = await remote_file(c, args.path)
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    share = await c.create_share(file.id, expires_in_s=args.expires,
                                 max_downloads=args.max_downloads, password=password)
    emit(args, {"path": path, "share": share},
         [f"{share.url}", f"share id {share.id}, expires {share.expires_at.isoformat()}"])
    return 0


async def do_share_ls(args: argparse.Namespace, c: DfmsClient) -> int:
    file_id = (await remote_file(c, args.path))[1].id if args.path else None
    page = await c.list_shares(file_id=file_id)
    emit(args, {"shares": page.items, "total": page.total}, [
        f"{s.id}  {s.state:<9} {s.download_count}/{s.max_downloads or '-'} downloads  "
        f"expires {s.expires_at.strftime('%Y-%m-%d %H:%M')}  {s.file_name}"
        for s in page.items])
    return 0


async def do_share_revoke(args: argparse.Namespace, c: DfmsClient) -> int:
    for ref in args.shares:
        await c.revoke_share(ref)
    emit(args, {"revoked": args.shares}, [f"revoked {r}" for r in args.shares])
    return 0


async def do_search(args: argparse.Namespace, c: DfmsClient) -> int:
    folder_id = await resolve_folder(c, args.within) if args.within else None
    page = await c.search(args.query, type=args.type, folder_id=folder_id,
                          per_page=args.limit)
    lines = []
    for hit in page.items:
        shown = join_path(hit.path, hit.item.name)
        size = human_bytes(hit.item.size) if isinstance(hit.item, File) else "-"
        lines.append(f"{size:>10}  {shown}{'/' if isinstance(hit.item, Folder) else ''}")
    emit(args, {"total": page.total, "hits": page.items}, lines)
    return 0


async def do_usage(args: argparse.Namespace, c: DfmsClient) -> int:
    u = await c.usage()
    quota = human_bytes(u.quota_bytes) if u.quota_bytes else "unlimited"
    emit(args, u, f"{human_bytes(u.used_bytes)} used of {quota}; {u.file_count} files, "
                  f"{u.version_count} versions; dedup saved {human_bytes(u.dedup_saved_bytes)}")
    return 0


# --- the parser -------------------------------------------------------------------------

def _json_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--json", action="store_true", help="print one JSON document (scripts)")
    return p


def _subactions(parent: argparse.ArgumentParser, dest: str) -> AddCommand:
    """Sub-actions (``trash ls``): like ``dfms``'s own, they accept the operator options
    after them, unused and unlisted."""
    sub = parent.add_subparsers(dest=dest, required=True)
    common = argparse.ArgumentParser(add_help=False)
    for option in sorted(OPERATOR_OPTIONS):
        common.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int]
            ) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help, description=help, parents=[common])
        child.set_defaults(func=func)
        return _json_flag(child)
    return add


def _add_account(add: AddCommand) -> None:
    login = _json_flag(add("login", "sign in to a gateway; keeps the tokens in "
                           "$XDG_CONFIG_HOME/dfms/credentials.json (0600)", cmd_login))
    login.add_argument("url", nargs="?", help=f"the gateway (default: ${creds_mod.ENV_URL}, "
                       f"the last one, else {DEFAULT_URL})")
    login.add_argument("--email", help="the account's email (prompted for without it)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from stdin's first line (no prompt)")
    logout = _json_flag(add("logout", "revoke this sign-in and forget the tokens", cmd_logout))
    logout.add_argument("--everywhere", action="store_true",
                        help="revoke every session of the account")
    _json_flag(add("whoami", "the signed-in account", command(do_whoami)))
    _json_flag(add("usage", "storage used against the quota", command(do_usage)))


def _add_transfer(add: AddCommand) -> None:
    put = _json_flag(add("put", "upload files, sending only the chunks the server lacks "
                         "(FILE... [REMOTE_FOLDER]; the folder is made if missing)",
                         command(do_put, check_put)))
    put.add_argument("paths", nargs="+", metavar="FILE", help="local files, then optionally "
                     "the remote folder (the last argument when it is not a local file)")
    put.add_argument("--to", metavar="REMOTE_FOLDER", help="the remote folder, explicitly")
    put.add_argument("--name", help="the remote name (one file only)")
    put.add_argument("--if-match", metavar="ETAG", help="replace only this version (its "
                     "SHA-256 or ETag; * = any existing file), else 412 and nothing changes")
    put.add_argument("--parallel", type=_positive, default=4, help="chunks in flight (4)")
    put.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    put.add_argument("--no-cache", action="store_true", help="read and hash every file, "
                     "even one unchanged (same size, times, inode) since a put cut it")
    get = _json_flag(add("get", "download a file, verified against its SHA-256; a partial "
                         "LOCAL.part left by an interrupted get is resumed", command(do_get)))
    get.add_argument("remote", metavar="REMOTE", help="a remote path or a file id")
    get.add_argument("local", metavar="LOCAL", help="a local file or directory")
    get.add_argument("--version", type=_positive, metavar="N",
                     help="that version's content (dfms versions lists them), not the current")


def _add_files(add: AddCommand) -> None:
    ls = _json_flag(add("ls", "list a remote folder (or show a file)", command(do_ls)))
    ls.add_argument("path", nargs="?", default="/", metavar="REMOTE")
    ls.add_argument("-l", "--long", action="store_true", help="sizes, versions, times")
    mv = _json_flag(add("mv", "rename or move a file or folder", command(do_mv)))
    mv.add_argument("src", metavar="SRC")
    mv.add_argument("dst", metavar="DST", help="a folder to move into, or a new path")
    rm = _json_flag(add("rm", "move files or folders to the trash", command(do_rm)))
    rm.add_argument("paths", nargs="+", metavar="REMOTE")
    rm.add_argument("-r", "--recursive", action="store_true", help="a folder with its contents")
    versions = _json_flag(add("versions", "a file's versions, newest first",
                              command(do_versions)))
    versions.add_argument("path", metavar="REMOTE")
    restore = _json_flag(add("restore", "make an old version current again (a new version)",
                             command(do_restore)))
    restore.add_argument("path", metavar="REMOTE")
    restore.add_argument("version", type=_positive, metavar="VERSION")
    search = _json_flag(add("search", "find files and folders by name", command(do_search)))
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--type", choices=("file", "folder"))
    search.add_argument("--in", dest="within", metavar="REMOTE_FOLDER", help="below this folder")
    search.add_argument("--limit", type=_positive, default=50, help="hits shown (50)")


def _add_trash_and_shares(add: AddCommand) -> None:
    trash = _subactions(add("trash", "list, restore or purge trashed items"), "action")
    trash("ls", "what is in the trash, newest first", command(do_trash_ls))
    restore = trash("restore", "put items back (by id or original path)",
                    command(do_trash_restore))
    restore.add_argument("items", nargs="+", metavar="ITEM")
    restore.add_argument("--rename", action="store_true",
                         help="restore as 'name (restored)' when the name is taken")
    purge = trash("purge", "delete items for good", command(do_trash_purge))
    purge.add_argument("items", nargs="*", metavar="ITEM")
    purge.add_argument("--all", action="store_true", help="empty the whole trash")
    share = _subactions(add("share", "create, list or revoke share links"), "action")
    create = share("create", "a link to a file (printed once)", command(do_share_create))
    create.add_argument("path", metavar="REMOTE")
    create.add_argument("--expires", type=_positive, metavar="SECONDS", help="lifetime")
    create.add_argument("--max-downloads", type=_positive, metavar="N")
    create.add_argument("--password-stdin", action="store_true",
                        help="protect the link with a password read from stdin")
    ls = share("ls", "your links (of one file)", command(do_share_ls))
    ls.add_argument("path", nargs="?", metavar="REMOTE")
    revoke = share("revoke", "revoke links by share id", command(do_share_revoke))
    revoke.add_argument("shares", nargs="+", metavar="SHARE_ID")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _hide_options(parser: argparse.ArgumentParser, names: set[str]
                  ) -> argparse.ArgumentParser:
    """Leave ``names`` out of the parser's help (still accepted). The actions come from a
    parent parser every subcommand shares, so each is replaced by a copy here: changing
    it would hide the options of the operator commands too."""
    for i, action in enumerate(parser._actions):
        if not set(action.option_strings) & names:
            continue
        hidden = copy.copy(action)
        hidden.help = argparse.SUPPRESS
        parser._actions[i] = hidden
        for option in action.option_strings:
            parser._option_string_actions[option] = hidden
        for group in parser._action_groups:
            group._group_actions[:] = [hidden if g is action else g
                                       for g in group._group_actions]
    return parser


def add_user_commands(add: AddCommand) -> None:
    """Add the user commands to ``dfms`` (``add(name, help, func)`` from dfms/cli.py).

    ``add`` gives every subcommand the operator options (--config, --data-dir); the user
    commands need neither (they talk to a gateway by URL), so their help hides them."""
    def user_add(*a: Any) -> argparse.ArgumentParser:
        return _hide_options(add(*a), OPERATOR_OPTIONS)

    _add_account(user_add)
    _add_transfer(user_add)
    _add_files(user_add)
    _add_trash_and_shares(user_add)
    # sync and watch build on this module's helpers: imported once it is whole.
    from dfms.client import mirror, watcher
    mirror.add_command(user_add)
    watcher.add_command(user_add)
