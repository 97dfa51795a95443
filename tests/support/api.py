"""A thin HTTP client for the gateway's API, for integration tests."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PASSWORD = "correct horse battery staple"


@dataclass
class ApiUser:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Api:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.session = session

    def url(self, path: str) -> str:
        return f"{self.base}/api/v1{path}" if path.startswith("/") else f"{self.base}/{path}"

    async def register(self, email: str | None = None, password: str = PASSWORD,
                       display_name: str = "Test User") -> ApiUser:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        async with self.session.post(self.url("/auth/register"), json={
                "email": email, "password": password, "display_name": display_name}) as resp:
            body = await resp.json()
            assert resp.status == 201, body
        tokens = body["tokens"]
        return ApiUser(body["user"]["id"], email, password, tokens["access_token"],
                       tokens["refresh_token"], body)

    async def request(self, method: str, path: str, user: ApiUser | None = None,
                      **kw: Any) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        headers = {**(user.headers if user else {}), **kw.pop("headers", {})}
        if isinstance(kw.get("data"), bytes) and len(kw["data"]) > 1024 * 1024:
            kw["data"] = io.BytesIO(kw["data"])  # aiohttp warns on big raw bytes bodies
        async with self.session.request(method, self.url(path), headers=headers,
                                        **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.read()
            return resp.status, body, resp.headers

    async def upload(self, user: ApiUser, name: str, data: bytes,
                     folder_id: str | None = None, **headers: str) -> tuple[int, Any]:
        hdrs = {"X-File-Name": name, "Content-Type": "application/octet-stream", **headers}
        if folder_id:
            hdrs["X-Folder-Id"] = folder_id
        status, body, _ = await self.request("POST", "/files/upload", user, data=data,
                                             headers=hdrs)
        return status, body
