"""The k6 smoke scenario (benchmarks/k6/smoke.js) against the session's cluster: every
endpoint family under a few concurrent users, with content verified. Any breached
threshold or failed check fails it (k6 exits non-zero), and its JSON summary must show
checks that passed, none that failed, and requests of every endpoint type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "k6" / "smoke.js"
K6 = Path(sys.executable).parent / "k6"
# Listed here rather than read from the script, so that a script that stops
# exercising an endpoint fails this test.
ENDPOINT_TAGS = (
    "auth_login", "auth_refresh", "upload_small", "upload_big", "upload_version",
    "download", "download_range", "list", "search", "versions", "version_download",
    "trash", "trash_restore", "share_create", "share_download", "mp_init", "mp_part",
    "mp_complete",
)
DURATION = "30s"
TIMEOUT_S = 150  # setup and teardown included; the run itself is DURATION


def test_smoke_passes_every_threshold_and_check(cluster: ClusterHandle, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [str(K6), "run", "--quiet", "--no-color", "--no-usage-report",
         "-e", f"BASE_URL={cluster.gateway_url}", "-e", f"DURATION={DURATION}",
         "-e", f"SUMMARY={summary}", str(SCRIPT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    out = proc.stdout[-6000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, f"k6 exited with {proc.returncode}:\n{out}"
    metrics = json.loads(summary.read_text())["metrics"]
    checks = metrics["checks"]["values"]
    assert checks["passes"] > 0 and checks["fails"] == 0, out
    assert metrics["http_req_failed"]["values"]["passes"] == 0, out  # passes = failed requests
    ran = {tag: metrics.get(f"http_reqs{{name:{tag}}}", {}).get("values", {}).get("count", 0)
           for tag in ENDPOINT_TAGS}
    assert all(ran.values()), f"endpoint types with no request: {ran}\n{out}"
    for name, metric in metrics.items():
        for expr, result in metric.get("thresholds", {}).items():
            assert result["ok"], f"threshold {name}: {expr} breached\n{out}"


def test_small_uploads_counts_only_stored_files(cluster: ClusterHandle, tmp_path: Path) -> None:
    """benchmarks/k6/small_uploads.js, the capacity report's 4 KiB figure, briefly: every
    upload it counts was answered 201 with the bytes' SHA-256, and none failed."""
    summary = tmp_path / "summary.json"
    proc = subprocess.run(
        [str(K6), "run", "--quiet", "--no-color", "--no-usage-report",
         "-e", f"BASE_URL={cluster.gateway_url}", "-e", "VUS=2", "-e", "DURATION=5s",
         "-e", f"SUMMARY={summary}", str(SCRIPT.with_name("small_uploads.js"))],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    out = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"k6 exited with {proc.returncode}:\n{out}"
    metrics = json.loads(summary.read_text())["metrics"]
    uploads = metrics["http_reqs{name:upload_small}"]["values"]["count"]
    assert metrics["small_uploads"]["values"]["count"] == uploads > 10, out
    assert metrics["checks"]["values"]["fails"] == 0, out
