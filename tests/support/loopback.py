"""A tiny aiohttp server on loopback for unit tests of client code (the SDK, the CLI)."""

from __future__ import annotations

from aiohttp import web


async def fake_gateway(routes: web.RouteTableDef) -> tuple[web.AppRunner, str]:
    """Serve ``routes`` on a free loopback port: the runner (clean it up) and its URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
