"""`dfms up --observability`: a local Prometheus scraping every DFMS service.

The scrape config is generated at every start with the ports the services got
(``<data dir>/prometheus/prometheus.yml``); the alert rules are copied from
``observability/prometheus/alerts.yml`` (packaged in ``dfms/observability_assets``) into
``<data dir>/prometheus/rules/``, so a test (or an operator trying a rule) can put its own
file beside them and reload (``POST /-/reload``). ``observability/prometheus/prometheus.yml``
stays the production template; job names match it, so the dashboards and rules work on both.

It also starts Arize Phoenix, an OTLP trace backend with a web UI, when one is installed
(``make trace-ui``; it lives in a venv of its own because it pins a newer OpenTelemetry SDK
than DFMS does), and points every service's ``telemetry`` at it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dfms.errors import StackError
from dfms.localstack.ports import LOOPBACK
from dfms.localstack.supervisor import ProcessSpec
from dfms.observability_assets import alert_rules_path

# observability/prometheus/alerts.yml, as packaged: a wheel install has no observability/.
ALERT_RULES = alert_rules_path()
PROMETHEUS_DIR = "prometheus"
RULES_DIR = "rules"
# Shorter than production's 15 s: on a laptop a change should show within seconds.
SCRAPE_INTERVAL = "5s"
RETENTION = "7d"
MISSING = ("--observability needs Prometheus, and `prometheus` is not on PATH. On Debian "
           "or Ubuntu: apt-get install --no-install-recommends prometheus (the package "
           "also has promtool). Or start without --observability")


TRACE_UI_DIR = "phoenix"
PHOENIX_ENV = "DFMS_PHOENIX"  # the `phoenix` executable, when it is not on PATH
PHOENIX_HINT = ("no trace UI: Arize Phoenix is not installed (`make trace-ui` puts it in "
                ".venv-trace-ui; or set DFMS_PHOENIX to a `phoenix` executable). Traces "
                "stay off; Prometheus runs")


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        raise StackError(MISSING)
    return Path(found)


def job_name(service: str) -> str:
    """The scrape job of a DFMS service, as in the production prometheus.yml."""
    return f"dfms-{service}"


def scrape_config(targets: Mapping[str, str], rules_dir: Path, own: str) -> dict[str, Any]:
    """A Prometheus config: one job per DFMS service (``targets``: name -> host:port of
    its /metrics), Prometheus itself at ``own``, every rule file in ``rules_dir``."""
    jobs = [{"job_name": job_name(name), "static_configs": [{"targets": [where]}]}
            for name, where in targets.items()]
    jobs.append({"job_name": "prometheus", "static_configs": [{"targets": [own]}]})
    return {"global": {"scrape_interval": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(rules_dir / "*.yml")],
            "scrape_configs": jobs}


def write_config(base: Path, targets: Mapping[str, str], port: int) -> tuple[Path, Path]:
    """The scrape config and the rules directory under ``base`` (created); returns both
    paths. The copied rules replace the ones of an earlier start; other files stay."""
    rules_dir = base / RULES_DIR
    rules_dir.mkdir(parents=True, exist_ok=True)
    if ALERT_RULES.exists():
        shutil.copyfile(ALERT_RULES, rules_dir / ALERT_RULES.name)
    config = base / "prometheus.yml"
    doc = scrape_config(targets, rules_dir, f"{LOOPBACK}:{port}")
    config.write_text("# Written by `dfms up --observability` at every start: do not edit.\n"
                      + yaml.safe_dump(doc, sort_keys=False))
    return config, rules_dir


def prometheus_spec(base: Path, config: Path, port: int) -> ProcessSpec:
    return ProcessSpec(
        name="prometheus",
        argv=[str(prometheus_binary()), f"--config.file={config}",
              f"--storage.tsdb.path={base / 'data'}",
              f"--storage.tsdb.retention.time={RETENTION}",
              f"--web.listen-address={LOOPBACK}:{port}",
              "--web.enable-lifecycle",  # POST /-/reload picks up new rule files
              "--enable-feature=exemplar-storage",  # latency buckets lead to traces
              # k6 load runs stream their metrics here (docs/load.md), beside the cluster's
              "--web.enable-remote-write-receiver",
              "--log.level=warn"])


def phoenix_binary() -> Path | None:
    """The `phoenix` executable: ``$DFMS_PHOENIX`` (which must exist), else PATH, else
    None (the trace UI is optional)."""
    explicit = os.environ.get(PHOENIX_ENV, "").strip()
    if explicit:
        path = Path(explicit)
        if not os.access(path, os.X_OK):
            raise StackError(f"{PHOENIX_ENV}={explicit} is not an executable; unset it or "
                             "run `make trace-ui`")
        return path
    found = shutil.which("phoenix")
    return Path(found) if found else None


def phoenix_spec(binary: Path, base: Path, port: int, grpc_port: int) -> ProcessSpec:
    """Phoenix with its SQLite store under ``base``, its UI and OTLP/HTTP receiver on
    ``port``. Its OTLP/gRPC receiver cannot be kept off and binds every interface, so it
    gets a port of ours; DFMS exports over HTTP, on loopback."""
    base.mkdir(parents=True, exist_ok=True)
    return ProcessSpec(
        name="trace-ui", argv=[str(binary), "serve"], cwd=str(base),
        env={"PHOENIX_WORKING_DIR": str(base), "PHOENIX_HOST": LOOPBACK,
             "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc_port),
             # nothing leaves the machine: no usage reports, no assistant calling out
             "PHOENIX_TELEMETRY_ENABLED": "false", "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
             "PHOENIX_LOGGING_LEVEL": "warning", "PHOENIX_DB_LOGGING_LEVEL": "warning",
             "PHOENIX_LOG_MIGRATIONS": "false"})


def trace_ui_info(url: str, port: int, grpc_port: int, pid: int | None) -> dict[str, Any]:
    """The cluster.json entry: where to look at traces and where they are sent."""
    return {"url": url, "port": port, "pid": pid, "otlp_endpoint": url,
            "otlp_traces_url": f"{url}/v1/traces", "otlp_grpc_port": grpc_port,
            "spans_api": f"{url}/v1/projects/default/spans"}
