"""Where the ``dfms`` user commands keep the gateway's URL and the caller's tokens.

``$XDG_CONFIG_HOME/dfms/credentials.json`` (``~/.config/dfms/...`` without it), mode 0600
in a 0700 directory, written whole to a temporary file and renamed so a reader never sees
half of it. ``DFMS_URL`` and ``DFMS_TOKEN`` override what is stored (a token from the
environment is used as it is: never refreshed, never written).

Refresh tokens are single use, and presenting a spent one revokes the whole family. Two
``dfms`` processes that find the same stale access token must not both refresh it, so a
refresh happens under an exclusive lock on ``credentials.lock`` after re-reading the file
(the loser adopts the winner's new pair).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dfms.client.models import Tokens

ENV_URL = "DFMS_URL"
ENV_TOKEN = "DFMS_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"
# Refresh before a command when the access token has less than this left: a command then
# rarely needs a refresh of its own half-way (which is not coordinated across processes).
REFRESH_MARGIN_S = 300.0


@dataclass(frozen=True, slots=True)
class Credentials:
    url: str
    access_token: str | None = None
    refresh_token: str | None = None
    expires_at: float | None = None  # wall-clock seconds (time.time()) the access token ends
    email: str | None = None
    from_env: bool = False  # DFMS_TOKEN: use as is, never refresh or store

    def with_tokens(self, tokens: Tokens, now: float | None = None) -> Credentials:
        expires = (now or time.time()) + tokens.expires_in if tokens.expires_in else None
        return replace(self, access_token=tokens.access_token,
                       refresh_token=tokens.refresh_token, expires_at=expires)

    def needs_refresh(self, now: float | None = None) -> bool:
        if self.from_env or not self.refresh_token or self.expires_at is None:
            return False
        return (now or time.time()) >= self.expires_at - REFRESH_MARGIN_S


def config_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "dfms"


def credentials_path(env: dict[str, str] | None = None) -> Path:
    return config_dir(env) / "credentials.json"


def load(path: Path) -> Credentials | None:
    """What is stored (None: nothing, or a file that is not ours to read)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    expires = data.get("expires_at")
    return Credentials(data["url"], _str(data.get("access_token")),
                       _str(data.get("refresh_token")),
                       float(expires) if isinstance(expires, int | float) else None,
                       _str(data.get("email")))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def save(path: Path, creds: Credentials) -> None:
    """Write ``creds`` (0600, in a 0700 directory), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = {k: v for k, v in asdict(creds).items() if k != "from_env"}
    # O_EXCL on a fresh name with mode 0600: the tokens are never readable by others,
    # not even for a moment (a umask can only take bits away).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def effective(path: Path, env: dict[str, str] | None = None) -> Credentials | None:
    """The stored credentials with the environment's overrides; None when neither knows
    a URL. Stored tokens go only to the URL they were issued by: a ``DFMS_URL`` naming
    another gateway gets none (the caller is then not signed in there)."""
    env = dict(os.environ) if env is None else env
    stored = load(path)
    url = (env.get(ENV_URL) or "").rstrip("/") or (stored.url if stored else None)
    if env.get(ENV_TOKEN):
        return Credentials(url or DEFAULT_URL, env[ENV_TOKEN], from_env=True)
    if stored is None or url != stored.url:
        return Credentials(url) if url else None
    return stored


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock between ``dfms`` processes of this user (see the module doc)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
