"""The command line: global options anywhere, --version, and the data-dir checks of `up`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

import dfms
from dfms import cli
from dfms.cli import build_parser
from dfms.config import Config
from dfms.errors import StackError
from dfms.localstack.handle import make_data_dir
from dfms.localstack.servers import check_traversable
from dfms.runtime import service as service_module
from dfms.runtime.service import PassStats

# Every subcommand, with the arguments it needs to parse.
COMMANDS = [
    ["up"], ["gateway"], ["chunk-service"], ["health-monitor"], ["event-relay"],
    ["gc-worker", "--once"], ["replication-manager", "--scrub"], ["cluster", "ps"],
    ["cluster", "kill", "node-2"], ["migrate", "status"], ["keys", "generate"],
    ["config", "show"], ["admin", "create-user", "--email", "a@example.com"],
    ["nodes", "register", "node-9", "--endpoint", "http://h:9000", "--zone", "z"],
    ["nodes", "list"], ["keys", "generate", "--if-missing"],
    # The user commands (dfms/client/cli.py) accept the options too (they ignore them).
    ["login"], ["logout"], ["whoami"], ["usage"], ["put", "a.bin"], ["get", "/a", "a"],
    ["ls"], ["mv", "/a", "/b"], ["rm", "/a"], ["versions", "/a"], ["restore", "/a", "1"],
    ["search", "a"], ["trash", "ls"], ["trash", "restore", "x"], ["trash", "purge"],
    ["share", "create", "/a"], ["share", "ls"], ["share", "revoke", "x"],
    ["sync", "d", "/r"], ["watch", "d", "/r"],
]


def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                   ) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= _leaf_commands(child, (*prefix, name)) or {(*prefix, name)}
    return found


def test_the_table_covers_every_subcommand() -> None:
    for leaf in _leaf_commands(build_parser()):
        assert any(tuple(cmd[:len(leaf)]) == leaf for cmd in COMMANDS), leaf


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_global_options_before_or_after_the_subcommand(cmd: list[str]) -> None:
    parser = build_parser()
    before = parser.parse_args(["--data-dir", "D1", "--config", "C1.yaml", *cmd])
    after = parser.parse_args([*cmd, "--data-dir", "D2", "--config", "C2.yaml"])
    neither = parser.parse_args(cmd)
    assert (before.data_dir, before.config) == ("D1", "C1.yaml")
    assert (after.data_dir, after.config) == ("D2", "C2.yaml")
    assert (neither.data_dir, neither.config) == (None, None)
    # Given in both places, the one nearer the subcommand's own options wins.
    both = parser.parse_args(["--data-dir", "D1", *cmd, "--data-dir", "D2"])
    assert both.data_dir == "D2"


def test_version_comes_from_one_place(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dfms {dfms.__version__}"
    assert version("dfms") == dfms.__version__


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path sits under a 0700 one)."""
    path = make_data_dir("dfms-cli-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_private_parent_directory_is_named_with_the_fix(open_dir: Path) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(StackError) as error:
        check_traversable(private / "data", "nobody")  # need not exist yet
    message = str(error.value)
    assert f"{private} is not searchable" in message and f"chmod o+x {private}" in message
    os.chmod(private, 0o711)
    check_traversable(private / "data", "nobody")  # searchable now: no error


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_up_as_root_fails_before_starting_anything_under_a_private_parent(
        open_dir: Path) -> None:
    parent = open_dir / "mktemp-like"
    parent.mkdir(mode=0o700)
    data_dir = parent / "cluster"
    result = subprocess.run(
        [sys.executable, "-m", "dfms", "up", "--data-dir", str(data_dir), "--gateway-port", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"chmod o+x {parent}" in result.stderr
    assert not data_dir.exists()  # no database, no lock, no secrets
    assert oct(parent.stat().st_mode & 0o777) == "0o700"  # and nothing opened up


@pytest.mark.parametrize("cmd", [["migrate", "status"], ["config", "show"],
                                 ["admin", "create-user", "--email", "a@example.com"],
                                 ["nodes", "list"], ["keys", "generate", "--if-missing"]])
def test_without_any_cluster_config_the_cli_says_where_it_looked(cmd: list[str],
                                                                  open_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    result = subprocess.run([sys.executable, "-m", "dfms", *cmd], capture_output=True,
                            text=True, env=env, cwd=open_dir, timeout=60, check=False,
                            input="a long passphrase\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"no cluster config found: {open_dir / '.dfms' / 'dfms.yaml'} does not exist" \
        in result.stderr
    assert "--data-dir" in result.stderr and "unreachable" not in result.stderr
    assert result.stdout == ""  # no built-in defaults passed off as the cluster's config


# --- the service launchers --------------------------------------------------------------

def test_a_service_command_runs_its_service_with_the_resolved_config(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "dfms.yaml").write_text("gateway:\n  port: 1234\n")
    ran: list[tuple[object, Config]] = []
    monkeypatch.setattr(service_module, "main_for",
                        lambda service, cfg: ran.append((service, cfg)) or 7)

    class Service:
        def __init__(self, cfg: Config) -> None:
            self.cfg = cfg

    args = build_parser().parse_args(["gateway", "--data-dir", str(tmp_path)])
    assert cli._serve(args, Service) == 7
    [(service, cfg)] = ran
    assert isinstance(service, Service) and service.cfg is cfg
    assert cfg.gateway.port == 1234


class _Runner:
    """Stands in for a PooledService: one pass with these counters, then close()."""

    name = "gc_worker"

    def __init__(self, stats: PassStats | Exception) -> None:
        self.stats = stats
        self.closed = False
        self.built_in_loop = _in_loop()

    async def run_once(self) -> PassStats:
        if isinstance(self.stats, Exception):
            raise self.stats
        return self.stats

    async def close(self) -> None:
        self.closed = True


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(("errors", "code"), [(0, 0), (2, 1)])
def test_one_pass_prints_its_counters_and_closes_the_runner(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        errors: int, code: int) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level, fmt: None)
    built: list[_Runner] = []

    def make() -> _Runner:
        built.append(_Runner(PassStats({"b_swept": 3, "a_marked": 10}, errors)))
        return built[-1]

    assert cli._one_pass(Config(), "gc_worker", make, cli._run_once) == code
    assert capsys.readouterr().out.split("\n") == [
        f"{'a_marked':<34} 10", f"{'b_swept':<34} 3", f"{'errors':<34} {errors}", ""]
    [runner] = built
    assert runner.closed and runner.built_in_loop


def test_one_pass_closes_the_runner_when_the_pass_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level, fmt: None)
    runner = _Runner(RuntimeError("pass failed"))
    with pytest.raises(RuntimeError, match="pass failed"):
        cli._one_pass(Config(), "gc_worker", lambda: runner, cli._run_once)
    assert runner.closed


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly() -> None:
    """`dfms cluster ps | head -3`: exit 141 like a command a pipe ended, no traceback."""
    code = ("import sys\nfrom dfms import cli\n"
            "def broken(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
            "cli.cmd_cluster = broken\nsys.exit(cli.main(['cluster', 'ps']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stderr) == (141, "")
