"""`dfms up --observability`: the generated Prometheus config, checked by promtool, and
the refusal when Prometheus is missing. The cluster with a real Prometheus is
tests/integration/test_observability.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dfms.cli import build_parser
from dfms.errors import StackError
from dfms.localstack import observability
from dfms.localstack.cluster import SERVICES, ClusterInfo, LocalCluster, UpOptions

TEMPLATE = observability.ALERT_RULES.parent / "prometheus.yml"
TARGETS = {svc.name: f"127.0.0.1:{9100 + i}" for i, svc in enumerate(SERVICES)}


def test_jobs_are_named_as_in_the_production_template() -> None:
    """Dashboards and rules select jobs by name: both configs must use the same ones."""
    template = yaml.safe_load(TEMPLATE.read_text())
    production = {job["job_name"] for job in template["scrape_configs"]}
    local = {job["job_name"] for job in observability.scrape_config(
        TARGETS, Path("/r"), "127.0.0.1:9090")["scrape_configs"]}
    assert local == {observability.job_name(svc.name) for svc in SERVICES} | {"prometheus"}
    assert local <= production


def test_generated_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install --no-install-recommends prometheus")
    config, rules_dir = observability.write_config(tmp_path, TARGETS, 9090)
    assert (rules_dir / "alerts.yml").read_text() == observability.ALERT_RULES.read_text()
    doc = yaml.safe_load(config.read_text())
    assert doc["rule_files"] == [str(rules_dir / "*.yml")]
    assert doc["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:9100"]}]
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "alerts.yml" in result.stdout  # rules checked too


def test_a_restart_rewrites_the_rules_and_keeps_other_rule_files(tmp_path: Path) -> None:
    _, rules_dir = observability.write_config(tmp_path, TARGETS, 9090)
    (rules_dir / "alerts.yml").write_text("stale")
    (rules_dir / "mine.yml").write_text("groups: []\n")
    observability.write_config(tmp_path, TARGETS, 9091)
    assert (rules_dir / "alerts.yml").read_text() == observability.ALERT_RULES.read_text()
    assert (rules_dir / "mine.yml").exists()


def test_the_spec_listens_on_loopback_and_allows_reload(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    spec = observability.prometheus_spec(tmp_path, tmp_path / "prometheus.yml", 9999)
    assert spec.name == "prometheus" and spec.restart
    assert spec.argv[0] == "/usr/bin/prometheus"
    assert "--web.listen-address=127.0.0.1:9999" in spec.argv
    assert "--web.enable-lifecycle" in spec.argv
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in spec.argv


async def test_up_refuses_before_starting_anything_without_prometheus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    cluster = LocalCluster(UpOptions(data_dir=tmp_path / "dd", observability=True))
    with pytest.raises(StackError, match="apt-get install --no-install-recommends prometheus"):
        await cluster.start()
    assert cluster.supervisor.processes == []
    assert not (tmp_path / "dd").exists()


def test_the_flag_is_off_by_default() -> None:
    assert build_parser().parse_args(["up"]).observability is False
    assert build_parser().parse_args(["up", "--observability"]).observability is True
    assert UpOptions(data_dir=Path("d")).observability is False


def test_cluster_json_and_endpoints_name_prometheus_only_when_started(tmp_path: Path) -> None:
    info = ClusterInfo(tmp_path, tmp_path / "dfms.yaml")
    assert "prometheus" not in info.to_json("ready", 1)
    info.prometheus = {"url": "http://127.0.0.1:9090", "pid": 5}
    assert info.to_json("ready", 1)["prometheus"]["url"] == "http://127.0.0.1:9090"
    cluster = LocalCluster(UpOptions(data_dir=tmp_path))
    cluster.info = info
    info.postgres, info.redis = {"dsn": "postgresql://u:p@h/d"}, {"url": "redis://:p@h"}
    info.kafka = {"bootstrap_servers": "h:1", "storage": "s3://t/", "store_endpoint": "e"}
    assert "prometheus           http://127.0.0.1:9090" in cluster.endpoints_text()
