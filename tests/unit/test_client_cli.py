"""The `dfms` user commands' pure logic: argument splitting, the credentials file, the
progress display, trash lookup, JSON output and the parser (no server)."""

from __future__ import annotations

import argparse
import io
import json
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dfms.cli import build_parser, main
from dfms.client import credentials as cr
from dfms.client.cli import UsageError, check_local_files, jsonable, pick_trash_item, split_put_args
from dfms.client.models import PutProgress, Tokens, TrashItem
from dfms.client.progress import PutDisplay, dedup_text, human_bytes
from tests.support.loopback import fake_gateway

USER_COMMANDS = ["login", "logout", "whoami", "usage", "put", "get", "ls", "mv", "rm",
                 "versions", "restore", "search"]


@pytest.mark.parametrize(("args", "to", "files", "folder"), [
    (["a.bin"], None, ["a.bin"], "/"),
    (["a.bin", "/photos/2024"], None, ["a.bin"], "/photos/2024"),
    (["a.bin", "b.bin"], None, ["a.bin", "b.bin"], "/"),  # b.bin is a local file
    (["a.bin", "b.bin", "docs"], None, ["a.bin", "b.bin"], "docs"),
    (["a.bin", "b.bin"], "/x", ["a.bin", "b.bin"], "/x"),
])
def test_split_put_args(args: list[str], to: str | None, files: list[str],
                        folder: str) -> None:
    local = {"a.bin", "b.bin"}
    assert split_put_args(args, to, local.__contains__) == (files, folder)


def test_check_local_files(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    assert check_local_files([str(tmp_path / "f")]) == [tmp_path / "f"]
    with pytest.raises(UsageError, match="directory"):
        check_local_files([str(tmp_path)])
    with pytest.raises(UsageError, match="no such local file"):
        check_local_files([str(tmp_path / "absent")])


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                          (200 * 1024 * 1024, "200.0 MiB"),
                                          (3 * 1024 ** 4, "3.0 TiB")])
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_dedup_text() -> None:
    assert dedup_text(100, 25) == "dedup 4.0x"
    assert dedup_text(100, 0) == "dedup: nothing sent"
    assert dedup_text(0, 0) == "dedup -"


def test_plain_progress_lines_per_tenth_sent() -> None:
    now = [0.0]
    out = io.StringIO()
    display = PutDisplay(out, live=False, clock=lambda: now[0])
    prog = PutProgress(size=100, chunks_total=10)
    display.start("/a.bin", prog)
    display.tick()  # hashing: nothing to say yet
    prog.phase, prog.chunks_missing, prog.bytes_to_send = "sending", 4, 1000
    display.tick()
    for sent in (50, 100, 150, 420):
        now[0] += 1
        prog.bytes_sent, prog.chunks_sent = sent, sent // 250
        display.tick()
    prog.bytes_sent = 1000
    display.tick()  # all sent: the result line says it, not the progress
    lines = out.getvalue().splitlines()
    assert lines[0] == "/a.bin: 10 chunks, 4 to send (1000 B)"
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "/a.bin: sent 10%", "/a.bin: sent 40%"]
    assert lines[-1].endswith("bytes_sent=420") and "105 B/s" in lines[-1]


def test_live_progress_redraws_one_line() -> None:
    out = io.StringIO()
    display = PutDisplay(out, live=True)
    prog = PutProgress(size=2048, bytes_hashed=1024)
    display.start("/a.bin", prog)
    display.tick()
    display.finish()
    assert out.getvalue() == "\r/a.bin  hashing 1.0 KiB/2.0 KiB\x1b[K\r\x1b[K"


def test_credentials_file_is_0600_in_a_0700_dir(tmp_path: Path) -> None:
    path = cr.credentials_path({"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert path == tmp_path / "cfg" / "dfms" / "credentials.json"
    creds = cr.Credentials("http://gw").with_tokens(Tokens("a", "r", 900.0), now=1000.0)
    cr.save(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cr.load(path) == creds and creds.expires_at == 1900.0
    assert json.loads(path.read_text())["refresh_token"] == "r"
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp left
    assert cr.config_dir({"HOME": "/home/u"}) == Path("/home/u/.config/dfms")


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    assert cr.effective(path, {}) is None
    cr.save(path, cr.Credentials("http://gw", "a", "r", time.time() + 900))
    assert cr.effective(path, {}) == cr.load(path)
    env_token = cr.effective(path, {"DFMS_TOKEN": "t"})
    assert env_token is not None and (env_token.url, env_token.access_token) == ("http://gw", "t")
    assert env_token.from_env and not env_token.needs_refresh()
    # Stored tokens never go to another gateway.
    other = cr.effective(path, {"DFMS_URL": "http://elsewhere/"})
    assert other == cr.Credentials("http://elsewhere")


def test_refresh_only_when_about_to_expire() -> None:
    creds = cr.Credentials("u", "a", "r", expires_at=10_000.0)
    assert not creds.needs_refresh(now=10_000.0 - cr.REFRESH_MARGIN_S - 1)
    assert creds.needs_refresh(now=10_000.0 - cr.REFRESH_MARGIN_S + 1)
    assert not cr.Credentials("u", "a", None, 1.0).needs_refresh(now=5.0)  # nothing to use


def trashed(id: str, name: str, path: str, minute: int) -> TrashItem:
    when = datetime(2026, 12, 1, 10, minute, tzinfo=UTC)
    return TrashItem(id, "file", name, path, None, 1, when, when)


def test_pick_trash_item_by_id_or_newest_with_that_path() -> None:
    items = [trashed("n", "a.txt", "/docs", 2), trashed("o", "a.txt", "/docs", 1),
             trashed("r", "a.txt", "/", 0)]
    assert pick_trash_item(items, "o").id == "o"
    assert pick_trash_item(items, "/docs/a.txt").id == "n"
    assert pick_trash_item(items, "a.txt").id == "r"
    with pytest.raises(Exception, match="nothing in the trash"):
        pick_trash_item(items, "/b.txt")


def test_jsonable() -> None:
    item = trashed("n", "a.txt", "/", 2)
    data = jsonable({"items": (item,), "ratio": float("inf"), "p": Path("/x")})
    assert data["items"][0]["deleted_at"] == "2026-12-01T10:02:00+00:00"
    assert data["ratio"] is None and data["p"] == "/x"
    json.dumps(data)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_user_command_takes_json_and_hides_operator_options() -> None:
    commands = subparsers(build_parser())
    leaves = [commands[n] for n in USER_COMMANDS]
    for group in ("trash", "share"):
        leaves += subparsers(commands[group]).values()
    for parser in leaves:
        helptext = parser.format_help()
        assert "--json" in helptext, parser.prog
        assert "--data-dir" not in helptext and "--config" not in helptext, parser.prog
    assert "--data-dir" in commands["up"].format_help()  # operator commands keep them


def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main(["put", str(tmp_path / "absent.bin")]) == 2
    assert "no such local file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["restore", "/a", "0"])
    assert e.value.code == 2


def test_not_logged_in_is_exit_1_with_its_code(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("DFMS_URL", raising=False)
    monkeypatch.delenv("DFMS_TOKEN", raising=False)
    assert main(["ls", "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["error"]["code"] == "not_logged_in"
    assert "dfms login" in out.err


async def test_a_token_about_to_expire_is_refreshed_once_and_stored(tmp_path: Path) -> None:
    from aiohttp import web

    from dfms.client.cli import fresh_credentials
    routes = web.RouteTableDef()
    presented: list[str] = []

    @routes.post("/api/v1/auth/refresh")
    async def refresh(request: web.Request) -> web.Response:
        presented.append((await request.json())["refresh_token"])
        return web.json_response({"tokens": {"access_token": "a2", "refresh_token": "r2",
                                             "expires_in": 900}})

    runner, url = await fake_gateway(routes)
    path = tmp_path / "credentials.json"
    stale = cr.Credentials(url, "a1", "r1", expires_at=time.time() + 10)
    cr.save(path, stale)
    try:
        fresh = await fresh_credentials(path, stale)
        # A second process that read the stale pair before: it adopts the stored new pair
        # instead of presenting the spent refresh token (which would revoke the family).
        again = await fresh_credentials(path, stale)
    finally:
        await runner.cleanup()
    assert presented == ["r1"]
    assert (fresh.access_token, fresh.refresh_token) == ("a2", "r2") == (
        again.access_token, again.refresh_token)
    assert cr.load(path) == fresh and stat.S_IMODE(path.stat().st_mode) == 0o600
    not_due = cr.Credentials(url, "a", "r", expires_at=time.time() + 3600)
    assert await fresh_credentials(path, not_due) is not_due
