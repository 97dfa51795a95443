"""The storage-node rules of dfms.nodes, which the admin API and `dfms nodes register` share."""

from __future__ import annotations

import contextlib
import io

import pytest

from dfms.cli import build_parser
from dfms.nodes import InvalidNode, NodeSpec, node_spec


def test_a_node_is_made_canonical() -> None:
    assert node_spec("minio-9", " http://10.0.0.9:9000/ ", " rack 2 ", 2.5) == NodeSpec(
        "minio-9", "http://10.0.0.9:9000", "rack 2", 2.5)
    assert node_spec("n", "HTTPS://[2001:DB8::1]:443", "z").endpoint == "https://[2001:db8::1]:443"
    assert node_spec("0" * 63, "http://h", "z" * 64, 10**3).weight == 1000.0


# The same cases as the admin API's test_add_node_validates (tests/integration/test_admin.py).
BAD = {
    "id uppercase": ("id", {"node_id": "Node-X"}),
    "id underscore": ("id", {"node_id": "node_x"}),
    "id leading dash": ("id", {"node_id": "-node"}),
    "id too long": ("id", {"node_id": "n" * 64}),
    "id empty": ("id", {"node_id": ""}),
    "id trailing newline": ("id", {"node_id": "node\n"}),
    "endpoint scheme": ("endpoint", {"endpoint": "ftp://127.0.0.1:21"}),
    "endpoint no host": ("endpoint", {"endpoint": "http://"}),
    "endpoint path": ("endpoint", {"endpoint": "http://127.0.0.1:8333/bucket"}),
    "endpoint query": ("endpoint", {"endpoint": "http://127.0.0.1:8333?x=1"}),
    "endpoint credentials": ("endpoint", {"endpoint": "http://u:p@127.0.0.1:8333"}),
    "endpoint bad port": ("endpoint", {"endpoint": "http://127.0.0.1:99999"}),
    "endpoint not url": ("endpoint", {"endpoint": "not a url"}),
    "endpoint too long": ("endpoint", {"endpoint": "http://h" + "x" * 2048}),
    "zone empty": ("zone", {"zone": "  "}),
    "zone too long": ("zone", {"zone": "z" * 65}),
    "zone control character": ("zone", {"zone": "a\tb"}),
    "weight zero": ("weight", {"weight": 0}),
    "weight negative": ("weight", {"weight": -1.5}),
    "weight nan": ("weight", {"weight": float("nan")}),
    "weight infinite": ("weight", {"weight": float("inf")}),
    "weight huge int": ("weight", {"weight": 10**400}),
}


@pytest.mark.parametrize(("field", "change"), BAD.values(), ids=BAD.keys())
def test_bad_nodes_are_refused_naming_the_field(field: str, change: dict[str, object]) -> None:
    args = {"node_id": "node-9", "endpoint": "http://127.0.0.1:1", "zone": "z", **change}
    with pytest.raises(InvalidNode) as info:
        node_spec(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"'{field}' ")  # the admin API's message


def _parse_error(args: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        build_parser().parse_args(args)
    assert info.value.code == 2
    return err.getvalue().strip().splitlines()[-1]


def test_the_cli_parses_a_node_by_the_same_rules() -> None:
    args = build_parser().parse_args(["nodes", "register", "minio-1", "--endpoint",
                                      "http://minio-1:9000/", "--zone", "zone-a"])
    assert (args.node_id, args.endpoint, args.zone, args.weight) == (
        "minio-1", "http://minio-1:9000", "zone-a", 1.0)
    assert build_parser().parse_args(["nodes", "register", "m", "--endpoint", "http://m",
                                      "--zone", "z", "--weight", "0.5"]).weight == 0.5
    base = ["nodes", "register", "m", "--endpoint", "http://m:9000", "--zone", "z"]
    cases = {("Bad", None): "argument ID: must be 1-63 lowercase letters",
             ("m", ("--endpoint", "http://m:9000/x")): "argument --endpoint: must be an http(s)",
             ("m", ("--zone", " ")): "argument --zone: must be 1-64 printable characters",
             ("m", ("--weight", "0")): "argument --weight: must be a finite number > 0",
             ("m", ("--weight", "heavy")): "argument --weight: must be a finite number > 0"}
    for (node_id, option), message in cases.items():
        args = [*base[:2], node_id, *base[3:], *(option or ())]
        assert message in _parse_error(args), args
    assert "required: --zone" in _parse_error(base[:5])


def test_a_data_dir_is_an_absolute_printable_path() -> None:
    assert node_spec("n", "http://h", "z").data_dir is None
    assert node_spec("n", "http://h", "z", data_dir="/srv/s3/n").data_dir == "/srv/s3/n"
    for bad in ("", "srv/s3/n", "./n", "/a\nb", "/" + "x" * 4096):
        with pytest.raises(InvalidNode) as info:
            node_spec("n", "http://h", "z", data_dir=bad)
        assert info.value.field == "data_dir", bad


def test_the_cli_takes_a_data_dir() -> None:
    base = ["nodes", "register", "m", "--endpoint", "http://m:9000", "--zone", "z"]
    assert build_parser().parse_args(base).node_data_dir is None
    args = build_parser().parse_args([*base, "--local-data-dir", "/srv/m"])
    assert args.node_data_dir == "/srv/m"
    assert "argument --local-data-dir: must be an absolute path" in _parse_error(
        [*base, "--local-data-dir", "relative/m"])
