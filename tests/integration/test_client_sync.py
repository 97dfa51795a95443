"""`dfms sync` and `dfms watch` (dfms/client/mirror.py, watcher.py) run as a user runs them:
`.venv/bin/dfms` subprocesses with HOME, XDG_CONFIG_HOME and XDG_CACHE_HOME in a scratch
directory, against the session's real cluster. The gateway's outage is real too: the
watcher talks to it through a TCP relay this test closes (connections refused) and opens
again on the same port."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.test_client_cli import DFMS, MIB, Cli, random_file, sha256
from tests.support.api import ApiUser
from tests.support.cluster import ClusterHandle

Event = dict[str, Any]


class SyncCli(Cli):
    def __init__(self, home: Path, url: str) -> None:
        super().__init__(home, url)
        self.env["XDG_CACHE_HOME"] = str(home / "cache")

    @property
    def state_files(self) -> list[Path]:
        return sorted((self.home / "cache" / "dfms" / "sync").glob("*.json"))

    def sync(self, *args: str, ok: bool = True) -> Any:
        result = self.run("sync", *args, "--json", ok=ok)
        return json.loads(result.stdout)

    def names(self, folder: str) -> set[str]:
        out = self.json("ls", folder)
        return {f["name"] for f in out.get("files", [])} | {
            f["name"] + "/" for f in out.get("folders", [])}


@pytest.fixture
def cli(cluster: ClusterHandle, user: ApiUser, tmp_path: Path) -> SyncCli:
    c = SyncCli(tmp_path / "home", cluster.gateway_url)
    c.login(user.email)
    return c


def make_tree(root: Path) -> dict[str, Path]:
    files = {
        "a.txt": root / "a.txt", "big.bin": root / "big.bin",
        "docs/b.txt": root / "docs" / "b.txt", "docs/2024/c.txt": root / "docs" / "2024" / "c.txt",
        "old/d.txt": root / "old" / "d.txt", "old/deep/e.txt": root / "old" / "deep" / "e.txt",
    }
    for rel, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}\n")
    random_file(files["big.bin"], 8 * MIB, seed=16)
    (root / "empty").mkdir()
    return files


def uploaded(out: Any) -> dict[str, Event]:
    return {i["path"]: i for i in out["items"] if i["event"] == "uploaded"}


def test_sync_adds_edits_and_deletes_nested_folders(cli: SyncCli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    first = cli.sync(str(src), "/mirror/photos")
    assert (first["scanned"], first["uploaded"], first["skipped"], first["failed"]) == (6, 6, 0, 0)
    assert first["bytes_sent"] == first["bytes_logical"] == sum(
        p.stat().st_size for p in files.values())
    assert cli.names("/mirror/photos") == {"a.txt", "big.bin", "docs/", "old/", "empty/"}
    assert cli.names("/mirror/photos/docs/2024") == {"c.txt"}
    got = tmp_path / "got.bin"
    cli.run("get", "/mirror/photos/big.bin", str(got))
    assert sha256(got) == sha256(files["big.bin"])
    state = cli.state_files
    assert len(state) == 1 and oct(state[0].stat().st_mode & 0o777) == "0o600"

    # Unchanged: nothing uploaded, nothing sent (the recorded stats are too recent to be
    # trusted, so the same-sized files are hashed, and found to be the stored ones).
    again = cli.sync(str(src), "/mirror/photos")
    assert (again["uploaded"], again["skipped"], again["bytes_sent"]) == (0, 6, 0)

    # Edits: another size, the same size (a byte), and a touch that changes nothing.
    time.sleep(2.1)  # past the racy window of the records written above
    files["a.txt"].write_text("a longer content of a.txt\n")
    with files["big.bin"].open("r+b") as f:
        f.seek(5 * MIB)
        byte = f.read(1)
        f.seek(5 * MIB)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(files["docs/b.txt"])
    edited = cli.sync(str(src), "/mirror/photos")
    assert set(uploaded(edited)) == {"/mirror/photos/a.txt", "/mirror/photos/big.bin"}
    assert edited["skipped"] == 4
    big = uploaded(edited)["/mirror/photos/big.bin"]
    assert big["version"] == 2 and 0 < big["bytes_sent"] < 8 * MIB // 2, big
    print(f"\n1-byte edit in 8 MiB: sent {big['bytes_sent']} B "
          f"({big['chunks_sent']}/{big['chunks_total']} chunks)")
    assert [v["version"] for v in cli.json("versions", "/mirror/photos/a.txt")["versions"]] == [
        2, 1]

    # Deletes: kept remotely without --delete; --dry-run --delete changes nothing.
    files["docs/b.txt"].unlink()
    for p in (files["old/deep/e.txt"], files["old/d.txt"]):
        p.unlink()
    (src / "old" / "deep").rmdir()
    (src / "old").rmdir()
    kept = cli.sync(str(src), "/mirror/photos")
    assert kept["trashed"] == 0 and "b.txt" in cli.names("/mirror/photos/docs")
    dry = cli.sync(str(src), "/mirror/photos", "--delete", "--dry-run")
    assert dry["dry_run"] and dry["trashed"] == 3
    assert {(i["event"], i["path"]) for i in dry["items"]} == {
        ("would_trash", "/mirror/photos/old"), ("would_trash", "/mirror/photos/docs/b.txt")}
    assert "old/" in cli.names("/mirror/photos") and cli.json("trash", "ls")["items"] == []
    gone = cli.sync(str(src), "/mirror/photos", "--delete")
    assert gone["trashed"] == 3 and gone["uploaded"] == 0
    assert cli.names("/mirror/photos") == {"a.txt", "big.bin", "docs/", "empty/"}
    assert cli.names("/mirror/photos/docs") == {"2024/"}
    trash = {(i["type"], i["name"]) for i in cli.json("trash", "ls")["items"]}
    assert trash == {("folder", "old"), ("file", "b.txt")}

    # The human output: one line per change, then the summary.
    (src / "docs" / "new.txt").write_text("new\n")
    text = cli.run("sync", str(src), "/mirror/photos").stdout.splitlines()
    assert text[0].startswith("uploaded /mirror/photos/docs/new.txt  v1 4 B, sent 4 B")
    assert text[-1].startswith("sync: 4 files scanned, 1 uploaded, 3 skipped, 0 trashed; ")


def test_dry_run_changes_nothing_and_a_state_lost_costs_no_bytes(cli: SyncCli,
                                                                  tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    dry = cli.sync(str(src), "/dry/run", "--dry-run")
    assert dry["uploaded"] == 6 and dry["bytes_sent"] == 0
    assert ("would_mkdir", "/dry/run/docs/2024") in {(i["event"], i["path"])
                                                      for i in dry["items"]}
    assert "dry/" not in cli.names("/") and cli.state_files == []
    text = cli.run("sync", str(src), "/dry/run", "--dry-run").stdout.splitlines()
    assert "would upload /dry/run/big.bin (new, 8.0 MiB)" in text
    assert text[-1].startswith("dry run (nothing changed): 6 files scanned, 6 to upload")

    cli.sync(str(src), "/dry/run")
    for state in cli.state_files:
        state.unlink()
    # Without its state a sync hashes every file and finds them stored.
    again = cli.sync(str(src), "/dry/run")
    assert (again["uploaded"], again["skipped"], again["bytes_sent"]) == (0, 6, 0)
    # A local file where the remote has a folder: that file fails, the rest goes on.
    (src / "clash").write_text("x")
    cli.run("put", str(src / "a.txt"), "/dry/run/clash")
    clash = cli.run("sync", str(src), "/dry/run", "--json", ok=False)
    assert clash.returncode == 1
    assert json.loads(clash.stdout)["failed"] == 1


# --- watch ------------------------------------------------------------------------------

class Watch:
    """A `dfms watch` process whose JSON lines are read as they come."""

    def __init__(self, cli: SyncCli, *args: str) -> None:
        self.proc = subprocess.Popen([DFMS, "watch", *args, "--json"], env=cli.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, match: Callable[[Event], bool], timeout: float = 60) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(event)
            if match(event):
                return event
        raise AssertionError(f"no such event within {timeout} s; seen: {self.seen}")

    def drain(self, seconds: float) -> list[Event]:
        end = time.monotonic() + seconds
        got = []
        while time.monotonic() < end:
            with contextlib.suppress(queue.Empty):
                got.append(self.events.get(timeout=0.1))
        self.seen += got
        return got

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        self.drain(0.1)
        assert self.proc.stderr is not None
        assert "Traceback" not in self.proc.stderr.read()
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def is_upload(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "uploaded" and e["path"] == path


def test_watch_uploads_a_slowly_written_file_once_after_it_settles(cli: SyncCli,
                                                                    tmp_path: Path) -> None:
    src = tmp_path / "inbox"
    src.mkdir()
    watch = Watch(cli, str(src), "/watched", "--interval", "0.3")  # --settle: 2 s default
    try:
        watch.wait_for(lambda e: e["event"] == "watching")
        data = os.urandom(6 * 256 * 1024)
        target = src / "cam" / "clip.bin"
        target.parent.mkdir()
        started = time.monotonic()
        with target.open("wb") as f:
            for i in range(6):  # six pieces over 3 s, each within the 2 s settle time
                f.write(data[i * 256 * 1024:(i + 1) * 256 * 1024])
                f.flush()
                time.sleep(0.5)
        written = time.monotonic()
        done = watch.wait_for(is_upload("/watched/cam/clip.bin"), timeout=30)
        after = time.monotonic() - written
        assert after >= 1.5  # it waited for the file to settle (2 s after the last write)
        assert done["size"] == len(data) and done["version"] == 1
        assert done["sha256"] == sha256(target)
        later = watch.drain(3)
        assert not [e for e in [*watch.seen, *later] if e["event"] == "failed"], watch.seen
        assert [e for e in watch.seen if e["event"] == "uploaded"] == [done]
        print(f"\nwritten over {written - started:.1f} s, uploaded {after + 0.5:.1f} s "
              f"after the last write (the upload itself "
              f"{done['seconds']:.1f} s)")
        assert watch.stop() == 0
        assert watch.seen[-1]["event"] == "stopped"
    finally:
        watch.close()
    assert [v["version"] for v in cli.json("versions", "/watched/cam/clip.bin")["versions"]
            ] == [1]


def test_watch_wakes_on_inotify_and_polls_only_when_asked(cli: SyncCli,
                                                          tmp_path: Path) -> None:
    """With --interval 30 a scan every 30 s would find a new file late: inotify wakes the
    watcher at once, so it is uploaded --settle seconds after its last write. With --poll
    (no inotify) the same file waits for the next scan, 30 s away."""
    settle = 1.0
    for poll in (False, True):
        src = tmp_path / ("polled" if poll else "inbox")
        src.mkdir()
        folder = "/polled" if poll else "/woken"
        watch = Watch(cli, str(src), folder, "--interval", "30", "--settle", f"{settle:g}",
                      *(["--poll"] if poll else []))
        try:
            hello = watch.wait_for(lambda e: e["event"] == "watching")
            assert (hello["mode"], hello["rescan_s"]) == (("poll", 30) if poll
                                                          else ("inotify", 30))
            time.sleep(1)  # the first scan is over: only a wake-up (or 30 s) finds the file
            target = src / "new" / "deeper" / "clip.bin"  # a directory made after the start
            target.parent.mkdir(parents=True)
            random_file(target, MIB, seed=11)
            written = time.monotonic()
            if poll:
                later = watch.drain(settle + 5)
                assert not [e for e in later if e["event"] == "uploaded"], later
            else:
                done = watch.wait_for(is_upload(f"{folder}/new/deeper/clip.bin"), timeout=30)
                after = time.monotonic() - written
                print(f"\ninotify: uploaded {after:.2f} s after the write (--settle "
                      f"{settle:g}, --interval 30; the upload itself {done['seconds']:.2f} s)")
                assert settle * 0.8 <= after < settle + 4
                assert done["sha256"] == sha256(target)
            assert watch.stop() == 0
            assert not [e for e in watch.seen if e["event"] in ("failed", "polling")]
        finally:
            watch.close()
    assert cli.names("/woken/new/deeper") == {"clip.bin"}
    assert "polled/" not in cli.names("/")  # nothing was uploaded, no folder made


class Relay:
    """A TCP relay to the gateway that can be closed (connections refused) and opened
    again on the same port."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = 0
        self.socks: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.port = srv.getsockname()[1]
        self.socks = [srv]
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):  # shutdown wakes the listener's accept()
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.socks = []


def test_watch_survives_the_gateway_away_and_a_restart_sends_nothing_again(
        cluster: ClusterHandle, user: ApiUser, tmp_path: Path) -> None:
    relay = Relay(cluster.gateway_url)
    relay.open()
    cli = SyncCli(tmp_path / "home", relay.url)
    cli.login(user.email)
    src = tmp_path / "inbox"
    src.mkdir()
    args = (str(src), "/outage", "--settle", "0.5", "--interval", "0.2")
    watch = Watch(cli, *args)
    try:
        watch.wait_for(lambda e: e["event"] == "watching")
        relay.close()
        random_file(src / "during.bin", 3 * MIB, seed=7)
        failed = watch.wait_for(lambda e: e["event"] == "failed", timeout=30)
        assert failed["retry_in"] and "connection" in failed["error"], failed
        time.sleep(3)  # a few more tries while it is away
        relay.open()
        done = watch.wait_for(is_upload("/outage/during.bin"), timeout=90)
        assert done["sha256"] == sha256(src / "during.bin")
        tries = [e for e in watch.seen if e["event"] == "failed"]
        print(f"\n{len(tries)} failed tries while the gateway was away, then uploaded")
        assert len(tries) >= 2 and all(e["retry_in"] for e in tries)
        assert watch.stop() == 0
        # Restarted: the recorded file is not read or sent again.
        watch = Watch(cli, *args)
        watch.wait_for(lambda e: e["event"] == "watching")
        assert not [e for e in watch.drain(3) if e["event"] == "uploaded"]
        assert watch.stop() == 0
        # Restarted without its state: hashed, and the server holds every chunk.
        for state in cli.state_files:
            state.unlink()
        watch = Watch(cli, *args)
        redo = watch.wait_for(is_upload("/outage/during.bin"))
        assert redo["bytes_sent"] == 0 and redo["unchanged"] and redo["version"] == 1
        assert watch.stop() == 0
    finally:
        watch.close()
        relay.close()
