"""The web app (``dfms/web``): plain ES modules and one stylesheet, served by the gateway.

Routes
------
``GET /`` and ``GET /app/{route}``
    ``index.html``: the app routes on the client (``/app/folder/<id>``, ``/app/trash``,
    ``/app/share/<token>``...), so a reload or a bookmark of any of them gets the page.
    ``Cache-Control: no-cache`` with an ETag: a new release is seen on the next load.
``GET /assets/{version}/{asset}``
    Every other file of ``dfms/web``. ``version`` is a digest of all of them, written
    into the index when the routes are set up, so that modules importing each other by
    relative URLs stay under one versioned prefix: under the current version an asset
    is immutable for a year; under an older one (a page loaded before an upgrade) the
    current file is served with ``no-cache``. An unknown asset is the JSON 404.

Nothing is read from disk after start-up (the files are small, a few hundred KiB
at most), and an asset name is only ever a key of that table, never a path.

Every response of these routes carries a Content-Security-Policy that allows only the
gateway's own origin (no inline script or style, no other host), plus ``blob:`` for
images, media and frames: previews and downloads are fetched with the access token
and shown from an object URL the page itself made.

These paths are not under ``/api/v1``, so the rate limiter leaves them alone; they
are shed with the ``requests`` class (cheap, answered from memory).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

from aiohttp import web

from dfms.gateway.errors import not_found
from dfms.gateway.ranges import etag_matches

WEB_PACKAGE = "dfms.web"
INDEX = "index.html"
ASSET_PREFIX = "/assets"
APP_PREFIX = "/app"
# Substituted in index.html with the versioned asset prefix and the modulepreload links.
BASE_MARKER = "%ASSET_BASE%"
PRELOAD_MARKER = "<!--%MODULE_PRELOADS%-->"

CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob:",
    "frame-src 'self' blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Share pages hold a token in their URL: never send it to another site.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".json": "application/json", ".ico": "image/x-icon",
          ".webmanifest": "application/manifest+json"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class WebBundle:
    version: str
    index: Asset
    assets: dict[str, Asset]


def _content_type(name: str) -> str:
    suffix = name[name.rfind("."):] if "." in name else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _asset(name: str, body: bytes) -> Asset:
    return Asset(body, _content_type(name), f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.name.startswith((".", "__")) or entry.name.endswith(".py"):
            continue
        if entry.is_dir():
            files.update(_walk(entry, f"{name}/"))
        else:
            files[name] = entry.read_bytes()
    return files


def load_bundle(files: dict[str, bytes] | None = None) -> WebBundle:
    """The app's files (``dfms/web`` as shipped, unless given), versioned and indexed."""
    files = dict(files if files is not None else _walk(resources.files(WEB_PACKAGE)))
    if INDEX not in files:  # a broken install: say so rather than fail on a KeyError
        raise RuntimeError(f"the web app's {INDEX} is missing from {WEB_PACKAGE}")
    template = files.pop(INDEX).decode("utf-8")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    version = digest.hexdigest()[:16]
    base = f"{ASSET_PREFIX}/{version}"
    # Preloading every module fetches them in parallel rather than import by import.
    preloads = "\n".join(f'  <link rel="modulepreload" href="{base}/{name}">'
                         for name in sorted(files) if name.endswith(".js"))
    page = template.replace(PRELOAD_MARKER, preloads).replace(BASE_MARKER, base)
    return WebBundle(version, _asset(INDEX, page.encode("utf-8")),
                     {name: _asset(name, body) for name, body in files.items()})


def _answer(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": cache_control}
    if etag_matches(request.headers.get("If-None-Match"), asset.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def setup_routes(app: web.Application, bundle: WebBundle | None = None) -> None:
    web_app = bundle or load_bundle()

    async def index(request: web.Request) -> web.Response:
        return _answer(request, web_app.index, REVALIDATE)

    async def asset(request: web.Request) -> web.Response:
        found = web_app.assets.get(request.match_info["asset"])
        if found is None:
            raise not_found("asset")
        current = request.match_info["version"] == web_app.version
        return _answer(request, found, IMMUTABLE if current else REVALIDATE)

    app.router.add_get("/", index)
    app.router.add_get(APP_PREFIX + "/{route:.*}", index)
    app.router.add_get(ASSET_PREFIX + "/{version}/{asset:.+}", asset)
