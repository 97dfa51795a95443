"""Drive a real local cluster (`dfms up` as a child process) from tests and benchmarks,
or attach to one that is already running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from dfms.config import Config, load_config
from dfms.localstack.cluster import read_cluster_file

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


def make_data_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the PostgreSQL system user must be able to reach its data dir
    return path


@dataclass
class ClusterHandle:
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return str(self.info["gateway_url"])

    @property
    def postgres_dsn(self) -> str:
        return str(self.info["postgres"]["dsn"])

    @property
    def redis_url(self) -> str:
        return str(self.info["redis"]["url"])

    @property
    def kafka_bootstrap(self) -> str:
        return str(self.info["kafka"]["bootstrap_servers"])

    @property
    def s3_nodes(self) -> list[dict[str, Any]]:
        return list(self.info["s3_nodes"])

    @property
    def config(self) -> Config:
        return load_config(self.data_dir / "dfms.yaml", env={})

    @property
    def chunk_target(self) -> str:
        return str(self.info["services"]["chunk-service"]["grpc_target"])

    async def control(self, action: str, name: str) -> dict[str, Any]:
        """Stop, kill or start one process of the running `dfms up`."""
        ctl = self.info["control"]
        async with aiohttp.ClientSession(headers={"X-DFMS-Control-Token": ctl["token"]}) as s, \
                s.post(f"{ctl['url']}/processes/{name}/{action}") as resp:
            body = dict(await resp.json())
            if resp.status != 200:
                raise RuntimeError(f"control {action} {name}: {body}")
            return body

    def pids(self) -> list[int]:
        info = self.info
        pids = [info["postgres"]["pid"], info["redis"]["pid"], info["kafka"]["pid"],
                info["kafka"].get("store_pid")]
        pids += [n["pid"] for n in info["s3_nodes"]]
        pids += [s["pid"] for s in info["services"].values()]
        pids.append(info.get("prometheus", {}).get("pid"))  # with --observability
        pids.append(info.get("trace_ui", {}).get("pid"))
        return [int(p) for p in pids if p]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def read_info(self) -> dict[str, Any]:
        return read_cluster_file(self.data_dir)

    def start(self, *extra: str, config: Path | None = None,
              dfms: Sequence[str] = (sys.executable, "-m", "dfms"), cwd: Path | None = None,
              env: Mapping[str, str] | None = None) -> None:
        """Run `dfms up` in the background and wait until it reports ready.

        ``dfms`` is the command (another environment's console script, say); ``env``
        defaults to ours without any ``DFMS_*`` variable."""
        cluster_file = self.data_dir / "cluster.json"
        cluster_file.unlink(missing_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-up.log"
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*dfms, "--data-dir", str(self.data_dir),
                 *(["--config", str(config)] if config else []), "up",
                 "--gateway-port", "0", *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                env=dict(env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dfms up exited with {self.proc.returncode}:\n"
                                   + self.log_text()[-5000:])
            info = self.read_info()
            if info.get("state") == "ready":
                self.info = info
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("dfms up was not ready in time:\n" + self.log_text()[-5000:])

    def stop(self) -> int:
        """Ctrl-C `dfms up` and wait for it; returns its exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def attach(spec: str) -> ClusterHandle:
    """A running cluster named by DFMS_TEST_CLUSTER: its data dir or its cluster.json."""
    path = Path(spec)
    data_dir = path.parent if path.name == "cluster.json" else path
    handle = ClusterHandle(data_dir=data_dir)
    handle.info = handle.read_info()
    if handle.info.get("state") != "ready":
        raise RuntimeError(f"DFMS_TEST_CLUSTER={spec}: no ready cluster.json there (state "
                           f"{handle.info.get('state')!r})")
    return handle


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")
