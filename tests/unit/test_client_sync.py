"""The plan and cache logic of `dfms sync` (dfms/client/mirror.py) and the settle/backoff
logic of `dfms watch` (dfms/client/watcher.py). The uploads themselves are tested on the
real cluster (tests/integration/test_client_sync.py)."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dfms.client.client import DfmsClient
from dfms.client.errors import Conflict, NotFound, QuotaExceeded, TransportError, Unavailable
from dfms.client.mirror import (
    RACY_NS,
    LocalFile,
    RemoteTree,
    Report,
    SyncState,
    line_of,
    plan,
    scan_local,
    state_key,
    summary,
    token_subject,
)
from dfms.client.models import File
from dfms.client.watcher import Watcher, backoff_s, is_retryable

OLD = 1_700_000_000 * 10**9  # an mtime long before any record
KEY = {"url": "http://gw", "user": "u1", "local": "/d", "remote": "/r"}


def local(rel: str, size: int = 10, mtime_ns: int = OLD, ino: int = 1) -> LocalFile:
    return LocalFile(rel, Path("/d", rel), size, mtime_ns, ino)


def remote(rel: str, size: int = 10, sha: str = "a" * 64) -> File:
    now = datetime.now(UTC)
    return File(f"id-{rel}", rel.rpartition("/")[2], None, size, sha, "text/plain", 1, 1,
                now, now)


def tree(*files: File, folders: tuple[str, ...] = ()) -> RemoteTree:
    return RemoteTree(files={f.id.removeprefix("id-"): f for f in files},
                      folders={"": None, **{d: f"fid-{d}" for d in folders}})


def kinds(actions: list) -> dict[str, str]:
    return {a.rel: a.kind for a in actions}


def test_new_changed_unchanged_and_same_size_files(tmp_path: Path) -> None:
    state = SyncState(tmp_path / "s.json", KEY)
    same, edited, touched = local("same.txt"), local("edited.txt", 11), local("touched.txt")
    state.record(same, "a" * 64, checked_ns=OLD + 10 * RACY_NS)
    state.record(touched, "a" * 64, checked_ns=OLD + 10 * RACY_NS)
    touched_now = local("touched.txt", mtime_ns=OLD + 1)  # same size, other mtime
    actions = plan([local("new.txt"), same, edited, touched_now], [],
                   tree(remote("same.txt"), remote("edited.txt"), remote("touched.txt")),
                   state, delete=False)
    assert kinds(actions) == {"new.txt": "upload", "same.txt": "skip",
                              "edited.txt": "update", "touched.txt": "check"}


def test_a_recorded_sha_is_trusted_only_for_its_exact_stat_and_not_when_racy(
        tmp_path: Path) -> None:
    state = SyncState(tmp_path / "s.json", KEY)
    f = local("a", mtime_ns=OLD)
    state.record(f, "s1", checked_ns=OLD + RACY_NS + 1)
    assert state.known_sha(f) == "s1"
    assert state.known_sha(local("a", ino=2)) is None  # replaced by another file
    assert state.known_sha(local("a", size=11)) is None
    assert state.known_sha(local("a", mtime_ns=OLD + 1)) is None
    # Recorded in the same moment the file was written: it may change again unseen.
    state.record(f, "s1", checked_ns=OLD + RACY_NS // 2)
    assert state.known_sha(f) is None


def test_a_cached_sha_that_is_not_the_remote_one_is_uploaded(tmp_path: Path) -> None:
    """The remote file was replaced elsewhere: the local file is the mirror's truth."""
    state = SyncState(tmp_path / "s.json", KEY)
    f = local("a.txt")
    state.record(f, "b" * 64, checked_ns=OLD + 10 * RACY_NS)
    assert kinds(plan([f], [], tree(remote("a.txt")), state, delete=False)) == {
        "a.txt": "check"}


def test_folders_are_made_parents_first_and_name_clashes_are_conflicts(tmp_path: Path) -> None:
    state = SyncState(None, KEY)
    actions = plan([local("x/y/z.txt"), local("clash")], ["x", "x/y", "dirfile", "clash2"],
                   tree(remote("dirfile"), folders=("clash", "clash2")), state, delete=False)
    assert [(a.kind, a.rel) for a in actions if a.kind == "mkdir"] == [("mkdir", "x"),
                                                                       ("mkdir", "x/y")]
    assert kinds(actions)["dirfile"] == "conflict" and kinds(actions)["clash"] == "conflict"
    assert kinds(actions)["x/y/z.txt"] == "upload"


def test_delete_trashes_files_and_whole_folders_gone_locally(tmp_path: Path) -> None:
    state = SyncState(None, KEY)
    remote_side = tree(remote("keep.txt"), remote("gone.txt"), remote("sub/gone2.txt"),
                       remote("old/a"), remote("old/deep/b"),
                       folders=("sub", "old", "old/deep"))
    files = [local("keep.txt")]
    assert not [a for a in plan(files, ["sub"], remote_side, state, delete=False)
                if a.kind.startswith("trash")]
    trash = [(a.kind, a.rel, a.files_inside) for a in
             plan(files, ["sub"], remote_side, state, delete=True) if a.kind.startswith("trash")]
    # old/ goes as one item with its two files; nothing inside it is listed again.
    assert trash == [("trash_folder", "old", 2), ("trash", "gone.txt", 0),
                     ("trash", "sub/gone2.txt", 0)]


def test_state_file_round_trip_key_and_private_mode(tmp_path: Path) -> None:
    state = SyncState.open(KEY, tmp_path)
    state.record(local("a"), "s1", checked_ns=5)
    state.save()
    assert state.path is not None and oct(state.path.stat().st_mode & 0o777) == "0o600"
    again = SyncState.open(KEY, tmp_path)
    assert again.files == {"a": [10, OLD, 1, "s1", 5]}
    # Another remote folder (or user, gateway, directory) has a state of its own.
    assert SyncState.open({**KEY, "remote": "/other"}, tmp_path).files == {}
    # Entries of files gone locally are dropped; a corrupt file is an empty state.
    again.keep_only(set())
    again.save()
    assert SyncState.open(KEY, tmp_path).files == {}
    again.path.write_text("{not json")
    assert SyncState.open(KEY, tmp_path).files == {}


def test_scan_local_skips_symlinks_and_normalises_names(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.txt").write_text("x")
    (tmp_path / "cafe\u0301.txt").write_text("y")  # decomposed é: the server stores NFC
    (tmp_path / "link").symlink_to(tmp_path / "d")
    (tmp_path / "flink").symlink_to(tmp_path / "d" / "e" / "f.txt")
    files, dirs = scan_local(tmp_path)
    assert [f.rel for f in files] == ["café.txt", "d/e/f.txt"]
    assert dirs == ["d", "d/e"]


def test_the_state_key_names_the_user_by_the_token_subject() -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "user-7"}).encode()).rstrip(b"=")
    token = f"h.{claims.decode()}.sig"
    assert token_subject(token) == "user-7"
    assert token_subject("opaque") == token_subject("opaque") != token_subject("other")
    key = state_key(DfmsClient("http://gw/", token=token), Path("."), "a//b/")
    assert key == {"url": "http://gw", "user": "user-7", "local": str(Path(".").resolve()),
                   "remote": "/a/b"}


def test_lines_and_summary() -> None:
    up = {"event": "uploaded", "path": "/r/a", "version": 2, "size": 2048, "bytes_sent": 0,
          "chunks_sent": 0, "chunks_total": 1, "unchanged": False}
    assert line_of(up) == "uploaded /r/a  v2 2.0 KiB, sent 0 B (0/1 chunks)"
    assert line_of({"event": "trashed", "path": "/r/o", "files": 2, "folder": True}) == \
        "trashed /r/o (folder, 2 files)"
    r = Report(scanned=3, uploaded=1, skipped=2, bytes_logical=2048, failed=1)
    assert summary(r, 0.25, False) == ("sync: 3 files scanned, 1 uploaded, 2 skipped, "
                                       "0 trashed; 2.0 KiB logical, 0 B sent, 0.2 s; 1 FAILED")
    assert summary(r, 0.25, True).startswith("dry run (nothing changed): 3 files scanned, "
                                             "1 to upload")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watcher(tmp_path: Path, clock: Clock) -> Watcher:
    return Watcher(DfmsClient("http://gw"), tmp_path, "/r", SyncState(None, KEY),
                   lambda item: None, settle_s=2.0, clock=clock)


def test_watch_a_file_is_due_once_its_stat_stops_changing(tmp_path: Path) -> None:
    clock, wall = Clock(), time.time_ns()
    w = watcher(tmp_path, clock)
    w.observe([local("a", size=1, mtime_ns=wall)], wall_ns=wall)
    clock.now += 1.5
    w.observe([local("a", size=2, mtime_ns=wall + 1)], wall_ns=wall + 1)  # still growing
    clock.now += 1.9
    w.observe([local("a", size=2, mtime_ns=wall + 1)], wall_ns=wall + 2)
    assert w.due() == []
    clock.now += 0.2
    assert w.due() == ["a"]
    # An old file seen for the first time has long settled; a file gone is dropped.
    w.observe([local("old", mtime_ns=wall - 60 * 10**9)], wall_ns=wall)
    assert w.due() == ["old"] and "a" not in w.pending


def test_watch_skips_what_is_recorded_and_backs_off_after_failures(tmp_path: Path) -> None:
    clock = Clock()
    w = watcher(tmp_path, clock)
    stored = local("stored")
    w.state.record(stored, "s", checked_ns=OLD + 10 * RACY_NS)
    w.observe([stored], wall_ns=OLD + 10 * RACY_NS)
    assert w.pending == {} and w.stored["stored"] == stored.stat_key
    w.observe([local("b")], wall_ns=OLD + 10 * RACY_NS)
    w.failed("b", w.pending["b"], TransportError(0, "connection_error", "refused"))
    w.failed("b", w.pending["b"], Unavailable(503, "unavailable", "down"))
    assert w.due() == [] and w.pending["b"].attempts == 2
    clock.now += backoff_s(2)
    assert w.due() == ["b"]
    w.failed("b", w.pending["b"], QuotaExceeded(507, "quota_exceeded", "full"))
    clock.now += 3600
    assert w.due() == []  # refused for good at this stat
    w.observe([local("b", size=3)], wall_ns=OLD + 10 * RACY_NS)
    assert w.due() == ["b"]  # changed: tried again


def test_backoff_and_what_is_retried() -> None:
    assert [backoff_s(n) for n in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]
    assert is_retryable(TransportError(0, "connection_error", ""))
    assert is_retryable(NotFound(404, "not_found", "folder gone"))
    assert not is_retryable(Conflict(409, "name_taken", ""))
    assert not is_retryable(QuotaExceeded(507, "quota_exceeded", ""))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_an_unreadable_state_dir_is_an_empty_state(tmp_path: Path) -> None:
    (tmp_path / "locked").mkdir(mode=0)
    try:
        assert SyncState.open(KEY, tmp_path / "locked").files == {}
    finally:
        (tmp_path / "locked").chmod(0o700)
