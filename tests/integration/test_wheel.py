"""DFMS as a user gets it: an sdist and a wheel built with `python -m build`, the wheel
installed with its `stack` extra into a fresh venv outside the repository, and run from
there: every module imports, the CLI answers, and `dfms up` serves an upload.

The build runs on a clean copy of the source (what git would commit, or what a Docker
build context holds), never in the work tree: a `build/` directory left by an earlier
build would put stale modules into the wheel and hide a package the discovery forgot.
What the packages must contain is read from that copy too, so that edits made to the
work tree while the test runs cannot make it fail. The wheel is built from what
deploy/Dockerfile's build stage copies (its build context), with the command it runs: a
file the image's build needs and does not copy fails here, not in `docker build`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import dfms
from tests.support.api import Api
from tests.support.cluster import ClusterHandle, make_data_dir, pid_alive

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Folders setup.py keeps out of the wheel wherever they appear under a root.
NOT_PACKAGED = {"__pycache__", "tests", "benchmarks"}
OPENAPI = "api/openapi.yaml"  # dfms/gateway/openapi.yaml links to it
ALERTS = "observability/prometheus/alerts.yml"  # dfms/observability_assets/alerts.yml too
PACKAGED_ALERTS = "dfms/observability_assets/alerts.yml"
MIGRATIONS = "dfms/metadata/migrations"

# Web assets do not exist yet; these stand-ins, added to the copy that is built, prove
# that the package-data rules for them put them into the sdist and the wheel.
PLANTED_ASSETS = {
    "dfms/gateway/static/index.html": b"<!doctype html><title>wheel check</title>\n",
    "dfms/gateway/static/css/site.css": b"body { margin: 0 }\n",
    "dfms/gateway/static/vendor-lib/lib.js": b"export const x = 1;\n",
    "dfms/web/assets/app.js": b"console.log('wheel check');\n",
}
# A warning of the build backend as `build` reports it (`WARNING <message>`) or as Python
# prints it (`SetuptoolsDeprecationWarning: ...`); not distutils' lower-case notes such as
# `warning: build_py: byte-compiling is disabled` (PYTHONDONTWRITEBYTECODE is set).
WARNING_RE = re.compile(r"^WARNING\b.*|\b\w+Warning\b.*", re.MULTILINE)
# Without git: what a work tree holds besides the source (as .gitignore lists it).
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.py[cod]", "*.so",
                                     "*.egg-info", ".dfms", ".pytest_cache", ".ruff_cache",
                                     ".hypothesis", "*.log")


def _not_source(folder: str, names: list[str]) -> set[str]:
    ignored = set(_NOT_SOURCE(folder, names))
    if Path(folder) == REPO:  # build output, only at the top (dfms/build/ could be a package)
        ignored |= {"build", "dist"} & set(names)
    return ignored


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into the repository or its venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DFMS_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not Path(p).resolve().is_relative_to(REPO))
    return env


def run(argv: list[str | Path], cwd: Path, timeout: float,
        env: dict[str, str] | None = None) -> str:
    """Run a command, fail the test with its output if it fails; returns the output."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env or clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv} exited with {proc.returncode}:\n{proc.stdout[-8000:]}"
    return proc.stdout


def copy_source(dest: Path) -> None:
    """The source as a clean clone (or a Docker build context) has it."""
    git = shutil.which("git")
    if git and (REPO / ".git").exists():
        out = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
        for name in filter(None, out.decode().split("\0")):
            src = REPO / name
            if not os.path.lexists(src):
                continue  # deleted in the work tree, not yet committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    else:
        shutil.copytree(REPO, dest, symlinks=True, ignore=_not_source, dirs_exist_ok=True)
    for name, content in PLANTED_ASSETS.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(content)


def dockerfile_build_copies(dockerfile: str) -> list[str]:
    """The paths the Dockerfile's build stage COPYs from the build context."""
    paths: list[str] = []
    stages = 0
    for line in dockerfile.replace("\\\n", " ").splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            stages += 1
        if stages == 1 and words and words[0].upper() == "COPY":
            args = [w for w in words[1:] if not w.startswith("--")]
            *sources, dest = args
            # This copy keeps each path where it is, as the Dockerfile does today.
            assert dest == "./" or sources == [dest], f"COPY to another path: {line}"
            paths += [s.rstrip("/") for s in sources]
    return paths


def docker_context(src: Path, dest: Path) -> None:
    """What the image's build stage sees: only the paths deploy/Dockerfile copies."""
    for rel in dockerfile_build_copies((src / "deploy" / "Dockerfile").read_text()):
        origin, target = src / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, symlinks=True)
        else:
            shutil.copy2(origin, target, follow_symlinks=False)


def source_modules(src: Path) -> set[str]:
    """Every .py file below a package root, as its path inside the wheel."""
    # The package roots: `dfms` and the top-level folders mapped to `dfms.<name>`.
    package_dir = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    found = set()
    for package, folder in package_dir.items():
        root = src / folder
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if not NOT_PACKAGED & set(rel.parts[:-1]):
                found.add(f"{package.replace('.', '/')}/{rel.as_posix()}")
    return found


def sql_names(src: Path) -> set[str]:
    return {p.name for p in (src / MIGRATIONS).glob("*.sql")}


@dataclasses.dataclass
class Built:
    src: Path  # the copy of the source that was built
    sdist: Path
    wheel: Path  # `python -m build --wheel` on the Dockerfile's build context, as it builds
    wheel_from_sdist: Path  # `python -m build`: the sdist, then a wheel from the sdist


@dataclasses.dataclass
class Installed:
    venv: Path
    python: Path
    dfms: Path
    workdir: Path
    version: str


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: that is mode 0700, and as root PostgreSQL runs as
    # `dfms-postgres`, which must reach its binaries in the venv and its data dir.
    path = make_data_dir("dfms-wheel-")
    assert not path.resolve().is_relative_to(REPO)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def built(workdir: Path) -> Built:
    assert importlib.util.find_spec("build") is not None, \
        "the `build` package is missing from this venv: run `make install` (dev extra)"
    src = workdir / "src"
    src.mkdir()
    copy_source(src)
    context = workdir / "docker-context"  # the image builds its wheel from this
    docker_context(src, context)
    outputs = []
    for args, tree, out in ((["--wheel"], context, workdir / "dist-tree"),
                            ([], src, workdir / "dist-sdist")):
        log = run([sys.executable, "-m", "build", *args, "--outdir", out, tree], cwd=workdir,
                  timeout=600)
        warnings = sorted({m.group(0).strip() for m in WARNING_RE.finditer(log)})
        assert not warnings, f"python -m build {' '.join(args)} warned {warnings}:\n{log[-8000:]}"
        outputs.append(out)
    (wheel,) = outputs[0].glob("*.whl")
    (sdist,) = outputs[1].glob("*.tar.gz")
    (wheel_from_sdist,) = outputs[1].glob("*.whl")
    return Built(src, sdist, wheel, wheel_from_sdist)


@pytest.fixture(scope="module")
def installed(built: Built, workdir: Path) -> Installed:
    venv = workdir / "venv"
    cwd = workdir / "cwd"  # an empty directory: nothing importable next to the commands
    cwd.mkdir()
    run([sys.executable, "-m", "venv", venv], cwd=cwd, timeout=300)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"{built.wheel}[stack]"], cwd=cwd, timeout=1200)
    version = run([python, "-I", "-c", "import importlib.metadata as m; print(m.version('dfms'))"],
                  cwd=cwd, timeout=60).strip()
    return Installed(venv, python, venv / "bin" / "dfms", cwd, version)


def sdist_members(sdist: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
    top = members[0].name.split("/")[0]
    return {m.name.removeprefix(f"{top}/"): m for m in members}


def sdist_read(sdist: Path, name: str) -> bytes:
    with tarfile.open(sdist) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        member = tar.getmember(f"{top}/{name}")
        assert not member.issym(), f"{name} is a symlink in the sdist"
        handle = tar.extractfile(member)
        assert handle is not None, f"{name} is not a file in the sdist"
        return handle.read()


def test_sdist_carries_the_c_source_migrations_and_the_openapi_document(built: Built) -> None:
    members = sdist_members(built.sdist)
    src = built.src
    assert sdist_read(built.sdist, "chunker/_rabin.c") == (src / "chunker/_rabin.c").read_bytes()
    shipped_sql = {Path(n).name for n in members if n.startswith("dfms/metadata/migrations/")
                   and n.endswith(".sql")}
    assert shipped_sql == sql_names(src)
    # The symlink in the source tree arrives as the file it points to.
    assert (src / "dfms/gateway/openapi.yaml").is_symlink()
    assert sdist_read(built.sdist, "dfms/gateway/openapi.yaml") == (src / OPENAPI).read_bytes()
    assert sdist_read(built.sdist, PACKAGED_ALERTS) == (src / ALERTS).read_bytes()
    assert "dfms/proto/chunk.proto" in members
    for name in PLANTED_ASSETS:
        assert name in members, f"{name} (a web asset) is missing from the sdist"
    for name in members:
        assert "__pycache__" not in name and not name.endswith((".pyc", ".so")), name


@pytest.mark.parametrize("which", ["wheel", "wheel_from_sdist"])
def test_wheel_carries_every_module_and_the_package_data(built: Built, which: str) -> None:
    wheel, src = getattr(built, which), built.src
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        read = zf.read
        # Every module of the repository, in every package root: none can be forgotten.
        missing = sorted(source_modules(src) - names)
        assert not missing, f"modules missing from {wheel.name}: {missing}"
        assert {Path(n).name for n in names
                if n.startswith("dfms/metadata/migrations/") and n.endswith(".sql")} \
            == sql_names(src)
        assert read("dfms/gateway/openapi.yaml") == (src / OPENAPI).read_bytes()
        assert read(PACKAGED_ALERTS) == (src / ALERTS).read_bytes()
        assert read("dfms/proto/chunk.proto") == (src / "dfms/proto/chunk.proto").read_bytes()
        for name, content in PLANTED_ASSETS.items():
            assert read(name) == content, name
    assert [n for n in names if re.fullmatch(r"dfms/chunker/_rabin\..*(\.so|\.pyd)", n)], \
        "the Rabin C extension is not in the wheel"
    strays = sorted(n for n in names if "__pycache__" in n or n.endswith((".pyc", ".c"))
                    or (n.split("/")[0] != "dfms" and not n.startswith("dfms-")))
    assert not strays, f"files that do not belong in {wheel.name}: {strays}"
    assert wheel.name.startswith(f"dfms-{dfms.__version__}-")


def test_wheel_from_the_tree_and_from_the_sdist_hold_the_same_files(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as a, zipfile.ZipFile(built.wheel_from_sdist) as b:
        only_tree = sorted(set(a.namelist()) - set(b.namelist()))
        only_sdist = sorted(set(b.namelist()) - set(a.namelist()))
    assert (only_tree, only_sdist) == ([], []), "the sdist lacks files the wheel needs"


IMPORT_ALL = textwrap.dedent("""
    import importlib, json, pkgutil, sysconfig, traceback
    import dfms
    result = {"site": sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}),
              "modules": {}, "errors": {}}
    def failed(name):
        result["errors"][name] = traceback.format_exc()
    for info in pkgutil.walk_packages(dfms.__path__, "dfms.", onerror=failed):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # runs the CLI
        try:
            module = importlib.import_module(info.name)
        except Exception:
            failed(info.name)
            continue
        result["modules"][info.name] = module.__file__
    result["modules"]["dfms"] = dfms.__file__
    print(json.dumps(result))
""")


def test_installed_wheel_imports_every_module_from_site_packages(
        installed: Installed, built: Built) -> None:
    out = run([installed.python, "-I", "-c", IMPORT_ALL], cwd=installed.workdir, timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == {}, "\n".join(result["errors"].values())
    site = [Path(p) for p in result["site"]]
    assert all(p.is_relative_to(installed.venv) for p in site), site
    outside = {name: path for name, path in result["modules"].items()
               if not any(Path(path).is_relative_to(p) for p in site)}
    assert outside == {}, "modules imported from outside the venv's site-packages"
    # Every module the wheel carries was found and imported.
    with zipfile.ZipFile(built.wheel) as zf:
        expected = set()
        for name in zf.namelist():
            if (name.startswith("dfms/") and name.endswith(".py")) or ".cpython-" in name:
                parts = name.split(".")[0].split("/")
                if parts[-1] == "__init__":
                    parts.pop()
                if parts[-1] != "__main__":
                    expected.add(".".join(parts))
    assert sorted(expected - set(result["modules"])) == []


def test_installed_package_finds_its_alert_rules(installed: Installed, built: Built) -> None:
    """dfms up --observability loads these: no observability/ folder beside site-packages."""
    code = "from dfms.observability_assets import alert_rules_path as p; print(p().resolve())"
    path = Path(run([installed.python, "-I", "-c", code], cwd=installed.workdir,
                    timeout=60).strip().splitlines()[-1])
    assert path.is_relative_to(installed.venv), path
    assert path.read_bytes() == (built.src / ALERTS).read_bytes()


def test_installed_cli_answers_and_reports_its_version(installed: Installed) -> None:
    help_text = run([installed.dfms, "--help"], cwd=installed.workdir, timeout=60)
    assert help_text.startswith("usage: dfms")
    assert " up " in help_text or "{up," in help_text
    version = run([installed.python, "-I", "-c", "import dfms; print(dfms.__version__)"],
                  cwd=installed.workdir, timeout=60).strip()
    assert version == installed.version == dfms.__version__
    out = run([installed.dfms, "--version"], cwd=installed.workdir, timeout=60)
    assert out.strip() == f"dfms {installed.version}"


def command_line(pid: int) -> list[str]:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")


def processes_mentioning(*paths: Path) -> dict[int, str]:
    """Live processes whose command line names one of these paths (the venv, the data dir)."""
    found = {}
    needles = [str(p) for p in paths]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = " ".join(command_line(int(entry.name)))
        except (OSError, UnicodeDecodeError):
            continue
        if any(n in cmdline for n in needles) and pid_alive(int(entry.name)):
            found[int(entry.name)] = cmdline
    return found


async def upload_and_download(gateway_url: str, openapi: bytes) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        deadline = time.monotonic() + 60
        while True:
            async with session.get(f"{gateway_url}/ready") as resp:
                ready = resp.status, await resp.text()
            if ready[0] == 200:
                break
            assert time.monotonic() < deadline, f"/ready never answered 200: {ready}"
            await asyncio.sleep(0.5)

        api = Api(gateway_url, session)
        status, spec, _ = await api.request("GET", "/openapi.yaml")
        assert status == 200
        assert spec == openapi  # package data, read from site-packages

        registered = await api.register()
        status, body, _ = await api.request("POST", "/auth/login", json={
            "email": registered.email, "password": registered.password})
        assert status == 200, body
        user = dataclasses.replace(registered, access_token=body["tokens"]["access_token"])

        data = os.urandom(700_000)
        status, body = await api.upload(user, "wheel-check.bin", data,
                                        **{"X-Content-SHA256": hashlib.sha256(data).hexdigest()})
        assert status == 201, body
        assert body["size"] == len(data)
        status, got, _ = await api.request("GET", f"/files/{body['id']}/download", user)
        assert status == 200
        assert got == data


async def test_dfms_up_from_the_wheel_serves_an_upload_and_stops_cleanly(
        installed: Installed, built: Built, workdir: Path) -> None:
    run_dir = workdir / "up-cwd"  # `dfms up` started in an empty directory
    run_dir.mkdir()
    handle = ClusterHandle(data_dir=workdir / "data")
    handle.data_dir.mkdir()
    try:
        # One node: `dfms up` lowers the replica count and write quorum to fit.
        await asyncio.to_thread(handle.start, "--nodes", "1", dfms=[str(installed.dfms)],
                                cwd=run_dir, env=clean_env())
        assert handle.config.replication.replicas_n == 1
        assert handle.proc is not None
        # Every process of the stack runs from the venv, none from the repository.
        services = [s["pid"] for s in handle.info["services"].values() if s.get("pid")]
        assert services
        for pid in services:
            program = command_line(pid)[0]
            assert Path(program).is_relative_to(installed.venv), (pid, program)
        openapi = await asyncio.to_thread((built.src / OPENAPI).read_bytes)
        await upload_and_download(handle.gateway_url, openapi)

        pids = [*handle.pids(), handle.proc.pid]
        started = time.monotonic()
        code = await asyncio.to_thread(handle.stop)  # SIGINT, then waits up to 60 s
        assert code == 0, f"dfms up exited with {code}:\n{handle.log_text()[-5000:]}"
        assert time.monotonic() - started < 60
        assert [p for p in pids if pid_alive(p)] == [], "processes left behind"
        assert processes_mentioning(installed.venv, handle.data_dir) == {}
        assert handle.read_info()["state"] == "stopped"
    finally:
        await asyncio.to_thread(handle.stop)  # a no-op once stopped
