"""The `dfms` user commands (dfms/client/cli.py) run as a user runs them: `.venv/bin/dfms`
as a subprocess, HOME and XDG_CONFIG_HOME in a scratch directory, against the session's
real cluster. Figures (bytes sent on a re-put, on a one-byte edit, after an interruption)
are printed; run with -s to see them."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.api import PASSWORD, Api, ApiUser
from tests.support.cluster import ClusterHandle

DFMS = str(Path(sys.prefix) / "bin" / "dfms")
KIB = 1024
MIB = 1024 * KIB


class Cli:
    """`dfms` for one user, with a config dir of its own."""

    def __init__(self, home: Path, url: str) -> None:
        self.home, self.url = home, url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
        self.env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"))

    @property
    def credentials(self) -> Path:
        return self.home / "config" / "dfms" / "credentials.json"

    def run(self, *args: str, input: str | None = None, ok: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([DFMS, *args], env=self.env, input=input, text=True,
                                capture_output=True, timeout=timeout, check=False)
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.run(*args, "--json", **kw).stdout)

    def login(self, email: str) -> None:
        self.run("login", self.url, "--email", email, "--password-stdin",
                 input=PASSWORD + "\n")


@pytest.fixture
def cli(cluster: ClusterHandle, user: ApiUser, tmp_path: Path) -> Cli:
    c = Cli(tmp_path / "home", cluster.gateway_url)
    c.login(user.email)
    return c


def random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def test_login_stores_tokens_0600_whoami_env_override_and_logout(
        cluster: ClusterHandle, user: ApiUser, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", cluster.gateway_url)
    out = cli.json("login", cluster.gateway_url, "--email", user.email, "--password-stdin",
                   input=PASSWORD + "\n")
    assert out["user"]["email"] == user.email and out["url"] == cluster.gateway_url
    assert stat.S_IMODE(cli.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.credentials.parent.stat().st_mode) == 0o700
    stored = json.loads(cli.credentials.read_text())
    assert stored["url"] == cluster.gateway_url and stored["refresh_token"]
    assert cli.json("whoami")["user"]["id"] == user.id
    # A bad stored token: 401, and the message says what to do.
    good = cli.credentials.read_text()
    cli.credentials.write_text(good.replace(stored["access_token"], "not-a-token").replace(
        stored["refresh_token"], "dfmsr_spent"))
    bad = cli.run("whoami", ok=False)
    assert bad.returncode == 1 and "401" in bad.stderr and "dfms login" in bad.stderr
    cli.credentials.write_text(good)
    # DFMS_URL + DFMS_TOKEN: another identity for one command, nothing stored.
    other = Cli(tmp_path / "other", cluster.gateway_url)
    other.env.update(DFMS_URL=cluster.gateway_url, DFMS_TOKEN=user.access_token)
    assert other.json("whoami")["user"]["email"] == user.email
    assert not other.credentials.exists()
    assert cli.json("logout")["logged_out"] is True
    assert not cli.credentials.exists()
    after = cli.run("whoami", "--json", ok=False)
    assert after.returncode == 1 and json.loads(after.stdout)["error"]["code"] == "not_logged_in"
    wrong = cli.run("login", cluster.gateway_url, "--email", user.email, "--password-stdin",
                    input="not the password\n", ok=False)
    assert wrong.returncode == 1 and "401" in wrong.stderr and not cli.credentials.exists()


async def test_round_trips_at_chunk_boundaries(cli: Cli, api: Api, user: ApiUser,
                                               tmp_path: Path) -> None:
    status, info, _ = await api.request("GET", "/chunker", user)
    assert status == 200, info
    lo, avg, hi = info["min_size_bytes"], info["avg_size_bytes"], info["max_size_bytes"]
    sizes = sorted({0, 1, lo - 1, lo, lo + 1, avg, hi - 1, hi, hi + 1, 2 * hi + 3})
    src = tmp_path / "src"
    src.mkdir()
    files = [random_file(src / f"s{n}.bin", n, seed=n) for n in sizes]
    put = cli.json("put", *map(str, files), "/rt/boundaries")
    assert [f["bytes_read"] for f in put["files"]] == sizes
    assert put["bytes_read"] == sum(sizes) == put["bytes_sent"]
    assert all(f["remote"] == f"/rt/boundaries/{p.name}" for f, p in zip(put["files"], files,
                                                                          strict=True))
    out = tmp_path / "out"
    out.mkdir()
    for f in files:
        got = cli.json("get", f"/rt/boundaries/{f.name}", str(out))
        assert got["sha256_verified"] and got["local"] == str(out / f.name)
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    # A partial download is resumed, and the whole is still verified.
    big = files[-1]
    (out / "resumed.bin.part").write_bytes(big.read_bytes()[:hi])
    got = cli.json("get", f"/rt/boundaries/{big.name}", str(out / "resumed.bin"))
    assert got["resumed_from"] == hi and (out / "resumed.bin").read_bytes() == big.read_bytes()


def test_200_mib_round_trip_then_a_second_put_sends_nothing(cli: Cli, tmp_path: Path) -> None:
    src = random_file(tmp_path / "big200.bin", 200 * MIB, seed=200)
    time.sleep(2.1)  # a file changed within the last 2 s is not cached (manifest_cache.py)
    started = time.monotonic()
    first = cli.json("put", str(src), "/big")
    first_s = time.monotonic() - started
    assert first["bytes_read"] == first["bytes_sent"] == 200 * MIB
    assert first["files"][0]["manifest_cached"] is False
    started = time.monotonic()
    again = cli.json("put", str(src), "/big")
    again_s = time.monotonic() - started
    assert again["bytes_sent"] == 0 and again["files"][0]["unchanged"] is True
    assert again["files"][0]["chunks_sent"] == 0 and again["dedup_ratio"] is None
    # The second put found the manifest by the file's stat: the file was not read.
    assert again["files"][0]["manifest_cached"] is True
    uncached = cli.json("put", "--no-cache", str(src), "/big")["files"][0]
    assert (uncached["manifest_cached"], uncached["unchanged"]) == (False, True)
    started = time.monotonic()
    cli.json("get", "/big/big200.bin", str(tmp_path / "copy.bin"))
    get_s = time.monotonic() - started
    assert sha256(tmp_path / "copy.bin") == sha256(src) == first["files"][0]["file"]["sha256"]
    print(f"\n200 MiB: put {first_s:.1f} s, re-put {again_s:.1f} s sent "
          f"{again['bytes_sent']} B, get {get_s:.1f} s")
    # The human form ends with the summary line: logical, sent, dedup.
    text = cli.run("put", str(src), "/big").stdout.strip().splitlines()
    assert re.fullmatch(r"1 file: 200\.0 MiB logical, 0 B sent, dedup: nothing sent, .*",
                        text[-1]), text


def test_a_one_byte_edit_in_100_mib_sends_a_few_chunks(cli: Cli, tmp_path: Path) -> None:
    src = random_file(tmp_path / "edit.bin", 100 * MIB, seed=100)
    first = cli.json("put", str(src))
    data = bytearray(src.read_bytes())
    data[len(data) // 2 + 12345] ^= 0x01
    src.write_bytes(bytes(data))
    edit = cli.json("put", str(src))
    f = edit["files"][0]
    print(f"\n1-byte edit of 100 MiB: {f['chunks_sent']}/{f['chunks_total']} chunks, "
          f"{f['bytes_sent']} bytes sent (first put {first['bytes_sent']})")
    assert f["file"]["version"] == 2 and 1 <= f["chunks_sent"] <= 3, f
    assert f["bytes_sent"] < 16 * MIB, f
    cli.run("get", "/edit.bin", str(tmp_path / "edit.copy"))
    assert sha256(tmp_path / "edit.copy") == hashlib.sha256(data).hexdigest()


def test_an_interrupted_put_rerun_sends_only_the_rest(cli: Cli, tmp_path: Path) -> None:
    size = 200 * MIB
    src = random_file(tmp_path / "killed.bin", size, seed=7)
    sent_before = 0
    with subprocess.Popen([DFMS, "put", str(src), "/k", "--parallel", "1"], env=cli.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:  # plain progress lines: stderr is not a terminal
                if match := re.search(r"bytes_sent=(\d+)", line):
                    sent_before = int(match.group(1))
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL and 0 < sent_before < size
    assert cli.json("ls", "/k")["files"] == []  # nothing visible from the killed put
    rerun = cli.json("put", str(src), "/k")
    sent_after = rerun["bytes_sent"]
    print(f"\ninterrupted put of 200 MiB: {sent_before} B acknowledged before SIGKILL, "
          f"re-run sent {sent_after} B ({rerun['files'][0]['chunks_sent']}/"
          f"{rerun['files'][0]['chunks_total']} chunks)")
    assert 0 < sent_after <= size - sent_before
    cli.run("get", "/k/killed.bin", str(tmp_path / "killed.copy"))
    assert sha256(tmp_path / "killed.copy") == sha256(src)


async def test_quota_exceeded_mid_put_leaves_nothing_visible(
        cli: Cli, user: ApiUser, db: asyncpg.Connection, tmp_path: Path) -> None:
    await db.execute("UPDATE users SET quota_bytes = $2 WHERE id = $1", uuid.UUID(user.id),
                     8 * MIB)
    src = random_file(tmp_path / "over.bin", 12 * MIB, seed=12)
    over = cli.run("put", str(src), "/q", "--json", ok=False)
    assert over.returncode == 1, (over.stdout, over.stderr)
    assert json.loads(over.stdout)["error"]["code"] == "quota_exceeded"
    assert "507 quota_exceeded" in over.stderr
    assert cli.json("ls", "/q")["files"] == []
    usage = cli.json("usage")
    assert (usage["used_bytes"], usage["file_count"]) == (0, 0), usage
    fits = cli.json("put", str(random_file(tmp_path / "fits.bin", 6 * MIB, seed=6)), "/q")
    assert fits["bytes_sent"] == 6 * MIB


def test_every_command_with_json(cli: Cli, tmp_path: Path) -> None:
    a = random_file(tmp_path / "quarterly_report.txt", 1000, seed=1)
    put = cli.json("put", str(a), "/docs/2024")
    file_id = put["files"][0]["file"]["id"]
    listing = cli.json("ls", "/docs")
    assert ([d["name"] for d in listing["folders"]], listing["files"]) == (["2024"], [])
    assert [f["id"] for f in cli.json("ls", "/docs/2024/quarterly_report.txt")["files"]] == [
        file_id]
    assert "2024/" in cli.run("ls", "-l", "/docs").stdout
    random_file(a, 2000, seed=2)
    etag = put["files"][0]["file"]["sha256"]
    cli.json("put", str(a), "/docs/2024", "--if-match", etag)
    stale = cli.run("put", str(a), "/docs/2024", "--if-match", etag, "--json", ok=False)
    assert stale.returncode == 1 and json.loads(stale.stdout)["error"]["status"] == 412
    versions = cli.json("versions", "/docs/2024/quarterly_report.txt")["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
    old = cli.json("get", "/docs/2024/quarterly_report.txt", str(tmp_path / "v1.txt"),
                   "--version", "1")
    assert (old["file"]["version"], old["file"]["sha256"]) == (1, etag)
    assert sha256(tmp_path / "v1.txt") == etag != sha256(a)
    absent = cli.run("get", "/docs/2024/quarterly_report.txt", str(tmp_path / "v9.txt"),
                     "--version", "9", "--json", ok=False)
    assert absent.returncode == 1 and json.loads(absent.stdout)["error"]["code"] == "not_found"
    assert not (tmp_path / "v9.txt").exists() and not (tmp_path / "v9.txt.part").exists()
    restored = cli.json("restore", "/docs/2024/quarterly_report.txt", "1")["file"]
    assert (restored["version"], restored["sha256"]) == (3, etag)
    hits = cli.json("search", "quarterly")
    assert [(h["item"]["id"], h["path"]) for h in hits["hits"]] == [(file_id, "/docs/2024")]
    share = cli.json("share", "create", "/docs/2024/quarterly_report.txt",
                     "--max-downloads", "2")["share"]
    assert share["url"].endswith(share["token"])
    listed = cli.json("share", "ls", "/docs/2024/quarterly_report.txt")["shares"]
    assert [(s["id"], s["token"]) for s in listed] == [(share["id"], None)]
    cli.json("share", "revoke", share["id"])
    assert cli.json("share", "ls")["shares"][0]["state"] == "revoked"
    moved = cli.json("mv", "/docs/2024/quarterly_report.txt", "/docs/q.txt")["item"]
    assert (moved["id"], moved["name"]) == (file_id, "q.txt")
    cli.json("mv", "/docs/2024", "/archive")  # a folder, renamed and moved to the root
    assert [d["name"] for d in cli.json("ls", "/")["folders"]] == ["archive", "docs"]
    cli.json("rm", "/docs/q.txt")
    trash = cli.json("trash", "ls")["items"]
    assert [(i["id"], i["name"]) for i in trash] == [(file_id, "q.txt")]
    assert cli.json("trash", "restore", "/docs/q.txt")["restored"][0]["id"] == file_id
    cli.json("rm", "-r", "/docs")
    assert cli.json("trash", "purge", "/docs")["purged"][0]["name"] == "docs"
    assert cli.json("trash", "ls")["items"] == []
    usage = cli.json("usage")
    assert usage["file_count"] == 0 and "used_bytes" in usage


def test_exit_codes(cli: Cli, tmp_path: Path) -> None:
    missing = cli.run("get", "/nope.bin", str(tmp_path / "x"), "--json", ok=False)
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["code"] == "not_found"
    assert "not_found" in missing.stderr and "/nope.bin" in missing.stderr
    assert cli.run("restore", "/x", "0", ok=False).returncode == 2  # argparse
    assert cli.run("put", str(tmp_path / "absent.bin"), ok=False).returncode == 2
    assert cli.run("put", str(tmp_path), "/d", ok=False).returncode == 2  # a directory
    assert cli.run("trash", "purge", ok=False).returncode == 2
    cli.run("put", str(random_file(tmp_path / "f.bin", 10, seed=10)), "/full")
    full = cli.run("rm", "/full", ok=False)
    assert full.returncode == 1 and "folder_not_empty" in full.stderr and "rm -r" in full.stderr
