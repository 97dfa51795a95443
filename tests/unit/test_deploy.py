"""deploy/ and observability/, checked without Docker (there is none on these machines).

The compose file is parsed the way Compose reads it (YAML with merge keys, then
``${VAR}`` interpolation from deploy/.env) and checked against the Compose
specification's JSON schema (``compose/config/compose_spec.json`` of the
docker-compose 1.29.2 wheel, which ``make install`` puts in ``.venv/share``), and
against the code: every DFMS container runs a ``dfms`` command that parses with
``dfms.cli.build_parser()``, every ``DFMS_*`` variable is a config key and the
resulting config loads, every mounted file exists, ``depends_on`` is satisfiable, host
ports do not clash, images are pinned, every ``${VAR}`` is in deploy/.env.example,
health checks, Prometheus targets and the proxy's upstreams use the ports the services
really listen on, the gateways trust the proxy's network for client addresses, the
registered ring nodes are the MinIO services, the Kafka topics get a replication the
brokers can give, and every metric the alert rules and the dashboard use is one the
code exports.

Each rule is a function returning a list of problems: the real files must have none,
and each rule is shown to catch a mutated copy (the ``MUTATIONS`` table).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from functools import cache
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
import yaml

from dfms import cli
from dfms.config import ENV_CONFIG_PATH, ENV_PREFIX, Config, load_config
from dfms.errors import ConfigError
from dfms.gateway.client_address import parse_networks
from dfms.localstack.cluster import SERVICES
from tests.support.source import parse_source

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
ENV_EXAMPLE = DEPLOY / ".env.example"
OBS = REPO / "observability"
PROMETHEUS_FILE = OBS / "prometheus" / "prometheus.yml"
ALERTS_FILE = OBS / "prometheus" / "alerts.yml"
DASHBOARDS = OBS / "grafana" / "dashboards"
DATASOURCES = OBS / "grafana" / "provisioning" / "datasources"
OTEL_FILE = OBS / "otel-collector.yml"
TRAEFIK_FILE = DEPLOY / "traefik" / "dynamic.yml"
MINIO_POLICY = DEPLOY / "minio" / "dfms-policy.json"
# Put there by `make install` (read out of the docker-compose 1.29.2 wheel, not installed:
# that package pins PyYAML<6).
COMPOSE_SCHEMA = Path(sys.prefix) / "share" / "compose_spec.json"

WHEEL_BUILD = "python -m build --wheel"
HEALTH_URL_VAR = "DFMS_HEALTH_URL"
# DFMS_* variables that are not config keys: the CLI's and the image's health check.
NON_CONFIG_VARS = {ENV_CONFIG_PATH, cli.ENV_DATA_DIR, HEALTH_URL_VAR}
LONG_RUNNING = {svc.command: svc for svc in SERVICES}  # dfms command -> its ServiceDef
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|_KEY$")
OTLP_HTTP_PORT = 4318

Doc = dict[str, Any]
Problems = list[str]


# --- reading the files the way Compose does ---------------------------------------------

class InterpolationError(ValueError):
    pass


_VAR = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<esc>\$))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?$",
                     re.S)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}."""
    def one(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        parts = _BRACED.match(m.group("braced"))
        if parts is None:
            raise InterpolationError(f"invalid interpolation {m.group(0)!r}")
        name, op, arg = parts.group("name", "op", "arg")
        value = env.get(name)
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?") and unset_or_empty:
            raise InterpolationError(f"{name}: {arg}")
        return value or ""

    return _VAR.sub(one, text)


def interpolate_doc(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_doc(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_doc(v, env) for k, v in node.items()}
    return node


def variables_used(node: Any) -> dict[str, set[str | None]]:
    """Every ${VAR} or $VAR in the document: name -> the operators it is used with
    (None, ':-', '-', ':?', '?')."""
    found: dict[str, set[str | None]] = {}
    if isinstance(node, str):
        for m in _VAR.finditer(node):
            if m.group("bare"):
                found.setdefault(m.group("bare"), set()).add(None)
            elif m.group("braced") is not None:
                parts = _BRACED.match(m.group("braced"))
                if parts is not None:
                    found.setdefault(parts.group("name"), set()).add(parts.group("op"))
    elif isinstance(node, (list, dict)):
        for v in node.values() if isinstance(node, dict) else node:
            for name, ops in variables_used(v).items():
                found.setdefault(name, set()).update(ops)
    return found


def parse_env_file(text: str) -> tuple[dict[str, str], set[str]]:
    """(assignments, names that only appear commented out, e.g. `#COMPOSE_PROFILES=...`)."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m is None:
            continue
        if m.group(1):
            commented.add(m.group(2))
        else:
            values[m.group(2)] = m.group(3)
    return values, commented - set(values)


def filled_env(example: dict[str, str]) -> dict[str, str]:
    """deploy/.env as an operator fills it in: every empty value gets a secret."""
    return {k: v or f"s3cret-{k.lower()}-0123456789" for k, v in example.items()}


@cache
def _raw_compose() -> Doc:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@cache
def _env_example() -> str:
    return ENV_EXAMPLE.read_text()


def raw_compose() -> Doc:
    return copy.deepcopy(_raw_compose())


def compose_doc(settings: dict[str, str] | None = None) -> Doc:
    """The compose file as Compose reads it with deploy/.env filled in from .env.example
    (``settings`` replace some of its values)."""
    example, _ = parse_env_file(_env_example())
    return interpolate_doc(raw_compose(), {**filled_env(example), **(settings or {})})


def commented_settings(names: re.Pattern[str]) -> dict[str, str]:
    """Values .env.example offers in comments (e.g. the three-broker Kafka block)."""
    found = re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=(\S*)$", _env_example(), re.MULTILINE)
    return {k: v for k, v in found if names.fullmatch(k)}


def active_profiles(settings: dict[str, str]) -> set[str]:
    return {p for p in settings.get("COMPOSE_PROFILES", "").split(",") if p}


@cache
def _dockerfile() -> str:
    return DOCKERFILE.read_text()


@dataclass
class Instruction:
    stage: int
    op: str
    args: str


def dockerfile_instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(stage, op, " ".join(args.split())))
    return out


def _exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except ValueError:
        return shlex.split(args)
    return [str(v) for v in value]


def image_entrypoint_cmd(text: str) -> tuple[list[str], list[str]]:
    entry: list[str] = []
    cmd: list[str] = []
    for ins in dockerfile_instructions(text):
        if ins.op == "ENTRYPOINT":
            entry = _exec_form(ins.args)
        elif ins.op == "CMD":
            cmd = _exec_form(ins.args)
    return entry, cmd


def image_env(text: str) -> dict[str, str]:
    """ENV of the final stage (the image the services run)."""
    inst = dockerfile_instructions(text)
    last = max(i.stage for i in inst)
    env: dict[str, str] = {}
    for ins in inst:
        if ins.stage == last and ins.op == "ENV":
            for part in shlex.split(ins.args):
                key, _, value = part.partition("=")
                env[key] = value
    return env


# --- facts about a service ----------------------------------------------------------------

def is_dfms_image(doc: Doc, name: str) -> bool:
    svc = doc["services"][name]
    build = svc.get("build")
    if isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("deploy/Dockerfile"):
        return True
    built = {s.get("image") for s in doc["services"].values()
             if isinstance(s.get("build"), dict)
             and str(s["build"].get("dockerfile", "")).endswith("deploy/Dockerfile")}
    return svc.get("image") in built


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def argv(doc: Doc, name: str, dockerfile: str) -> list[str]:
    svc = doc["services"][name]
    entry, cmd = image_entrypoint_cmd(dockerfile)
    if "entrypoint" in svc:
        entry, cmd = as_list(svc["entrypoint"]), []
    if "command" in svc:
        cmd = as_list(svc["command"])
    return entry + cmd


def environment(svc: Doc) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dfms_command(doc: Doc, name: str, dockerfile: str) -> list[str] | None:
    """The arguments after `dfms` when the service runs the dfms CLI, else None."""
    args = argv(doc, name, dockerfile)
    if is_dfms_image(doc, name) and args[:1] == ["dfms"]:
        return args[1:]
    return None


def long_running(doc: Doc, dockerfile: str) -> dict[str, str]:
    """compose service -> dfms service command, for the DFMS services (not the jobs)."""
    out = {}
    for name in doc["services"]:
        args = dfms_command(doc, name, dockerfile)
        if args and args[0] in LONG_RUNNING and len(args) == 1:
            out[name] = args[0]
    return out


def service_port(doc: Doc, name: str, command: str) -> int:
    """The port serving /health and /metrics of a DFMS service, from its own config."""
    cfg = load_config(env=environment(doc["services"][name]))
    section, field = LONG_RUNNING[command].port_key
    return int(getattr(getattr(cfg, section), field))


def bind_mounts(svc: Doc) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount; named volumes are left out."""
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append((vol["source"], vol["target"]))
            continue
        source, _, rest = vol.partition(":")
        if source.startswith((".", "/", "~")):
            out.append((source, rest.partition(":")[0]))
    return out


def named_volumes(svc: Doc) -> list[str]:
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "volume" and vol.get("source"):
                out.append(vol["source"])
            continue
        source, sep, _ = vol.partition(":")
        if sep and not source.startswith((".", "/", "~")):
            out.append(source)
    return out


def host_path(source: str) -> Path:
    return (COMPOSE_FILE.parent / source).resolve()


def mounted_file(svc: Doc, container_path: str) -> Path | None:
    """The repository file a container path of ``svc`` comes from, if it is bind-mounted."""
    for source, target in bind_mounts(svc):
        if container_path == target:
            return host_path(source)
        if container_path.startswith(target.rstrip("/") + "/"):
            return host_path(source) / container_path[len(target.rstrip("/")) + 1:]
    return None


def has_healthcheck(doc: Doc, name: str) -> bool:
    check = doc["services"][name].get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and bool(check.get("test"))
    return is_dfms_image(doc, name) and "HEALTHCHECK" in {
        i.op for i in dockerfile_instructions(_dockerfile())}


def depends(svc: Doc) -> dict[str, str]:
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


def parses(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """None when ``args`` parse (``--help`` counts), else argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code == 0:
            return None
        return err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(exc)
    return None


# --- the rules ------------------------------------------------------------------------------

@cache
def _schema_validator() -> Any:
    if not COMPOSE_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing: `make install` extracts it from the "
                    "docker-compose 1.29.2 wheel")
    return jsonschema_rs.validator_for(json.loads(COMPOSE_SCHEMA.read_text()))


def schema_problems(doc: Doc) -> Problems:
    return [f"schema: {err}" for err in _schema_validator().iter_errors(doc)]


def command_problems(doc: Doc) -> Problems:
    """Every container of the DFMS image runs the dfms CLI, with arguments that parse (no
    scripts beside it: what a deployment needs is a real subcommand)."""
    problems = []
    dockerfile = _dockerfile()
    for name in doc["services"]:
        if not is_dfms_image(doc, name):
            continue
        args = argv(doc, name, dockerfile)
        if args[:1] != ["dfms"]:
            problems.append(f"{name}: runs {args[:2]}, not the dfms CLI")
            continue
        err = parses(cli.build_parser(), args[1:])
        if err:
            problems.append(f"{name}: `dfms {' '.join(args[1:])}`: {err}")
    return problems


def env_key_problems(doc: Doc) -> Problems:
    """Every DFMS_* variable is a config key (DFMS_<SECTION>__<OPTION>) or a known one."""
    defaults = Config()
    sections = {f.name: {g.name for g in fields(getattr(defaults, f.name))}
                for f in fields(defaults)}
    problems = []
    for name, svc in doc["services"].items():
        for var in environment(svc):
            if not var.startswith(ENV_PREFIX) or var in NON_CONFIG_VARS:
                continue
            section, sep, option = var[len(ENV_PREFIX):].lower().partition("__")
            if not sep or section not in sections or option not in sections[section]:
                problems.append(f"{name}: {var} is not a DFMS config key")
    return problems


def config_problems(doc: Doc) -> Problems:
    """The config each DFMS container starts with loads (types, ranges, cross-checks)."""
    problems = []
    for name, svc in doc["services"].items():
        if not is_dfms_image(doc, name):
            continue
        try:
            load_config(env=environment(svc))
        except ConfigError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def mount_problems(doc: Doc) -> Problems:
    problems = []
    declared = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        for source, _target in bind_mounts(svc):
            path = host_path(source)
            if not path.is_relative_to(REPO):
                problems.append(f"{name}: mounts {source}, outside the repository")
            elif not path.exists():
                problems.append(f"{name}: mounts {source}, which does not exist")
        for vol in named_volumes(svc):
            if vol not in declared:
                problems.append(f"{name}: volume {vol} is not declared under `volumes:`")
    return problems


def depends_problems(doc: Doc) -> Problems:
    problems = []
    services = doc["services"]
    for name, svc in services.items():
        for target, condition in depends(svc).items():
            if target not in services:
                problems.append(f"{name}: depends on {target}, which is no service")
                continue
            if condition == "service_healthy" and not has_healthcheck(doc, target):
                problems.append(f"{name}: waits for {target} to be healthy; it has no "
                                "health check")
            if condition == "service_completed_successfully" and (
                    services[target].get("restart", "no") != "no"):
                problems.append(f"{name}: waits for {target} to complete; it is restarted "
                                "forever")
            mine, theirs = set(svc.get("profiles") or []), set(
                services[target].get("profiles") or [])
            if theirs and not theirs & mine:
                problems.append(f"{name}: depends on {target}, which only runs with "
                                f"profile(s) {sorted(theirs)}")

    def visit(name: str, path: tuple[str, ...]) -> None:
        for target in depends(services.get(name, {})):
            if target in path:
                problems.append(f"dependency cycle: {' -> '.join((*path, target))}")
            elif target in services:
                visit(target, (*path, target))

    for name in services:
        visit(name, (name,))
    return sorted(set(problems))


def _published(port: Any) -> tuple[str, int, str] | None:
    if isinstance(port, dict):
        if port.get("published") is None:
            return None
        return (port.get("host_ip", "0.0.0.0"), int(port["published"]),
                port.get("protocol", "tcp"))
    spec, _, proto = str(port).partition("/")
    parts = spec.rsplit(":", 2)
    if len(parts) == 1:
        return None  # container port only: nothing on the host
    ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return ip, int(parts[-2]), proto or "tcp"


def port_problems(doc: Doc) -> Problems:
    """No host port twice; only the TLS proxy listens on every interface."""
    problems = []
    seen: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for name, svc in doc["services"].items():
        for port in svc.get("ports") or []:
            pub = _published(port)
            if pub is None:
                continue
            ip, number, proto = pub
            for other_ip, other in seen.get((number, proto), []):
                if "0.0.0.0" in (ip, other_ip) or ip == other_ip:
                    problems.append(f"{name} and {other} both publish {proto} port {number}")
            seen.setdefault((number, proto), []).append((ip, name))
            if ip not in ("127.0.0.1", "::1") and name != "traefik":
                problems.append(f"{name}: publishes port {number} on every interface")
    return problems


_PINNED_TAG = re.compile(r"\d")


def image_problems(doc: Doc) -> Problems:
    problems = []
    for name, svc in doc["services"].items():
        image = svc.get("image")
        if not image:
            problems.append(f"{name}: no image")
            continue
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        if "/" in tag or not repo:
            repo, tag = image, ""
        if not tag or tag == "latest":
            problems.append(f"{name}: image {image} is not pinned to a version")
        elif not _PINNED_TAG.search(tag) and not is_dfms_image(doc, name):
            problems.append(f"{name}: image {image} has no version in its tag")
        elif "minio/" in repo and not re.match(r"^RELEASE\.\d{4}-\d\d-\d\dT", tag):
            problems.append(f"{name}: MinIO image {image} is not a dated RELEASE tag")
    return problems


def variable_problems(raw: Doc, env_text: str) -> Problems:
    """Every ${VAR} is in .env.example; a required one (no default) has a line there,
    and every secret there is empty (required, so compose refuses to start without it)."""
    values, commented = parse_env_file(env_text)
    used = variables_used(raw)
    problems = []
    for name, ops in sorted(used.items()):
        if name not in values and name not in commented:
            problems.append(f"${{{name}}} is not in deploy/.env.example")
        elif name not in values and ops - {":-", "-"}:
            problems.append(f"${{{name}}} has no default and is commented out in "
                            "deploy/.env.example")
    for name, value in values.items():
        if SECRET_NAME.search(name) and name != "S3_ACCESS_KEY":
            if value:
                problems.append(f"deploy/.env.example gives secret {name} a value")
            # One ${NAME:?...} suffices: Compose refuses the whole file when it fails.
            if ":?" not in used.get(name, set()):
                problems.append(f"secret {name} is not required (${{{name}:?...}}) in the "
                                "compose file")
    return problems


def dockerfile_problems(text: str, ignore_text: str) -> Problems:
    inst = dockerfile_instructions(text)
    problems = []
    stages = [i for i in inst if i.op == "FROM"]
    if len(stages) < 2:
        return ["Dockerfile: not multi-stage"]
    build = [i for i in inst if i.stage == 0]
    final = [i for i in inst if i.stage == stages[-1].stage]
    if not any(i.op == "RUN" and WHEEL_BUILD in i.args for i in build):
        problems.append(f"Dockerfile: the build stage does not run `{WHEEL_BUILD}`")
    # Only ARGs before the first FROM are seen by FROM lines.
    args = dict(i.args.partition("=")[::2] for i in inst if i.op == "ARG" and i.stage < 0)
    base = stages[-1].args.split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), base)
    if not re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base):
        problems.append(f"Dockerfile: the runtime base {base} is not a pinned "
                        "python:3.11.x-slim-bookworm")
    user = [i.args for i in final if i.op == "USER"]
    if not user or user[-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: the runtime stage runs as root")
    if not any(i.op == "HEALTHCHECK" and HEALTH_URL_VAR in i.args for i in final):
        problems.append(f"Dockerfile: no HEALTHCHECK reading {HEALTH_URL_VAR}")
    health = urlsplit(image_env(text).get(HEALTH_URL_VAR, ""))
    if health.path != "/health" or health.port != Config().gateway.port:
        problems.append(f"Dockerfile: {HEALTH_URL_VAR} does not default to the gateway's "
                        "/health")
    if image_entrypoint_cmd(text)[0] != ["dfms"]:
        problems.append('Dockerfile: ENTRYPOINT is not ["dfms"]')
    for i in final:
        if i.op == "RUN" and "pip install" in i.args and "[stack" in i.args:
            problems.append("Dockerfile: the runtime installs the `stack` extra")
        if i.op in ("ENV", "ARG") and any(SECRET_NAME.search(part.partition("=")[0])
                                          for part in shlex.split(i.args)):
            problems.append(f"Dockerfile: {i.op} {i.args} puts a secret in a layer")
    labels = " ".join(i.args for i in final if i.op == "LABEL")
    for label in ("title", "description", "version", "revision", "licenses"):
        if f"org.opencontainers.image.{label}=" not in labels:
            problems.append(f"Dockerfile: no OCI label org.opencontainers.image.{label}")
    # The build context is the work tree (with .dfms/ secrets): only named paths go in,
    # and they must include every package root the wheel is built from.
    copied = set()
    for i in build:
        if i.op == "COPY":
            parts = [p for p in i.args.split() if not p.startswith("--")]
            copied |= {p.rstrip("/") for p in parts[:-1]}
    if copied & {".", "./", "*"}:
        problems.append("Dockerfile: the build stage copies the whole work tree")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    for root in sorted(roots - copied):
        problems.append(f"Dockerfile: package root {root}/ is not copied into the build")
    problems += link_target_problems(roots & copied, copied)
    ignored = set(ignore_text.split())
    for local in (".dfms", ".venv", ".git", "deploy/.env", "deploy/certs"):
        if local not in ignored:
            problems.append(f"Dockerfile.dockerignore: {local} would reach the builder")
    return problems


def link_target_problems(roots: set[str], copied: set[str]) -> Problems:
    """A symlink in a package root (dfms/observability_assets/alerts.yml) whose target the
    build stage does not copy: setup.py's check_links stops `python -m build` in the image
    (the wheel test builds from a full clone, where the target is always there)."""
    problems = []
    for root in sorted(roots):
        for link in sorted(p for p in (REPO / root).rglob("*") if p.is_symlink()):
            target = link.resolve()
            if not target.is_relative_to(REPO):
                problems.append(f"Dockerfile: {link.relative_to(REPO)} links outside the "
                                "repository")
                continue
            rel = target.relative_to(REPO)
            if not any(rel.is_relative_to(c) for c in copied):
                problems.append(f"Dockerfile: {link.relative_to(REPO)} links to {rel}, which "
                                "the build stage does not copy (setup.py stops the build)")
    return problems


def health_problems(doc: Doc) -> Problems:
    """Each DFMS service's container health check asks /health on the port it serves."""
    problems = []
    default = image_env(_dockerfile()).get(HEALTH_URL_VAR, "")
    for name, command in long_running(doc, _dockerfile()).items():
        svc = doc["services"][name]
        if svc.get("healthcheck", {}).get("disable"):
            problems.append(f"{name}: health check disabled")
        url = urlsplit(environment(svc).get(HEALTH_URL_VAR, default))
        port = service_port(doc, name, command)
        if url.hostname not in ("127.0.0.1", "localhost") or url.port != port \
                or url.path != "/health":
            problems.append(f"{name}: health check {url.geturl()} is not "
                            f"http://127.0.0.1:{port}/health")
        if command != "gateway" and environment(svc).get("DFMS_OPS__HOST") != "0.0.0.0":
            problems.append(f"{name}: ops routes bound to loopback; Prometheus cannot scrape")
    return problems


def policy_problems(doc: Doc) -> Problems:
    """Restart policies and resource limits on every service."""
    problems = []
    for name, svc in doc["services"].items():
        restart = svc.get("restart")
        if restart is None:
            problems.append(f"{name}: no restart policy")
        limits = (svc.get("deploy") or {}).get("resources", {}).get("limits", {})
        if not limits.get("memory") or not limits.get("cpus"):
            problems.append(f"{name}: no cpu and memory limits")
    return problems


def _prometheus_targets() -> dict[str, list[str]]:
    prom = yaml.safe_load(PROMETHEUS_FILE.read_text())
    return {job["job_name"]: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
            for job in prom["scrape_configs"]}


def scrape_problems(doc: Doc, targets: dict[str, list[str]]) -> Problems:
    """Prometheus scrapes every DFMS service on its metrics port, every MinIO node, and
    nothing that is not in the compose file."""
    problems = []
    flat = {t for ts in targets.values() for t in ts}
    for name, command in long_running(doc, _dockerfile()).items():
        want = f"{name}:{service_port(doc, name, command)}"
        if want not in flat:
            problems.append(f"prometheus.yml does not scrape {want}")
    for name, svc in doc["services"].items():
        if "minio/minio" in svc.get("image", "") and f"{name}:9000" not in flat:
            problems.append(f"prometheus.yml does not scrape MinIO node {name}")
    for target in flat:
        host = target.rpartition(":")[0]
        if host not in doc["services"] and host not in ("127.0.0.1", "localhost"):
            problems.append(f"prometheus.yml scrapes {target}: no such service")
    return problems


def reference_problems(doc: Doc) -> Problems:
    """Paths the mounted configs name inside their containers are mounted there too."""
    services = doc["services"]
    problems = []

    def need(service: str, path: str, why: str) -> None:
        source = mounted_file(services.get(service, {}), path)
        if source is None:
            problems.append(f"{service}: {path} ({why}) is not mounted")
        elif not source.exists() and not path.startswith("/certs/"):  # certs: operator's
            problems.append(f"{service}: {path} ({why}) comes from {source}, missing")

    prometheus = services.get("prometheus", {})
    prom_config = next((a.partition("=")[2] for a in as_list(prometheus.get("command"))
                        if a.startswith("--config.file=")), "")
    need("prometheus", prom_config, "--config.file")
    host = mounted_file(prometheus, prom_config)
    if host is not None and host.exists():
        for rule_file in yaml.safe_load(host.read_text()).get("rule_files", []):
            need("prometheus", rule_file, "rule_files")
    for arg in as_list(services.get("otel-collector", {}).get("command")):
        if arg.startswith("--config="):
            need("otel-collector", arg.partition("=")[2], "--config")
    for arg in as_list(services.get("traefik", {}).get("command")):
        if arg.startswith("--providers.file.filename="):
            dynamic = arg.partition("=")[2]
            need("traefik", dynamic, "file provider")
            source = mounted_file(services["traefik"], dynamic)
            if source is not None and source.exists():
                tls = yaml.safe_load(source.read_text()).get("tls", {})
                for cert in tls.get("certificates", []):
                    need("traefik", cert["certFile"], "TLS certificate")
                    need("traefik", cert["keyFile"], "TLS key")
    for provider in yaml.safe_load((OBS / "grafana" / "provisioning" / "dashboards"
                                    / "dashboards.yml").read_text())["providers"]:
        need("grafana", provider["options"]["path"], "dashboard provider")
    need("grafana", "/etc/grafana/provisioning/datasources", "provisioning")
    return problems


def proxy_problems(doc: Doc) -> Problems:
    """Traefik balances over exactly the gateway services, on the gateway port, does not
    expose /metrics, and the gateways trust its network for client addresses."""
    dynamic = yaml.safe_load(TRAEFIK_FILE.read_text())
    problems = []
    gateways = {name: service_port(doc, name, cmd)
                for name, cmd in long_running(doc, _dockerfile()).items() if cmd == "gateway"}
    servers = {s["url"] for svc in dynamic["http"]["services"].values()
               for s in svc["loadBalancer"]["servers"]}
    want = {f"http://{name}:{port}" for name, port in gateways.items()}
    for url in sorted(want - servers):
        problems.append(f"traefik: gateway {url} is not an upstream")
    for url in sorted(servers - want):
        problems.append(f"traefik: upstream {url} is no gateway service")
    if len(gateways) < 2:
        problems.append("fewer than two gateways behind the proxy")
    for router in dynamic["http"]["routers"].values():
        if "!PathPrefix(`/metrics`)" not in router["rule"]:
            problems.append(f"traefik: router {router['rule']!r} exposes /metrics")
        if "tls" not in router:
            problems.append("traefik: a router without TLS")
    return problems + _trust_problems(doc, sorted(gateways))


def _trust_problems(doc: Doc, gateways: list[str]) -> Problems:
    """Every gateway trusts X-Forwarded-For from the fixed subnets of the proxy's networks
    (else every client shares Traefik's address in the rate limits), and only from there."""
    services = doc["services"]
    networks = doc.get("networks") or {}
    subnets = [ip_network(c["subnet"]) for net in services["traefik"].get("networks") or []
               for c in ((networks.get(net) or {}).get("ipam") or {}).get("config") or []]
    if not subnets:
        return ["traefik: its networks have no fixed subnet for the gateways to trust"]
    problems = []
    for name in gateways:
        trusted = parse_networks(load_config(env=environment(services[name]))
                                 .gateway.trusted_proxies)
        missing = [str(net) for net in subnets
                   if not any(net.version == t.version and net.subnet_of(t)  # type: ignore[arg-type]
                              for t in trusted)]
        if missing:
            problems.append(f"{name}: does not trust the proxy's network {', '.join(missing)} "
                            "(DFMS_GATEWAY__TRUSTED_PROXIES)")
        extra = [str(t) for t in trusted if not any(
            t.version == net.version and t.subnet_of(net) for net in subnets)]  # type: ignore[arg-type]
        if extra:
            problems.append(f"{name}: trusts {', '.join(extra)}, outside the proxy's networks")
    return problems


def registrations(doc: Doc) -> dict[str, argparse.Namespace]:
    """compose service -> its parsed `dfms nodes register` command."""
    out = {}
    for name in doc["services"]:
        args = dfms_command(doc, name, _dockerfile())
        if args and args[:2] == ["nodes", "register"] and parses(cli.build_parser(), args) is None:
            out[name] = cli.build_parser().parse_args(args)
    return out


def ring_problems(doc: Doc) -> Problems:
    """The nodes the `dfms nodes register` jobs register are exactly the MinIO services,
    with their zone labels, after the schema and the bucket exist, and before any DFMS
    service starts; minio-init prepares the same nodes and the bucket and user DFMS uses."""
    services = doc["services"]
    problems = []
    minio = {name: svc for name, svc in services.items()
             if "minio/minio" in svc.get("image", "")}
    jobs = registrations(doc)
    registered = {args.node_id: args for args in jobs.values()}
    if sorted(registered) != sorted(a.node_id for a in jobs.values()):
        problems.append("two jobs register the same node id")
    if set(registered) != set(minio):
        problems.append(f"the jobs register {sorted(registered)}, the MinIO services are "
                        f"{sorted(minio)}")
    for name, node in registered.items():
        if name not in minio:
            continue
        zone = (minio[name].get("labels") or {}).get("dfms.zone")
        if node.zone != zone:
            problems.append(f"{name}: registered in zone {node.zone}, labelled {zone}")
        if node.endpoint != f"http://{name}:9000":
            problems.append(f"{name}: registered at {node.endpoint}, listens on :9000")
    # Every DFMS service but the event relay (which only publishes the outbox) needs the ring.
    users = [n for n, cmd in long_running(doc, _dockerfile()).items() if cmd != "event-relay"]
    problems += _waits_for(doc, jobs, ("migrate", "minio-init"), users)
    problems += _minio_problems(doc, set(minio))
    return problems


def _waits_for(doc: Doc, jobs: dict[str, Any], before: tuple[str, ...],
               after: list[str]) -> Problems:
    """Each job runs after ``before`` completed, and the services ``after`` after the jobs."""
    problems = []
    done = "service_completed_successfully"
    for job in sorted(jobs):
        for first in before:
            if depends(doc["services"][job]).get(first) != done:
                problems.append(f"{job}: does not wait for {first} to complete")
    for name in after:
        for job in sorted(jobs):
            if depends(doc["services"][name]).get(job) != done:
                problems.append(f"{name}: does not wait for {job} to complete")
    return problems


def _minio_problems(doc: Doc, minio: set[str]) -> Problems:
    services = doc["services"]
    problems = []
    init = environment(services["minio-init"])
    if set(init["MINIO_NODES"].split()) != minio:
        problems.append(f"minio-init prepares {init['MINIO_NODES']}, not {sorted(minio)}")
    dfms_env = environment(services["chunk-service"])
    if init["BUCKET"] != dfms_env["DFMS_S3__BUCKET"]:
        problems.append(f"minio-init creates bucket {init['BUCKET']}, DFMS uses "
                        f"{dfms_env['DFMS_S3__BUCKET']}")
    if (init["S3_ACCESS_KEY"], init["S3_SECRET_KEY"]) != (
            dfms_env["DFMS_S3__ACCESS_KEY"], dfms_env["DFMS_S3__SECRET_KEY"]):
        problems.append("minio-init creates other S3 credentials than DFMS uses")
    policy = json.loads(MINIO_POLICY.read_text())
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    bucket = dfms_env["DFMS_S3__BUCKET"]
    if resources != {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}:
        problems.append(f"the MinIO policy grants {sorted(resources)}, not bucket {bucket}")
    return problems


def volume_at(svc: Doc, target: str) -> str | None:
    """The named volume mounted at ``target``, if one is."""
    for vol in svc.get("volumes") or []:
        source, _, rest = str(vol).partition(":")
        if rest.partition(":")[0] == target and source in named_volumes(svc):
            return source
    return None


def keys_problems(doc: Doc) -> Problems:
    """One job creates the first signing key and share-link secret (`dfms keys generate
    --if-missing`) on the volume every gateway reads its auth.keys_dir from, and the
    DFMS services start after it."""
    services = doc["services"]
    dockerfile = _dockerfile()
    jobs = {name: cli.build_parser().parse_args(args) for name in services
            if (args := dfms_command(doc, name, dockerfile) or [])[:2] == ["keys", "generate"]
            and "--if-missing" in args}
    if len(jobs) != 1:
        return [f"{len(jobs)} jobs run `dfms keys generate --if-missing`, not one"]
    [(job, args)] = jobs.items()
    keys_dir = args.dir or load_config(env=environment(services[job])).auth.keys_dir
    volume = volume_at(services[job], keys_dir)
    problems = [] if volume else [f"{job}: writes {keys_dir}, which is on no named volume"]
    for name, command in long_running(doc, dockerfile).items():
        read = load_config(env=environment(services[name])).auth.keys_dir
        if command == "gateway" and (read, volume_at(services[name], read)) != (
                keys_dir, volume):
            problems.append(f"{name}: reads keys from {volume_at(services[name], read)}:"
                            f"{read}, {job} writes them to {volume}:{keys_dir}")
    gateways = [n for n, cmd in long_running(doc, dockerfile).items() if cmd == "gateway"]
    return problems + _waits_for(doc, jobs, (), gateways)


def kafka_problems(doc: Doc, profiles: set[str]) -> Problems:
    """Every DFMS process uses the same brokers, which are services running with
    ``profiles``; `dfms migrate up` creates the topics with a replication those brokers
    can give, the one they use by default, and at least their min.insync.replicas."""
    services = doc["services"]
    brokers = {n for n, svc in services.items()
               if svc.get("image", "").startswith("apache/kafka")
               and (not svc.get("profiles") or set(svc["profiles"]) & profiles)}
    problems = []
    migrate_env = environment(services["migrate"])
    servers = migrate_env["DFMS_KAFKA__BOOTSTRAP_SERVERS"]
    for name in services:
        env = environment(services[name])
        if env.get("DFMS_KAFKA__BOOTSTRAP_SERVERS", servers) != servers:
            problems.append(f"{name}: Kafka {env['DFMS_KAFKA__BOOTSTRAP_SERVERS']}, "
                            f"migrate uses {servers}")
    for server in servers.split(","):
        if server.rpartition(":")[0] not in brokers:
            problems.append(f"Kafka broker {server} is no running service")
    factor = load_config(env=migrate_env).kafka.topic_replication_factor
    if factor > len(brokers):
        problems.append(f"migrate: topics with replication factor {factor}, but "
                        f"{len(brokers)} broker(s) run")
    for name in sorted(brokers):
        env = environment(services[name])
        if int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) != factor:
            problems.append(f"{name}: default replication {env['KAFKA_DEFAULT_REPLICATION_FACTOR']}"
                            f", DFMS topics get {factor}")
        if int(env["KAFKA_MIN_INSYNC_REPLICAS"]) > factor:
            problems.append(f"{name}: min.insync.replicas {env['KAFKA_MIN_INSYNC_REPLICAS']} "
                            f"> the topics' replication factor {factor}")
    return problems


def otel_problems(doc: Doc) -> Problems:
    """Every DFMS service sends OTLP to the collector, whose pipeline is complete."""
    services = doc["services"]
    problems = []
    collector = yaml.safe_load(OTEL_FILE.read_text())
    for name in long_running(doc, _dockerfile()):
        env = environment(services[name])
        url = urlsplit(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
        if url.hostname not in services or url.port != OTLP_HTTP_PORT:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT {url.geturl()!r} is not "
                            f"the collector's OTLP/HTTP port")
        if not env.get("OTEL_SERVICE_NAME"):
            problems.append(f"{name}: no OTEL_SERVICE_NAME")
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for item in pipeline.get(kind, []):
                if item not in collector.get(kind, {}):
                    problems.append(f"otel-collector: pipeline uses undefined {kind} {item}")
    for exporter in collector.get("exporters", {}).values():
        endpoint = str((exporter or {}).get("endpoint", ""))
        host = endpoint.split("://")[-1].rpartition(":")[0]
        if endpoint and host not in services:
            problems.append(f"otel-collector: exports to {endpoint}: no such service")
    return problems


# --- metrics ---------------------------------------------------------------------------------

_METRIC_KINDS = {"Counter": ("_total", "_created"), "Gauge": (),
                 "Histogram": ("_bucket", "_sum", "_count", "_created"),
                 "Summary": ("_sum", "_count", "_created")}
TARGET_LABELS = {"job", "instance"}
ANY_LABEL = "*"


@cache
def exported_metrics() -> dict[str, frozenset[str]]:
    """Series name -> its label names, for every prometheus_client metric in the code."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    roots = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    found: dict[str, frozenset[str]] = {}
    for root in sorted(roots):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(parse_source(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in _METRIC_KINDS and node.args
                        and isinstance(node.args[0], ast.Constant)
                        and isinstance(node.args[0].value, str)):
                    continue
                name = node.args[0].value
                labels_node = node.args[2] if len(node.args) > 2 else next(
                    (k.value for k in node.keywords if k.arg == "labelnames"), None)
                try:
                    labels = set(ast.literal_eval(labels_node)) if labels_node else set()
                except ValueError:  # label names from a variable: accept any label
                    labels = {ANY_LABEL}
                labels |= TARGET_LABELS
                kind = node.func.id
                base = name.removesuffix("_total") if kind == "Counter" else name
                series = [name] if kind == "Gauge" else []
                series += [base + suffix for suffix in _METRIC_KINDS[kind]]
                for s in series:
                    found[s] = frozenset(labels | ({"le"} if s.endswith("_bucket") else set()))
    found["up"] = frozenset(TARGET_LABELS)  # Prometheus's own, per target
    return found


@cache
def service_names() -> frozenset[str]:
    """The `service` label values the code uses (Service.name of every service class)."""
    import dfms.chunkservice.service
    import dfms.events.relay
    import dfms.gateway.app
    import dfms.gc.worker
    import dfms.healthmon.service
    import dfms.replication.manager
    import dfms.replication.scrubber  # noqa: F401 - imported for the subclasses
    from dfms.runtime.service import Service

    names: set[str] = set()
    todo = [Service]
    while todo:
        cls = todo.pop()
        names.add(cls.name)
        todo.extend(cls.__subclasses__())
    return frozenset(names - {Service.name})


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]]


def promql_parts(expr: str) -> tuple[list[Selector], set[str]]:
    """The series selectors of a PromQL expression and the labels it groups by."""
    text = re.sub(r"\$__\w+|\$\{?\w+\}?", "5m", expr)  # Grafana variables
    grouping = {label.strip() for _, labels in _GROUPING.findall(text)
                for label in labels.split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    selectors = [Selector(metric, _MATCHER.findall(body))
                 for metric, body in _SELECTOR.findall(text)]
    text = _SELECTOR.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', " ", text)
    text = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.])", " ", text)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:]|\s*\()", text):
        if m.group(1) not in _KEYWORDS:
            selectors.append(Selector(m.group(1), []))
    return selectors, grouping


def metric_problems(exprs: dict[str, str]) -> Problems:
    """Every series, label and `service` value in the expressions exists in the code."""
    metrics = exported_metrics()
    problems = []
    for where, expr in exprs.items():
        selectors, grouping = promql_parts(expr)
        if not selectors:
            problems.append(f"{where}: no series in {expr!r}")
        known: set[str] = set()
        for sel in selectors:
            if not sel.metric:
                problems.append(f"{where}: a selector without a metric name")
                continue
            if sel.metric not in metrics:
                problems.append(f"{where}: {sel.metric} is not exported by the code")
                continue
            known |= metrics[sel.metric]
            for label, op, value in sel.matchers:
                if label not in metrics[sel.metric] and ANY_LABEL not in metrics[sel.metric]:
                    problems.append(f"{where}: {sel.metric} has no label {label}")
                if label == "service" and op == "=" and value not in service_names():
                    problems.append(f"{where}: no service is named {value!r}")
        for label in sorted(grouping - known):
            if known and ANY_LABEL not in known:
                problems.append(f"{where}: groups by {label}, which its series lack")
    return problems


def alert_exprs(alerts: Doc) -> dict[str, str]:
    return {f"alert {rule['alert']}": rule["expr"]
            for group in alerts["groups"] for rule in group["rules"]}


def dashboard_exprs(dashboard: Doc) -> dict[str, str]:
    def panels(items: list[Doc]) -> Iterator[Doc]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    return {f"panel {p['title']!r} {t['refId']}": t["expr"]
            for p in panels(dashboard["panels"]) for t in p.get("targets", [])}


def alert_rule_problems(alerts: Doc) -> Problems:
    problems = []
    for group in alerts["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert", "?")
            if not rule.get("expr"):
                problems.append(f"alert {name}: no expr")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"alert {name}: no severity label")
            if not rule.get("annotations", {}).get("summary"):
                problems.append(f"alert {name}: no summary")
    return problems


def dashboard_problems(dashboard: Doc) -> Problems:
    uids = {ds["uid"] for path in DATASOURCES.glob("*.yml")
            for ds in yaml.safe_load(path.read_text())["datasources"]}
    problems = []
    for panel in dashboard["panels"]:
        for target in [panel, *panel.get("targets", [])]:
            uid = (target.get("datasource") or {}).get("uid")
            if uid not in uids:
                problems.append(f"panel {panel['title']!r}: data source {uid!r} is not "
                                "provisioned")
    return problems


# --- tests: the real files --------------------------------------------------------------------

def real_rules() -> dict[str, Callable[[], Problems]]:
    doc = compose_doc()
    alerts = yaml.safe_load(ALERTS_FILE.read_text())
    dashboards = [json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))]
    return {
        "schema": lambda: schema_problems(doc),
        "commands": lambda: command_problems(doc),
        "env_keys": lambda: env_key_problems(doc),
        "config": lambda: config_problems(doc),
        "mounts": lambda: mount_problems(doc),
        "depends_on": lambda: depends_problems(doc),
        "ports": lambda: port_problems(doc),
        "images": lambda: image_problems(doc),
        "variables": lambda: variable_problems(raw_compose(), _env_example()),
        "dockerfile": lambda: dockerfile_problems(_dockerfile(), DOCKERIGNORE.read_text()),
        "health": lambda: health_problems(doc),
        "policy": lambda: policy_problems(doc),
        "scrape": lambda: scrape_problems(doc, _prometheus_targets()),
        "references": lambda: reference_problems(doc),
        "proxy": lambda: proxy_problems(doc),
        "ring": lambda: ring_problems(doc),
        "keys": lambda: keys_problems(doc),
        "kafka": lambda: kafka_problems(doc, active_profiles(parse_env_file(_env_example())[0])),
        "otel": lambda: otel_problems(doc),
        "alert_metrics": lambda: metric_problems(alert_exprs(alerts)),
        "alert_rules": lambda: alert_rule_problems(alerts),
        "dashboard_metrics": lambda: [p for d in dashboards
                                      for p in metric_problems(dashboard_exprs(d))],
        "dashboard": lambda: [p for d in dashboards for p in dashboard_problems(d)],
    }


RULES = ("schema", "commands", "env_keys", "config", "mounts", "depends_on", "ports", "images",
         "variables", "dockerfile", "health", "policy", "scrape", "references", "proxy", "ring",
         "keys", "kafka", "otel", "alert_metrics", "alert_rules", "dashboard_metrics", "dashboard")


def test_rules_are_all_run() -> None:
    assert set(RULES) == set(real_rules())


@pytest.mark.parametrize("rule", RULES)
def test_deploy_files_follow_rule(rule: str) -> None:
    assert real_rules()[rule]() == []


def test_every_dfms_service_and_job_is_in_the_compose_file() -> None:
    doc = compose_doc()
    running = long_running(doc, _dockerfile())
    assert set(running.values()) == set(LONG_RUNNING)  # all six DFMS services
    assert sorted(n for n, c in running.items() if c == "gateway") == ["gateway-1", "gateway-2"]
    assert dfms_command(doc, "migrate", _dockerfile()) == ["migrate", "up",
                                                          "--wait-for-topics", "150"]
    assert len([n for n, s in doc["services"].items()
                if "minio/minio" in s.get("image", "")]) == 4
    kafka = {n: s.get("profiles") for n, s in doc["services"].items()
             if s.get("image", "").startswith("apache/kafka")}
    assert kafka == {"kafka-1": None, "kafka-2": ["kafka-cluster"],
                     "kafka-3": ["kafka-cluster"]}


def test_compose_refuses_to_start_without_each_secret() -> None:
    example, _ = parse_env_file(_env_example())
    secrets = [k for k, v in example.items() if not v]
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_SECRET_KEY", "MINIO_ROOT_PASSWORD",
            "GRAFANA_ADMIN_PASSWORD"} <= set(secrets)
    for name in secrets:
        env = filled_env(example)
        env[name] = ""
        with pytest.raises(InterpolationError, match=name):
            interpolate_doc(raw_compose(), env)


def test_interpolation_follows_compose() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("$$A ${A} $A ${B:-x} ${E:-y} ${E-z} ${A:?no}", env) == "$A 1 1 x y  1"
    with pytest.raises(InterpolationError, match="E: set it"):
        interpolate("${E:?set it}", env)
    assert variables_used(["${A:?m}", {"k": "$B ${C:-d} $$D ${A}"}]) == {
        "A": {":?", None}, "B": {None}, "C": {":-"}}


def test_promql_scan_finds_series_labels_and_grouping() -> None:
    selectors, grouping = promql_parts(
        'histogram_quantile(0.95, sum by (node, le) (rate(dfms_s3_request_seconds_bucket'
        '{op="put"}[$__rate_interval]))) / on() group_left count(up == 0) or vector(1e3)')
    assert [(s.metric, s.matchers) for s in selectors] == [
        ("dfms_s3_request_seconds_bucket", [("op", "=", "put")]), ("up", [])]
    assert grouping == {"node", "le"}


def test_code_metrics_are_found() -> None:
    metrics = exported_metrics()
    assert metrics["dfms_http_requests_total"] >= {"route", "method", "status"}
    assert "le" in metrics["dfms_http_request_seconds_bucket"]
    assert "dfms_http_request_seconds" not in metrics  # a histogram has no bare series
    assert {"gateway", "replication_manager", "scrubber", "gc_worker"} <= service_names()


def test_the_three_broker_settings_give_the_topics_three_replicas() -> None:
    """The kafka-cluster block of .env.example, uncommented: three brokers, and the topics
    `dfms migrate up` creates get three replicas."""
    settings = commented_settings(re.compile(r"COMPOSE_PROFILES|KAFKA_\w+"))
    assert settings["COMPOSE_PROFILES"] == "kafka-cluster"
    doc = compose_doc(settings)
    assert kafka_problems(doc, active_profiles(settings)) == []
    assert config_problems(doc) == []
    migrate_cfg = load_config(env=environment(doc["services"]["migrate"]))
    assert migrate_cfg.kafka.topic_replication_factor == 3
    assert migrate_cfg.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    # The same settings without the profile: topics the one running broker cannot hold.
    assert "replication factor 3, but 1 broker(s) run" in " ".join(kafka_problems(doc, set()))


def test_the_jobs_are_dfms_subcommands() -> None:
    doc = compose_doc()
    jobs = {name: dfms_command(doc, name, _dockerfile()) for name, svc in doc["services"].items()
            if is_dfms_image(doc, name) and svc.get("restart") == "no"
            and "tools" not in (svc.get("profiles") or [])}
    assert jobs["migrate"][:2] == ["migrate", "up"]
    assert jobs["keys"] == ["keys", "generate", "--if-missing"]
    assert sorted(n for n, args in jobs.items() if args[:2] == ["nodes", "register"]) == [
        f"register-minio-{i}" for i in range(1, 5)]
    assert not (DEPLOY / "bootstrap.py").exists()


# --- tests: each rule catches what it is there for ------------------------------------------

def _svc(doc: Doc, name: str) -> Doc:
    return doc["services"][name]


def _set_env(doc: Doc, name: str, key: str, value: str) -> Doc:
    _svc(doc, name)["environment"][key] = value
    return doc


def _drop_env(doc: Doc, name: str, key: str) -> Doc:
    del _svc(doc, name)["environment"][key]
    return doc


def _replace_volume(doc: Doc, name: str, old: str, new: str) -> Doc:
    vols = _svc(doc, name)["volumes"]
    vols[vols.index(old)] = new
    return doc


def _edit(doc: Doc, change: Callable[[Doc], object]) -> Doc:
    change(doc)
    return doc


def _dockerfile_with(old: str, new: str) -> str:
    text = _dockerfile()
    assert old in text
    return text.replace(old, new)


def _dockerfile_problems_with(old: str, new: str) -> Problems:
    return dockerfile_problems(_dockerfile_with(old, new), DOCKERIGNORE.read_text())


def _alerts_with(expr: str) -> dict[str, str]:
    exprs = alert_exprs(yaml.safe_load(ALERTS_FILE.read_text()))
    exprs["alert Mutated"] = expr
    return exprs


# (rule, what the broken copy does, a function returning its problems, expected text)
MUTATIONS: list[tuple[str, str, Callable[[], Problems], str]] = [
    ("schema", "an unknown service key",
     lambda: schema_problems(_edit(compose_doc(), lambda d: _svc(d, "redis").update(
         restrat="always"))), "restrat"),
    ("schema", "an unknown depends_on condition",
     lambda: schema_problems(_edit(compose_doc(), lambda d: _svc(d, "migrate")["depends_on"][
         "postgres"].update(condition="service_ready"))), "service_ready"),
    ("commands", "a misspelt dfms subcommand",
     lambda: command_problems(_edit(compose_doc(), lambda d: _svc(d, "gc-worker").update(
         command=["gc-wroker"]))), "gc-worker: `dfms gc-wroker`"),
    ("commands", "an option the subcommand lacks",
     lambda: command_problems(_edit(compose_doc(), lambda d: _svc(d, "migrate").update(
         command=["migrate", "up", "--steps", "1", "--force"]))), "unrecognized arguments"),
    ("commands", "a node id the rules refuse",
     lambda: command_problems(_edit(compose_doc(), lambda d: _svc(d, "register-minio-2")[
         "command"].__setitem__(2, "Minio-2"))),
     "register-minio-2: `dfms nodes register Minio-2"),
    ("commands", "a node endpoint the rules refuse",
     lambda: command_problems(_edit(compose_doc(), lambda d: _svc(d, "register-minio-3")[
         "command"].__setitem__(4, "http://minio-3:9000/bucket"))), "argument --endpoint"),
    ("commands", "a job that runs a script",
     lambda: command_problems(_edit(compose_doc(), lambda d: _svc(d, "keys").update(
         entrypoint=["python", "/opt/dfms/bootstrap.py"]))), "keys: runs ['python'"),
    ("env_keys", "an unknown option",
     lambda: env_key_problems(_set_env(compose_doc(), "gateway-1", "DFMS_GATEWAY__PROT",
                                       "8080")), "DFMS_GATEWAY__PROT is not"),
    ("env_keys", "an unknown section",
     lambda: env_key_problems(_set_env(compose_doc(), "gc-worker", "DFMS_GARBAGE__INTERVAL_S",
                                       "60")), "DFMS_GARBAGE__INTERVAL_S"),
    ("env_keys", "a DFMS_ variable that is no config key",
     lambda: env_key_problems(_set_env(compose_doc(), "gc-worker", "DFMS_OPS_HOST",
                                       "0.0.0.0")), "DFMS_OPS_HOST"),
    ("config", "a value the config refuses",
     lambda: config_problems(_set_env(compose_doc(), "chunk-service",
                                      "DFMS_CHUNK_SERVICE__OPS_PORT", "99999")),
     "chunk_service.ops_port"),
    ("mounts", "a bind mount of a missing file",
     lambda: mount_problems(_replace_volume(
         compose_doc(), "prometheus",
         "../observability/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro",
         "../observability/prometheus/rules.yml:/etc/prometheus/alerts.yml:ro")),
     "rules.yml, which does not exist"),
    ("mounts", "a bind mount from outside the repository",
     lambda: mount_problems(_edit(compose_doc(), lambda d: _svc(d, "traefik")[
         "volumes"].append("/var/run/docker.sock:/var/run/docker.sock:ro"))),
     "outside the repository"),
    ("mounts", "an undeclared named volume",
     lambda: mount_problems(_edit(compose_doc(), lambda d: d["volumes"].pop("redis-data"))),
     "redis-data is not declared"),
    ("depends_on", "a missing service",
     lambda: depends_problems(_edit(compose_doc(), lambda d: _svc(d, "gc-worker")[
         "depends_on"].update({"postgress": {"condition": "service_healthy"}}))),
     "postgress, which is no service"),
    ("depends_on", "waiting for health that is never reported",
     lambda: depends_problems(_edit(compose_doc(), lambda d: _svc(d, "otel-collector")[
         "depends_on"]["jaeger"].update(condition="service_healthy"))), "no health check"),
    ("depends_on", "waiting for a service to complete that never does",
     lambda: depends_problems(_edit(compose_doc(), lambda d: _svc(d, "gc-worker")[
         "depends_on"].update({"postgres": {"condition": "service_completed_successfully"}}))),
     "restarted forever"),
    ("depends_on", "a default service needing a profile's service",
     lambda: depends_problems(_edit(compose_doc(), lambda d: _svc(d, "migrate")[
         "depends_on"].update({"kafka-3": {"condition": "service_healthy"}}))),
     "only runs with profile"),
    ("depends_on", "a cycle",
     lambda: depends_problems(_edit(compose_doc(), lambda d: _svc(d, "postgres").update(
         depends_on={"migrate": {"condition": "service_started"}}))), "dependency cycle"),
    ("ports", "a host port published twice",
     lambda: port_problems(_edit(compose_doc(), lambda d: _svc(d, "grafana")["ports"].append(
         "127.0.0.1:9090:3000"))), "both publish tcp port 9090"),
    ("ports", "a wildcard and a loopback bind of one port",
     lambda: port_problems(_edit(compose_doc(), lambda d: _svc(d, "jaeger")["ports"].append(
         "443:16686"))), "both publish tcp port 443"),
    ("ports", "an internal service on every interface",
     lambda: port_problems(_edit(compose_doc(), lambda d: _svc(d, "postgres").update(
         ports=["5432:5432"]))), "postgres: publishes port 5432 on every interface"),
    ("images", "latest",
     lambda: image_problems(_edit(compose_doc(), lambda d: _svc(d, "redis").update(
         image="redis:latest"))), "redis: image redis:latest is not pinned"),
    ("images", "no tag",
     lambda: image_problems(_edit(compose_doc(), lambda d: _svc(d, "jaeger").update(
         image="jaegertracing/all-in-one"))), "not pinned"),
    ("images", "a tag without a version",
     lambda: image_problems(_edit(compose_doc(), lambda d: _svc(d, "grafana").update(
         image="grafana/grafana:main"))), "no version"),
    ("images", "a MinIO image without a RELEASE tag",
     lambda: image_problems(_edit(compose_doc(), lambda d: _svc(d, "minio-2").update(
         image="quay.io/minio/minio:2025.4"))), "dated RELEASE"),
    ("variables", "a variable .env.example does not list",
     lambda: variable_problems(_edit(raw_compose(), lambda d: _svc(d, "grafana")[
         "environment"].update(GF_SERVER_ROOT_URL="${GRAFANA_URL}")), _env_example()),
     "${GRAFANA_URL} is not"),
    ("variables", "a secret with a value in .env.example",
     lambda: variable_problems(raw_compose(), _env_example().replace(
         "REDIS_PASSWORD=\n", "REDIS_PASSWORD=hunter2\n")), "gives secret REDIS_PASSWORD"),
    ("variables", "a secret compose does not require",
     lambda: variable_problems(yaml.safe_load(COMPOSE_FILE.read_text().replace(
         "${REDIS_PASSWORD:?set REDIS_PASSWORD in deploy/.env}", "${REDIS_PASSWORD}")),
         _env_example()),
     "secret REDIS_PASSWORD is not required"),
    ("dockerfile", "another wheel build command",
     lambda: _dockerfile_problems_with(WHEEL_BUILD, "pip wheel --no-deps"),
     "does not run `python -m build --wheel`"),
    ("dockerfile", "a root runtime",
     lambda: _dockerfile_problems_with("USER 10001:10001", "USER root"), "runs as root"),
    ("dockerfile", "an unpinned runtime base",
     lambda: _dockerfile_problems_with("ARG PYTHON_VERSION=3.11.11",
                                       "ARG PYTHON_VERSION=3.11"), "not a pinned"),
    ("dockerfile", "no health check",
     lambda: _dockerfile_problems_with("HEALTHCHECK", "# HEALTHCHECK"), "no HEALTHCHECK"),
    ("dockerfile", "the stack extra at run time",
     lambda: _dockerfile_problems_with("--find-links=/wheels dfms",
                                       "--find-links=/wheels 'dfms[stack]'"), "stack"),
    ("dockerfile", "a secret in an ENV",
     lambda: _dockerfile_problems_with("ENV PYTHONUNBUFFERED=1",
                                       "ENV S3_SECRET_KEY=x PYTHONUNBUFFERED=1"),
     "secret in a layer"),
    ("dockerfile", "the whole work tree copied",
     lambda: _dockerfile_problems_with("COPY dfms/ dfms/", "COPY . ."), "whole work tree"),
    ("dockerfile", "a package root left out",
     lambda: _dockerfile_problems_with("COPY ring/ ring/\n", ""), "package root ring/"),
    ("dockerfile", "a symlink target left out of the build",
     lambda: _dockerfile_problems_with("COPY api/ api/\n", ""),
     "dfms/gateway/openapi.yaml links to api/openapi.yaml, which the build stage does not"),
    ("dockerfile", "another entrypoint",
     lambda: _dockerfile_problems_with('ENTRYPOINT ["dfms"]',
                                       'ENTRYPOINT ["python", "-m", "dfms"]'), "ENTRYPOINT"),
    ("dockerfile", "no OCI version label",
     lambda: _dockerfile_problems_with("org.opencontainers.image.version=", "version="),
     "org.opencontainers.image.version"),
    ("dockerfile", "the dfms up data dir sent to the builder",
     lambda: dockerfile_problems(_dockerfile(), DOCKERIGNORE.read_text().replace(
         ".dfms\n", "")), ".dfms would reach the builder"),
    ("health", "a health check on the wrong port",
     lambda: health_problems(_set_env(compose_doc(), "gc-worker", HEALTH_URL_VAR,
                                      "http://127.0.0.1:9194/health")),
     "gc-worker: health check http://127.0.0.1:9194/health is not http://127.0.0.1:9193"),
    ("health", "the image default on a service that serves elsewhere",
     lambda: health_problems(_drop_env(compose_doc(), "event-relay", HEALTH_URL_VAR)),
     "event-relay: health check"),
    ("health", "ops routes on loopback",
     lambda: health_problems(_set_env(compose_doc(), "health-monitor", "DFMS_OPS__HOST",
                                      "127.0.0.1")), "Prometheus cannot scrape"),
    ("policy", "no restart policy",
     lambda: policy_problems(_edit(compose_doc(), lambda d: _svc(d, "event-relay").pop(
         "restart"))), "event-relay: no restart policy"),
    ("policy", "no resource limits",
     lambda: policy_problems(_edit(compose_doc(), lambda d: _svc(d, "postgres").pop(
         "deploy"))), "postgres: no cpu and memory limits"),
    ("scrape", "a DFMS service left unscraped",
     lambda: scrape_problems(compose_doc(), {**_prometheus_targets(),
                                             "dfms-gc-worker": []}),
     "does not scrape gc-worker:9193"),
    ("scrape", "a port changed in the service but not in Prometheus",
     lambda: scrape_problems(_set_env(compose_doc(), "replication-manager",
                                      "DFMS_REPLICATION__OPS_PORT", "9296"),
                             _prometheus_targets()),
     "does not scrape replication-manager:9296"),
    ("scrape", "a target that is no service",
     lambda: scrape_problems(compose_doc(), {**_prometheus_targets(),
                                             "extra": ["metadata-service:9100"]}),
     "metadata-service:9100: no such service"),
    ("references", "a rule file not mounted",
     lambda: reference_problems(_edit(compose_doc(), lambda d: _svc(d, "prometheus")[
         "volumes"].remove(
         "../observability/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"))),
     "/etc/prometheus/alerts.yml (rule_files) is not mounted"),
    ("references", "the certificates not mounted",
     lambda: reference_problems(_edit(compose_doc(), lambda d: _svc(d, "traefik")[
         "volumes"].remove("./certs:/certs:ro"))), "TLS certificate"),
    ("references", "dashboards not mounted",
     lambda: reference_problems(_edit(compose_doc(), lambda d: _svc(d, "grafana")[
         "volumes"].remove(
         "../observability/grafana/dashboards:/var/lib/grafana/dashboards:ro"))),
     "dashboard provider"),
    ("proxy", "a gateway missing from the proxy",
     lambda: proxy_problems(_edit(compose_doc(), lambda d: d["services"].update(
         {"gateway-3": copy.deepcopy(_svc(d, "gateway-2"))}))),
     "gateway http://gateway-3:8080 is not an upstream"),
    ("proxy", "a gateway that does not trust the proxy",
     lambda: proxy_problems(_drop_env(compose_doc(), "gateway-2",
                                      "DFMS_GATEWAY__TRUSTED_PROXIES")),
     "gateway-2: does not trust the proxy's network 10.201.0.0/24"),
    ("proxy", "a gateway that trusts the backend network too",
     lambda: proxy_problems(_set_env(compose_doc(), "gateway-1", "DFMS_GATEWAY__TRUSTED_PROXIES",
                                     "10.201.0.0/24,172.16.0.0/12")),
     "gateway-1: trusts 172.16.0.0/12, outside the proxy's networks"),
    ("proxy", "a proxy network without a fixed subnet",
     lambda: proxy_problems(_edit(compose_doc(), lambda d: d["networks"].update(edge={}))),
     "no fixed subnet"),
    ("proxy", "a gateway port changed",
     lambda: proxy_problems(_set_env(compose_doc(), "gateway-2", "DFMS_GATEWAY__PORT",
                                     "8081")), "gateway-2:8081"),
    ("ring", "a zone that does not match the node's label",
     lambda: ring_problems(_edit(compose_doc(), lambda d: _svc(d, "minio-3")["labels"].update(
         {"dfms.zone": "zone-x"}))), "minio-3: registered in zone zone-c, labelled zone-x"),
    ("ring", "a MinIO node nobody registers",
     lambda: ring_problems(_edit(compose_doc(), lambda d: d["services"].update(
         {"minio-5": copy.deepcopy(_svc(d, "minio-4"))}))), "the MinIO services are"),
    ("ring", "a service that starts before a node is registered",
     lambda: ring_problems(_edit(compose_doc(), lambda d: _svc(d, "health-monitor")[
         "depends_on"].pop("register-minio-3"))),
     "health-monitor: does not wait for register-minio-3"),
    ("ring", "a registration before the schema exists",
     lambda: ring_problems(_edit(compose_doc(), lambda d: _svc(d, "register-minio-1")[
         "depends_on"].pop("migrate"))), "register-minio-1: does not wait for migrate"),
    ("keys", "no job creates the first keys",
     lambda: keys_problems(_edit(compose_doc(), lambda d: _svc(d, "keys")["command"].remove(
         "--if-missing"))), "0 jobs run `dfms keys generate --if-missing`"),
    ("keys", "a gateway reading keys from another volume",
     lambda: keys_problems(_replace_volume(compose_doc(), "gateway-2",
                                           "dfms-keys:/var/lib/dfms/keys:ro",
                                           "gateway-keys:/var/lib/dfms/keys:ro")),
     "gateway-2: reads keys from gateway-keys:/var/lib/dfms/keys"),
    ("keys", "a gateway that starts before the keys exist",
     lambda: keys_problems(_edit(compose_doc(), lambda d: _svc(d, "gateway-1")[
         "depends_on"].pop("keys"))), "gateway-1: does not wait for keys"),
    ("ring", "another bucket for DFMS",
     lambda: ring_problems(_edit(compose_doc(), lambda d: _svc(d, "chunk-service")[
         "environment"].update(DFMS_S3__BUCKET="chunks"))), "DFMS uses chunks"),
    ("kafka", "topics with more replicas than brokers",
     lambda: kafka_problems(_set_env(compose_doc(), "migrate",
                                     "DFMS_KAFKA__TOPIC_REPLICATION_FACTOR", "3"), set()),
     "migrate: topics with replication factor 3, but 1 broker(s) run"),
    ("kafka", "a broker that is no service",
     lambda: kafka_problems(_set_env(compose_doc(), "event-relay",
                                     "DFMS_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092"), set()),
     "event-relay: Kafka kafka:9092"),
    ("kafka", "a broker only another profile runs",
     lambda: kafka_problems(compose_doc({"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092"}),
                            set()), "kafka-2:9092 is no running service"),
    ("kafka", "min.insync.replicas above the topics' replication",
     lambda: kafka_problems(compose_doc({"KAFKA_MIN_INSYNC_REPLICAS": "2"}), set()),
     "kafka-1: min.insync.replicas 2 > the topics' replication factor 1"),
    ("otel", "traces sent to no collector",
     lambda: otel_problems(_set_env(compose_doc(), "gateway-1", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                    "http://otel:4318")), "gateway-1: OTEL_EXPORTER"),
    ("alert_metrics", "a metric the code does not export",
     lambda: metric_problems(_alerts_with("rate(dfms_chunks_under_replicated[5m]) > 0")),
     "dfms_chunks_under_replicated is not exported"),
    ("alert_metrics", "a bare histogram name",
     lambda: metric_problems(_alerts_with("dfms_http_request_seconds > 1")),
     "dfms_http_request_seconds is not exported"),
    ("alert_metrics", "a label the metric lacks",
     lambda: metric_problems(_alerts_with('dfms_node_health{nodes="minio-1"} == 1')),
     "dfms_node_health has no label nodes"),
    ("alert_metrics", "grouping by a label the series lack",
     lambda: metric_problems(_alerts_with("sum by (node) (dfms_outbox_backlog) > 1")),
     "groups by node"),
    ("alert_metrics", "a service name that does not exist",
     lambda: metric_problems(_alerts_with(
         'dfms_service_passes_total{service="replication-manager"} > 0')),
     "no service is named 'replication-manager'"),
    ("alert_rules", "an alert without severity",
     lambda: alert_rule_problems({"groups": [{"rules": [
         {"alert": "X", "expr": "up == 0", "annotations": {"summary": "s"}}]}]}),
     "alert X: no severity"),
    ("dashboard_metrics", "a panel query on a missing metric",
     lambda: metric_problems(dashboard_exprs({"panels": [{"title": "t", "targets": [
         {"refId": "A", "expr": "sum(rate(dfms_uploads_total[$__rate_interval]))"}]}]})),
     "dfms_uploads_total is not exported"),
    ("dashboard", "a panel on a data source that is not provisioned",
     lambda: dashboard_problems({"panels": [{"title": "t", "datasource": {"uid": "prom"},
                                             "targets": []}]}), "'prom' is not provisioned"),
]


def test_every_rule_has_a_mutation() -> None:
    assert {rule for rule, *_ in MUTATIONS} == set(RULES)


@pytest.mark.parametrize(("rule", "what", "problems", "expected"), MUTATIONS,
                         ids=[f"{rule}: {what}" for rule, what, *_ in MUTATIONS])
def test_rule_catches_a_broken_copy(rule: str, what: str, problems: Callable[[], Problems],
                                    expected: str) -> None:
    found = problems()
    assert any(expected in p for p in found), (rule, what, found)


def test_docs_name_no_path_outside_the_repository() -> None:
    """The README and docs are read from a clone: nothing may point outside it."""
    outside = re.compile(r"\.\./shared|/work/|\.\./\.\.")
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        hits = [line for line in doc.read_text().splitlines() if outside.search(line)]
        assert hits == [], f"{doc.name}: {hits}"
