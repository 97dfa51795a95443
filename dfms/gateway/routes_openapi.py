"""GET /api/v1/openapi.yaml: the gateway's OpenAPI 3.1 description.

The document lives at ``api/openapi.yaml`` in the repository; the package
carries it as ``dfms/gateway/openapi.yaml`` (a symlink in the source tree, a
copy in built wheels), read once when the routes are set up.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

from dfms.gateway.context import API_PREFIX
from dfms.gateway.ranges import etag_matches

SPEC_PATH = f"{API_PREFIX}/openapi.yaml"
SPEC_RESOURCE = "openapi.yaml"
CONTENT_TYPE = "application/yaml"


def load_spec() -> bytes:
    """The OpenAPI document as shipped in the package."""
    return resources.files(__package__).joinpath(SPEC_RESOURCE).read_bytes()


def setup_routes(app: web.Application) -> None:
    spec = load_spec()
    etag = f'"{hashlib.sha256(spec).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}

    async def openapi(request: web.Request) -> web.Response:
        if etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=spec, content_type=CONTENT_TYPE, charset="utf-8",
                            headers=headers)

    app.router.add_get(SPEC_PATH, openapi)
