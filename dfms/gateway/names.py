"""File and folder names: NFC-normalized, no '/', no control characters, not '.' or '..'."""

from __future__ import annotations

import unicodedata

from dfms.gateway.errors import bad_request

MAX_NAME_BYTES = 255  # like most filesystems: 255 bytes of UTF-8


def clean_name(raw: object, what: str = "name") -> str:
    if not isinstance(raw, str):
        raise bad_request("invalid_name", f"{what} must be a string")
    name = unicodedata.normalize("NFC", raw)
    if not name or name.strip() == "":
        raise bad_request("invalid_name", f"{what} must not be empty")
    if name in (".", ".."):
        raise bad_request("invalid_name", f"{what} must not be '.' or '..'")
    if "/" in name or "\\" in name:
        raise bad_request("invalid_name", f"{what} must not contain '/' or '\\'")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise bad_request("invalid_name", f"{what} must not contain control characters")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise bad_request("invalid_name", f"{what} is longer than {MAX_NAME_BYTES} bytes "
                          "of UTF-8")
    return name
