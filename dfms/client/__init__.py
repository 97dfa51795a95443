"""The DFMS Python SDK: a typed async client for the gateway's HTTP API, and a sync wrapper.

It needs only aiohttp (and ``dfms.chunker`` to cut files as the server does); nothing of
the server side is imported. ::

    from dfms.client import DfmsClient, NotFound

    async with DfmsClient("http://127.0.0.1:8080") as dfms:
        await dfms.login("ada@example.com", "correct horse battery staple")
        put = await dfms.put_chunked("footage.mp4")      # sends only missing chunks
        print(put.bytes_read, put.bytes_sent, put.chunks_sent, "/", put.chunks_total)
        await dfms.download(put.file.id, "copy.mp4")    # SHA-256 verified, resumable
        try:
            await dfms.stat("00000000-0000-0000-0000-000000000000")
        except NotFound as e:
            print(e.status, e.code)                      # 404 not_found

Remote paths (``/photos/2024/a.jpg``) resolve through folders with
``dfms.client.resolve(client, path)``; ``make_folders`` is ``mkdir -p``.
``put_chunked(path, cache=ManifestCache())`` does not read a file put before whose stat
(size, times, inode) is unchanged. For scripts, ``dfms.client.sync.Client`` has the same
methods without ``await``.
Errors: every failure is a ``DfmsError`` (``status``, ``code``, ``message``,
``retry_after``); 429/503 and connection failures are retried with backoff, bounded by
``RetryPolicy``.
"""

from dfms.client.client import DfmsClient
from dfms.client.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    DfmsError,
    FileChanged,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    QuotaExceeded,
    RangeNotSatisfiable,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
)
from dfms.client.manifest_cache import ManifestCache
from dfms.client.models import (
    ChunkerInfo,
    File,
    FilePage,
    FileVersion,
    Folder,
    FolderContents,
    PutProgress,
    PutResult,
    SearchHit,
    SearchPage,
    Share,
    SharePage,
    StorageUsage,
    Tokens,
    TrashItem,
    TrashPage,
    User,
)
from dfms.client.paths import Entry, make_folders, resolve, resolve_folder, split_path
from dfms.client.retry import RetryPolicy

__all__ = [
    "BadRequest",
    "ChecksumMismatch",
    "ChunkerInfo",
    "Conflict",
    "DfmsClient",
    "DfmsError",
    "Entry",
    "File",
    "FileChanged",
    "FilePage",
    "FileVersion",
    "Folder",
    "FolderContents",
    "Forbidden",
    "ManifestCache",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PutProgress",
    "PutResult",
    "QuotaExceeded",
    "RangeNotSatisfiable",
    "RateLimited",
    "RetryPolicy",
    "SearchHit",
    "SearchPage",
    "ServerError",
    "Share",
    "SharePage",
    "StorageUsage",
    "Tokens",
    "TransportError",
    "TrashItem",
    "TrashPage",
    "Unauthorized",
    "Unavailable",
    "User",
    "make_folders",
    "resolve",
    "resolve_folder",
    "split_path",
]
