"""`dfms up --observability`: the generated Prometheus config, checked by promtool, the
refusal when Prometheus is missing, and how the optional trace UI (Phoenix) is found and
wired. The cluster with a real Prometheus and Phoenix is
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

TEMPLATE = Path(__file__).resolve().parents[2] / "observability" / "prometheus" / "prometheus.yml"
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
    assert "--enable-feature=exemplar-storage" in spec.argv
    assert "--web.enable-remote-write-receiver" in spec.argv
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


def test_phoenix_is_found_by_variable_then_path_and_is_optional(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(observability.PHOENIX_ENV, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert observability.phoenix_binary() is None
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert observability.phoenix_binary() == Path("/opt/bin/phoenix")
    exe = tmp_path / "phoenix"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv(observability.PHOENIX_ENV, str(exe))
    assert observability.phoenix_binary() == exe
    monkeypatch.setenv(observability.PHOENIX_ENV, str(tmp_path / "missing"))
    with pytest.raises(StackError, match=r"DFMS_PHOENIX=.*not an executable"):
        observability.phoenix_binary()


def test_phoenix_listens_on_loopback_and_sends_nothing_out(tmp_path: Path) -> None:
    spec = observability.phoenix_spec(Path("/opt/bin/phoenix"), tmp_path / "px", 7001, 7002)
    assert spec.argv == ["/opt/bin/phoenix", "serve"] and spec.name == "trace-ui"
    env = spec.env
    assert (env["PHOENIX_HOST"], env["PHOENIX_PORT"], env["PHOENIX_GRPC_PORT"]) == (
        "127.0.0.1", "7001", "7002")
    assert env["PHOENIX_WORKING_DIR"] == str(tmp_path / "px") and (tmp_path / "px").is_dir()
    assert env["PHOENIX_TELEMETRY_ENABLED"] == "false"
    assert env["PHOENIX_DISABLE_AGENT_ASSISTANT"] == "true"


def test_services_export_to_the_trace_ui_unless_the_config_names_an_endpoint(
        tmp_path: Path) -> None:
    cluster = LocalCluster(UpOptions(data_dir=tmp_path))
    assert cluster._telemetry_overrides() == {}  # no trace UI: tracing stays as configured
    cluster.info.trace_ui = observability.trace_ui_info("http://127.0.0.1:7001", 7001, 7002,
                                                        9)
    assert cluster._telemetry_overrides() == {
        "endpoint": "http://127.0.0.1:7001", "protocol": "http/protobuf", "sampler_arg": 1.0}
    own = tmp_path / "own.yaml"
    own.write_text("telemetry:\n  endpoint: http://127.0.0.1:4318\n")
    cluster = LocalCluster(UpOptions(data_dir=tmp_path, config_path=own))
    cluster.info.trace_ui = {"otlp_endpoint": "http://127.0.0.1:7001"}
    assert cluster._telemetry_overrides() == {}


def test_cluster_json_and_endpoints_name_the_trace_ui_only_when_started(tmp_path: Path) -> None:
    info = ClusterInfo(tmp_path, tmp_path / "dfms.yaml")
    assert "trace_ui" not in info.to_json("ready", 1)
    info.trace_ui = observability.trace_ui_info("http://127.0.0.1:7001", 7001, 7002, 9)
    doc = info.to_json("ready", 1)["trace_ui"]
    assert doc["spans_api"] == "http://127.0.0.1:7001/v1/projects/default/spans"
    assert doc["otlp_traces_url"] == "http://127.0.0.1:7001/v1/traces"
    cluster = LocalCluster(UpOptions(data_dir=tmp_path))
    cluster.info = info
    info.postgres, info.redis = {"dsn": "postgresql://u:p@h/d"}, {"url": "redis://:p@h"}
    info.kafka = {"bootstrap_servers": "h:1", "storage": "s3://t/", "store_endpoint": "e"}
    assert "traces               http://127.0.0.1:7001  (Phoenix" in cluster.endpoints_text()
