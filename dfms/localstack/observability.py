"""`dfms up --observability`: a local Prometheus scraping every DFMS service.

The scrape config is generated at every start with the ports the services got
(``<data dir>/prometheus/prometheus.yml``); the alert rules are copied from
``observability/prometheus/alerts.yml`` into ``<data dir>/prometheus/rules/``, so a
test (or an operator trying a rule) can put its own file beside them and reload
(``POST /-/reload``). ``observability/prometheus/prometheus.yml`` stays the production
template; job names match it, so the dashboards and rules work on both.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from dfms.errors import StackError
from dfms.localstack.ports import LOOPBACK
from dfms.localstack.supervisor import ProcessSpec

# The repository's rules; a DFMS installed from a wheel has no observability/ folder.
ALERT_RULES = Path(__file__).resolve().parents[2] / "observability" / "prometheus" / "alerts.yml"
PROMETHEUS_DIR = "prometheus"
RULES_DIR = "rules"
# Shorter than production's 15 s: on a laptop a change should show within seconds.
SCRAPE_INTERVAL = "5s"
RETENTION = "7d"
MISSING = ("--observability needs Prometheus, and `prometheus` is not on PATH. On Debian "
           "or Ubuntu: apt-get install --no-install-recommends prometheus (the package "
           "also has promtool). Or start without --observability")


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
              "--log.level=warn"])


async def prometheus_ready(url: str) -> None:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"{url}/-/ready") as resp:
        if resp.status != 200:
            raise StackError(f"{url}/-/ready answered {resp.status}")
