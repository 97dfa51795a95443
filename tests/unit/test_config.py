from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dfms.config import (
    MIB,
    Config,
    dump_yaml,
    load_config,
    markdown_table,
    sample_yaml,
    to_dict,
)
from dfms.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_typed() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.replication.replicas_n == 3 and cfg.replication.write_quorum_w == 2
    assert cfg.chunker.avg_size_bytes == 1 * MIB
    assert cfg.gateway.port == 8080


def test_layers_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("gateway:\n  port: 9000\nchunker:\n  max_size_bytes: 8MiB\n")
    cfg = load_config(path, env={"DFMS_GATEWAY__PORT": "9100"})
    assert cfg.gateway.port == 9100  # environment wins over the file
    assert cfg.chunker.max_size_bytes == 8 * MIB  # sizes accept units


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("logging:\n  level: DEBUG\n")
    assert load_config(env={"DFMS_CONFIG": str(path)}).logging.level == "DEBUG"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.gateway.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("env", "key", "fragment"), [
    ({"DFMS_GATEWAY__PORT": "eighty"}, "gateway.port", "expected an integer"),
    ({"DFMS_GATEWAY__PORT": "70000"}, "gateway.port", "<= 65535"),
    ({"DFMS_CHUNKER__ALGORITHM": "md5"}, "chunker.algorithm", "one of fastcdc, rabin"),
    ({"DFMS_REPLICATION__WRITE_QUORUM_W": "4"}, "replication.write_quorum_w",
     "<= replication.replicas_n"),
    ({"DFMS_CHUNKER__MIN_SIZE_BYTES": "2MiB"}, "chunker.avg_size_bytes", "strictly between"),
    ({"DFMS_POSTGRES__CONNECT_TIMEOUT_S": "soon"}, "postgres.connect_timeout_s",
     "expected a number"),
    ({"DFMS_GATEWAY__PROT": "1"}, "gateway.prot", "unknown option"),
    ({"DFMS_GATWAY__PORT": "1"}, "gatway", "unknown section"),
    ({"DFMS_GATEWAY__PORT": "4MiB"}, "gateway.port", "expected an integer"),
    ({"DFMS_CHUNKER__AVG_SIZE_BYTES": "1000000"}, "chunker.avg_size_bytes", "power of two"),
    ({"DFMS_GATEWAY__TRUSTED_PROXIES": "10.0.0.0/8,10.0.0.300"}, "gateway.trusted_proxies",
     "'10.0.0.300' is not an IP network"),
    ({"DFMS_GATEWAY__TRUSTED_PROXIES": "traefik"}, "gateway.trusted_proxies", "CIDRs"),
    ({"DFMS_KAFKA__TOPIC_REPLICATION_FACTOR": "0"}, "kafka.topic_replication_factor", ">= 1"),
])
def test_invalid_values_name_key_value_and_what_is_allowed(
        env: dict[str, str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert info.value.key == key
    assert fragment in str(info.value)
    assert key in str(info.value)


def test_bad_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("gateway: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_secrets_are_masked_when_shown() -> None:
    cfg = load_config(env={"DFMS_POSTGRES__DSN": "postgresql://u:hunter2@h:1/db",
                           "DFMS_S3__SECRET_KEY": "s3cret"})
    shown = dump_yaml(cfg, mask_secrets=True)
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "postgresql://u:***@h:1/db" in shown
    assert to_dict(cfg)["s3"]["secret_key"] == "s3cret"


def test_list_options_from_yaml_or_a_separated_string(tmp_path: Path) -> None:
    assert Config().gateway.trusted_proxies == ()
    env = {"DFMS_GATEWAY__TRUSTED_PROXIES": " 10.0.0.0/8, 172.16.0.1 ::1/128,"}
    assert load_config(env=env).gateway.trusted_proxies == ("10.0.0.0/8", "172.16.0.1",
                                                             "::1/128")
    assert load_config(env={"DFMS_GATEWAY__TRUSTED_PROXIES": ""}).gateway.trusted_proxies == ()
    path = tmp_path / "c.yaml"
    path.write_text("gateway:\n  trusted_proxies: [10.1.0.0/16, 'fd00::/8']\n")
    assert load_config(path, env={}).gateway.trusted_proxies == ("10.1.0.0/16", "fd00::/8")
    path.write_text("gateway:\n  trusted_proxies: {a: 1}\n")
    with pytest.raises(ConfigError, match="expected a list of strings"):
        load_config(path, env={})
    path.write_text("gateway:\n  trusted_proxies: [10, 11]\n")  # YAML numbers, not CIDRs
    with pytest.raises(ConfigError, match="expected a list of strings"):
        load_config(path, env={})
    assert to_dict(load_config(env=env))["gateway"]["trusted_proxies"] == [
        "10.0.0.0/8", "172.16.0.1", "::1/128"]


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(env={"DFMS_GATEWAY__PORT": "1234",
                           "DFMS_GATEWAY__TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8",
                           "DFMS_KAFKA__TOPIC_REPLICATION_FACTOR": "3"})
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path, env={}) == cfg


def test_committed_sample_lists_every_option_with_its_default() -> None:
    committed = (REPO / "deploy" / "dfms.sample.yaml").read_text()
    hint = "regenerate with: dfms config sample > deploy/dfms.sample.yaml"
    assert committed == sample_yaml(), hint
    path = REPO / "deploy" / "dfms.sample.yaml"
    assert load_config(path, env={}) == Config()


def test_a_service_fails_at_start_up_naming_the_bad_key() -> None:
    env = {"DFMS_GATEWAY__PORT": "not-a-port", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "dfms", "gateway"], capture_output=True,
                            text=True, env=env, timeout=60, check=False)
    assert result.returncode == 2
    assert "gateway.port='not-a-port'" in result.stderr
    assert "expected an integer" in result.stderr


def test_readme_config_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    hint = "regenerate the README table with `dfms config markdown`"
    assert markdown_table() in readme, hint
    for section, values in to_dict(Config()).items():
        for name in values:
            assert f"`{section}.{name}`" in readme, f"{section}.{name} missing from README"
