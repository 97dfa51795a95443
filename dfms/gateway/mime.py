"""MIME type detection at upload: magic bytes first, then the name, then a text check."""

from __future__ import annotations

import mimetypes

SNIFF_BYTES = 4096

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"\x28\xb5\x2f\xfd", "application/zstd"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"\x7fELF", "application/x-executable"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (b"<?xml", "application/xml"),
)
# Containers whose real type the extension tells better (docx, xlsx, jar... are zips).
_ZIP = b"PK\x03\x04"


def detect(head: bytes, name: str) -> str:
    by_name = mimetypes.guess_type(name, strict=False)[0]
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    if head.startswith(_ZIP):
        return by_name or "application/zip"
    if head[4:8] == b"ftyp":
        return by_name or "video/mp4"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if by_name:
        return by_name
    if head and _looks_like_text(head):
        return "text/plain"
    return "application/octet-stream"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed prefix is still text.
        return exc.start >= len(head) - 3
    return True
