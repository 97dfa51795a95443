"""Schemathesis against the live gateway: no 5xx (but 507 ``quota_exceeded``, see
CONFIG), every response conforms to api/openapi.yaml (status code, content type,
headers, body schema), and the spec is exact about what a request may be: a request
the schema forbids is refused, one it allows is accepted (but where CONFIG says why
not), and a method a path does not declare answers 405 with the right ``Allow``.

When a check fails, fix the spec if it is wrong; when the code is wrong (any 5xx, or
a shape no spec should promise), fix the code. Nothing is excluded but the live event
stream (see CONFIG): every other operation of the spec is exercised, with every check
below.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tests.support.api import Api
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

ST = Path(sys.executable).parent / "st"
SPEC = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance",
          # The request side: schema-invalid data is refused (4xx), schema-valid data is
          # accepted (see CONFIG), undeclared methods answer 405 with the declared ones
          # in `Allow`, a missing required header is refused, auth is enforced, and a
          # deleted resource is gone while a created one can be fetched.
          "negative_data_rejection", "positive_data_acceptance", "unsupported_method",
          "allow_header_conformance", "missing_required_header", "ignored_auth",
          "use_after_free", "ensure_resource_availability")
# All four phases. `stateful` is the only one that follows the links schemathesis
# infers from responses (an upload's Location and id, a new folder's id) and those
# api/openapi.yaml declares (an upload to its versions and share links, a share link
# to /s/{token}, a multipart init to its parts, a delete to the trash), so it is what
# exercises GET/PATCH/DELETE/download of items that exist: 200s, 206 ranges, 304, 204;
# the stateless phases mostly meet 404 on those paths.
PHASES = "examples,coverage,fuzzing,stateful"
# Test cases per operation and phase: the run takes ~2 min on 2 cores (49 operations).
MAX_EXAMPLES = 100
SEED = 1
RUN_TIMEOUT_S = 480.0
REQUEST_TIMEOUT_S = 60
# 507 `quota_exceeded` is the client's doing, not a server failure: the fuzzer announces
# multipart uploads larger than its user's quota (10 GiB by default) and must get it.
# Every other 5xx still fails the run.
#
# positive_data_acceptance expects schema-valid requests to succeed (or 401, 403, 404,
# 409, 429). Some validity is more than a JSON Schema can say; there, and only there,
# the answers that say so are expected too:
# - a cursor is opaque: only one the server issued is valid (400 invalid_cursor);
# - names follow dfms/gateway/names.py (no control characters, bidi overrides, ...),
#   passwords its strength rules, search ranges after <= before (400);
# - an upload needs a name (X-File-Name, or a multipart form's filename) and its bytes
#   must hash to X-Content-SHA256 (400, 422); If-Match names a version (412);
# - multipart complete needs the parts uploaded (400); a Range must fit the file (416);
#   a share link ends after its download limit or expiry (410);
# - a chunk must hash to the SHA-256 of its path (400 digest_mismatch); a commit needs
#   chunks the caller holds (409), sizes that add up (400), the content's SHA-256 (422).
#
# GET /api/v1/events (streamEvents) answers a Server-Sent Events stream that ends only when
# the client goes: schemathesis reads whole bodies and would wait for its end. Its answers
# (statuses, content type, error envelope) are checked by test_events_stream.py; its
# ticket endpoint is exercised here.
CONFIG = """\
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "507"]

[[operations]]
include-operation-id = ["streamEvents"]
enabled = false

[[operations]]
include-operation-id = ["listFiles", "getFolderContents", "listTrash", "search", "register",
                        "createFolder", "updateFolder", "updateFile",
                        "initMultipartUpload", "completeMultipartUpload"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403",
                                                     "404", "409", "429", "5xx"]

[[operations]]
include-operation-id = ["uploadFile", "putMultipartPart"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403",
                                                     "404", "409", "412", "422", "429",
                                                     "5xx"]

[[operations]]
include-operation-id = ["putChunk", "commitFile"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403",
                                                     "404", "409", "412", "422", "429",
                                                     "5xx"]

[[operations]]
include-operation-id = ["downloadFile", "downloadFileVersion", "downloadSharedFile"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404",
                                                     "409", "410", "416", "429", "5xx"]
"""


async def _run(*args: str, cwd: Path, timeout_s: float) -> tuple[int | None, str]:
    """Exit code (None after a timeout) and the combined output, however it ended."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    chunks: list[bytes] = []

    async def drain() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            chunks.append(chunk)

    reader = asyncio.create_task(drain())
    code: int | None
    try:
        async with asyncio.timeout(timeout_s):
            code = await proc.wait()
            await reader
    except TimeoutError:
        proc.kill()
        await proc.wait()
        await reader
        code = None
    return code, b"".join(chunks).decode(errors="replace")


async def test_gateway_conforms_to_its_openapi_description(
        cluster: ClusterHandle, api: Api, tmp_path: Path) -> None:
    assert ST.exists(), f"schemathesis is not installed ({ST} missing): pip install -e .[dev]"
    # The gateway serves the very document checked here.
    status, served, _ = await api.request("GET", "/openapi.yaml")
    assert status == 200 and served == SPEC.read_bytes(), "the gateway serves another spec"
    # A fresh user, so results do not depend on what other tests stored.
    user = await api.register()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")

    started = time.monotonic()
    code, output = await _run(
        str(ST), "--config-file", str(config), "run", str(SPEC), "--url", cluster.gateway_url,
        "-H", f"Authorization: Bearer {user.access_token}",
        "--checks", ",".join(CHECKS), "--phases", PHASES,
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--generation-database", "none", "--no-color",
        cwd=tmp_path, timeout_s=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    if code is None:
        pytest.fail(f"schemathesis did not finish within {RUN_TIMEOUT_S:.0f}s:\n{output}",
                    pytrace=False)
    if code != 0:
        pytest.fail(f"schemathesis exited with {code} after {elapsed:.0f}s:\n{output}",
                    pytrace=False)
