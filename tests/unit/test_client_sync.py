"""The plan and cache logic of `dfms sync` (dfms/client/mirror.py) and the settle/backoff
logic of `dfms watch` (dfms/client/watcher.py). The uploads themselves are tested on the
real cluster (tests/integration/test_client_sync.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from dfms.client.watcher import RESCAN_S, Wakeup, Watcher, backoff_s, is_retryable, printer

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


def test_watch_next_due_in_counts_settling_and_backoff(tmp_path: Path) -> None:
    clock, wall = Clock(), time.time_ns()
    w = watcher(tmp_path, clock)
    assert w.next_due_in() is None  # nothing pending: only the period ends a pause
    w.observe([local("a", mtime_ns=wall - 500_000_000)], wall_ns=wall)  # changed 0.5 s ago
    assert w.next_due_in() == pytest.approx(1.5)
    w.observe([local("a", mtime_ns=wall - 500_000_000), local("b", mtime_ns=OLD)],
              wall_ns=wall)
    now_due = w.next_due_in()
    assert now_due is not None and now_due <= 0  # b is due now
    w.failed("b", w.pending["b"], Unavailable(503, "unavailable", "down"))
    assert w.next_due_in() == pytest.approx(1.0)  # b's backoff (1 s) ends before a settles
    w.failed("b", w.pending["b"], QuotaExceeded(507, "quota_exceeded", "full"))
    assert w.next_due_in() == pytest.approx(1.5)  # refused: only a counts


async def test_watch_wakeup_by_inotify_and_by_the_period(tmp_path: Path) -> None:
    said: list[dict[str, Any]] = []
    stop = asyncio.Event()
    wake = Wakeup(tmp_path, 0.5, said.append)
    wake.start(poll=False)
    try:
        assert wake.polling is None and wake.period_s == RESCAN_S
        started = time.monotonic()
        (tmp_path / "sub").mkdir()
        await wake.pause(stop, None, 0.0)  # woken by the event, not after 30 s
        assert time.monotonic() - started < 5 and wake.changed.is_set()
        wake.changed.clear()
        started = time.monotonic()
        await wake.pause(stop, 0.3, 0.0)  # nothing changes: the next file due ends it
        assert 0.25 < time.monotonic() - started < 5 and not wake.changed.is_set()
    finally:
        wake.stop()
    polled = Wakeup(tmp_path, 0.3, said.append)
    polled.start(poll=True)
    started = time.monotonic()
    (tmp_path / "sub" / "f").write_bytes(b"x")
    await polled.pause(stop, None, 0.0)  # no inotify: the interval
    assert 0.25 < time.monotonic() - started < 5 and polled.period_s == 0.3
    assert said == [] and polled.polling == "--poll"  # asked for: nothing to warn of


async def test_watch_falls_back_to_polling_once(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    said: list[dict[str, Any]] = []
    wake = Wakeup(tmp_path / "missing", 2.0, said.append)
    wake.start(poll=False)
    assert wake.polling and "cannot watch" in wake.polling and wake.period_s == 2.0
    assert [e["event"] for e in said] == ["polling"] and said[0]["interval_s"] == 2.0
    wake = Wakeup(tmp_path, 2.0, said.append)
    wake.start(poll=False)
    assert wake.tree is not None and wake.tree.running
    wake.fall_back("the inotify event queue overflowed")
    wake.fall_back("again")
    wake.stop()
    assert [e["reason"] for e in said[1:]] == ["the inotify event queue overflowed"]
    assert wake.changed.is_set()  # events were lost: scan at once
    printer(as_json=True)(said[1])
    out, err = capsys.readouterr()
    assert json.loads(out)["event"] == "polling"
    assert err == ("dfms: watch: inotify unavailable (the inotify event queue overflowed); "
                   "scanning every 2 s instead\n")
    printer(as_json=False)(said[1])
    out, err = capsys.readouterr()
    assert out == "" and "scanning every 2 s" in err
