"""api/openapi.yaml: valid OpenAPI 3.1, internally consistent, shipped in the package,
served by the gateway, and listing exactly the routes of the gateway's router."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import dfms
from dfms.config import load_config
from dfms.gateway import routes_openapi
from dfms.gateway.app import build_app
from dfms.keys import generate_key

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "api" / "openapi.yaml"
PACKAGED_SPEC = ROOT / "dfms" / "gateway" / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
BEARER = [{"bearerAuth": []}]
# Paths the rate limiter does not count (dfms.gateway.ratelimit.UNLIMITED_PATHS).
UNLIMITED = {"/api/v1/openapi.yaml"}
# Documented 4xx/5xx answers that are not the error envelope.
NON_ENVELOPE_ERRORS = {("/ready", "get", "503")}
ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    doc = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), "api/openapi.yaml is not a YAML mapping"
    return doc


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref``s until a non-reference node."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert isinstance(ref, str) and ref.startswith("#/"), f"non-local $ref {ref!r}"
        assert ref not in seen, f"$ref cycle through {ref}"
        seen.add(ref)
        node = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
            node = node[part]
    return node


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(path, method, operation, path item) for every operation."""
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method], item


def _walk(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}/{i}")


def _schemas(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every top-level Schema Object: components.schemas and every ``schema`` field."""
    for name, schema in spec["components"]["schemas"].items():
        yield f"#/components/schemas/{name}", schema
    for where, node in _walk(spec, "#"):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            yield f"{where}/schema", node["schema"]


# --- the document ------------------------------------------------------------------------

def test_is_openapi_31_with_the_package_version(spec: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", str(spec["openapi"])), spec["openapi"]
    assert spec["info"]["version"] == dfms.__version__
    # Full router paths in `paths`, so the server adds no prefix.
    assert spec["servers"] == [{"url": "/"}]


def test_matches_the_openapi_31_schema(spec: dict[str, Any]) -> None:
    # The OAS 3.1 JSON Schema (2022-10-07) that schemathesis itself validates with.
    pytest.importorskip("schemathesis")
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    errors = [f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message[:300]}"
              for e in OPENAPI_31_VALIDATOR.iter_errors(spec)]
    assert not errors, "api/openapi.yaml is not valid OpenAPI 3.1:\n" + "\n".join(errors)


def test_every_schema_is_valid_json_schema_2020_12(spec: dict[str, Any]) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    dialect = "https://json-schema.org/draft/2020-12/schema"
    errors = []
    for where, schema in _schemas(spec):
        try:
            jsonschema_rs.meta.validate({"$schema": dialect, **schema})
        except Exception as exc:  # jsonschema_rs.ValidationError or a bad regex
            errors.append(f"{where}: {exc}")
    assert not errors, "invalid JSON Schemas:\n" + "\n".join(errors)


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    bad = []
    for where, node in _walk(spec, "#"):
        if isinstance(node, dict) and "$ref" in node:
            try:
                resolve(spec, node)
            except AssertionError as exc:
                bad.append(f"{where}: {exc}")
    assert not bad, "\n".join(bad)


def test_path_templates_match_path_parameters(spec: dict[str, Any]) -> None:
    problems = []
    for path, method, op, item in operations(spec):
        params = [resolve(spec, p) for p in [*item.get("parameters", []),
                                             *op.get("parameters", [])]]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        templated = set(re.findall(r"\{([^}]+)\}", path))
        if in_path != templated:
            problems.append(f"{method.upper()} {path}: template names {sorted(templated)}, "
                            f"path parameters {sorted(in_path)}")
        problems += [f"{method.upper()} {path}: path parameter {p['name']} is not required"
                     for p in params if p["in"] == "path" and p.get("required") is not True]
        keys = [(p["in"], p["name"].lower() if p["in"] == "header" else p["name"])
                for p in params]
        if len(keys) != len(set(keys)):
            problems.append(f"{method.upper()} {path}: a parameter is declared twice")
    assert not problems, "\n".join(problems)


def test_operation_conventions(spec: dict[str, Any]) -> None:
    """What every operation must have, so new paths follow the same rules."""
    problems: list[str] = []
    ids: dict[str, str] = {}
    schemes = set(spec["components"]["securitySchemes"])
    for path, method, op, _ in operations(spec):
        label = f"{method.upper()} {path}"
        if method == "head":
            problems.append(f"{label}: HEAD is implicit for GET; do not list it")
        op_id = op.get("operationId")
        if not op_id:
            problems.append(f"{label}: no operationId")
        elif op_id in ids:
            problems.append(f"{label}: operationId {op_id} also names {ids[op_id]}")
        else:
            ids[op_id] = label
        security = op.get("security")
        if security is None:
            problems.append(f"{label}: declare `security` explicitly ([] or bearerAuth)")
        else:
            problems += [f"{label}: unknown security scheme {name}"
                         for req in security for name in req if name not in schemes]
        responses = {str(code): resolve(spec, r) for code, r in op["responses"].items()}
        if security and "401" not in responses:
            problems.append(f"{label}: protected but documents no 401")
        if path.startswith("/api/v1/") and path not in UNLIMITED:
            problems += [f"{label}: rate limited but documents no {code}"
                         for code in ("429", "500", "503") if code not in responses]
        for code, response in responses.items():
            where = f"{label} {code}"
            if "X-Request-Id" not in response.get("headers", {}):
                problems.append(f"{where}: no X-Request-Id header")
            if code[0] in "45" and (path, method, code) not in NON_ENVELOPE_ERRORS:
                content = response.get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                if list(content) != ["application/json"] or schema.get("$ref") != ENVELOPE_REF:
                    problems.append(f"{where}: errors answer application/json ErrorEnvelope")
    assert not problems, "\n".join(problems)


# --- shipping and serving ----------------------------------------------------------------

def test_the_package_ships_the_spec() -> None:
    assert PACKAGED_SPEC.is_symlink(), f"{PACKAGED_SPEC} must be a symlink to the spec"
    assert os.readlink(PACKAGED_SPEC) == "../../api/openapi.yaml"
    assert routes_openapi.load_spec() == SPEC_FILE.read_bytes()


async def test_the_gateway_serves_the_spec() -> None:
    app = web.Application()
    routes_openapi.setup_routes(app)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/openapi.yaml")
        assert resp.status == 200
        assert resp.content_type == "application/yaml"
        assert await resp.read() == SPEC_FILE.read_bytes()
        etag = resp.headers["ETag"]
        again = await client.get("/api/v1/openapi.yaml", headers={"If-None-Match": etag})
        assert again.status == 304 and await again.read() == b""
        head = await client.head("/api/v1/openapi.yaml")
        assert head.status == 200 and head.headers["ETag"] == etag


# --- the router and the spec list the same operations ------------------------------------

@pytest.fixture(scope="module")
def router_operations(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    keys_dir = tmp_path_factory.mktemp("keys")
    generate_key(keys_dir)
    config = load_config(env={}, overrides={"auth": {"keys_dir": str(keys_dir)}})
    app = build_app(config)  # connects to nothing until started
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds HEAD to every GET
            continue
        assert route.resource is not None, f"route without a resource: {route!r}"
        found.add((route.method, route.resource.canonical))
    return found


def test_every_route_is_in_the_spec_and_every_operation_is_a_route(
        spec: dict[str, Any], router_operations: set[tuple[str, str]]) -> None:
    documented = {(method.upper(), path) for path, method, _, _ in operations(spec)}
    missing = sorted(router_operations - documented, key=lambda r: (r[1], r[0]))
    stale = sorted(documented - router_operations, key=lambda r: (r[1], r[0]))
    lines = []
    if missing:
        lines.append("routes of the gateway missing from api/openapi.yaml:")
        lines += [f"  {method} {path}" for method, path in missing]
    if stale:
        lines.append("operations in api/openapi.yaml that no route serves:")
        lines += [f"  {method} {path}" for method, path in stale]
    if lines:
        pytest.fail("\n".join(lines), pytrace=False)


def test_no_path_parameter_takes_a_sibling_routes_segment(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """``/files/upload`` is the upload route, never the file whose id is "upload": else
    ``GET /files/upload`` would answer 404 and a 405's ``Allow`` would list the methods
    of ``/files/{file_id}`` too (schemathesis' unsupported_method and
    allow_header_conformance checks)."""
    keys_dir = tmp_path_factory.mktemp("keys")
    generate_key(keys_dir)
    app = build_app(load_config(env={}, overrides={"auth": {"keys_dir": str(keys_dir)}}))
    resources = [r for r in app.router.resources() if r.canonical.startswith("/")]
    static = {r.canonical for r in resources if "{" not in r.canonical}
    taken = sorted((path, r.canonical) for r in resources if "{" in r.canonical
                   for path in static if r.get_info().get("pattern", re.compile("$^"))
                   .fullmatch(path))
    assert not taken, f"path parameters that take a sibling route's path: {taken}"


def test_every_json_request_body_is_closed(spec: dict[str, Any]) -> None:
    """The gateway refuses body fields an operation does not take (http.only_fields);
    the spec says so, at every level, so schemathesis checks it both ways."""
    open_objects = []
    for path, method, op, _ in operations(spec):
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is None:
            continue
        for where, node in _walk(resolve(spec, body["schema"]), f"{method.upper()} {path}"):
            node = resolve(spec, node)
            if isinstance(node, dict) and node.get("type") == "object" and \
                    node.get("additionalProperties") is not False:
                open_objects.append(where)
    assert not open_objects, "request bodies that allow unknown fields:\n" + \
        "\n".join(open_objects)
