"""dfms.gateway.routes_web: the web app's page and assets, their caching and security
headers, and the JSON envelope for what is not there (through the gateway's error
middleware, as in the real app)."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dfms.gateway import routes_web
from dfms.gateway.middleware import error_middleware, request_id_middleware


def _app(bundle: routes_web.WebBundle | None = None) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    routes_web.setup_routes(app, bundle)
    return app


def test_the_shipped_app_is_versioned_and_its_page_names_every_module() -> None:
    bundle = routes_web.load_bundle()
    page = bundle.index.body.decode()
    assert routes_web.BASE_MARKER not in page and "MODULE_PRELOADS" not in page
    base = f"/assets/{bundle.version}/"
    assert f'src="{base}js/main.js"' in page and f'href="{base}app.css"' in page
    modules = {name for name in bundle.assets if name.endswith(".js")}
    assert modules and all(f'href="{base}{name}"' in page for name in modules)
    # No inline script or style: the CSP would refuse them.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "<style" not in page
    assert " style=" not in page and " onclick=" not in page


def test_a_change_to_any_asset_changes_the_version() -> None:
    files = {"index.html": b"<p>%ASSET_BASE%</p>", "js/a.js": b"1", "app.css": b"x"}
    one = routes_web.load_bundle(files)
    two = routes_web.load_bundle({**files, "js/a.js": b"2"})
    assert one.version != two.version
    assert one.index.body == f"<p>/assets/{one.version}</p>".encode()


async def test_page_and_assets_are_served_with_caching_and_security_headers() -> None:
    bundle = routes_web.load_bundle()
    async with TestClient(TestServer(_app(bundle))) as client:
        for path in ("/", "/app/folder/123", "/app/share/abc/def"):
            resp = await client.get(path)
            assert resp.status == 200, path
            assert resp.content_type == "text/html"
            assert await resp.read() == bundle.index.body
            assert resp.headers["Cache-Control"] == "no-cache"
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp and "http" not in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["X-Frame-Options"] == "DENY"
        resp = await client.get(f"/assets/{bundle.version}/js/main.js")
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        etag = resp.headers["ETag"]
        again = await client.get(f"/assets/{bundle.version}/js/main.js",
                                 headers={"If-None-Match": etag})
        assert again.status == 304 and await again.read() == b""
        css = await client.get(f"/assets/{bundle.version}/app.css")
        assert css.content_type == "text/css"
        # A page from before an upgrade gets today's file, to be revalidated.
        old = await client.get("/assets/0000000000000000/js/main.js")
        assert old.status == 200 and old.headers["Cache-Control"] == "no-cache"


async def test_what_is_not_there_is_the_json_404() -> None:
    bundle = routes_web.load_bundle()
    async with TestClient(TestServer(_app(bundle))) as client:
        for path in (f"/assets/{bundle.version}/js/nope.js",
                     f"/assets/{bundle.version}/../routes_web.py",
                     f"/assets/{bundle.version}/", "/favicon.ico", "/apps"):
            resp = await client.get(path)
            assert resp.status == 404, path
            body = await resp.json()
            assert body["error"]["code"] == "not_found", path
