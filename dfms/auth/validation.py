"""Normalisation and checks of account fields, shared by the API and the CLI."""

from __future__ import annotations

import unicodedata

from dfms.auth.errors import InvalidEmail, InvalidInput

MAX_EMAIL_CHARS = 254  # RFC 5321 path limit
MAX_DISPLAY_NAME_CHARS = 100


def _has_space_or_control(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in text)


def normalize_email(raw: str) -> str:
    """Trimmed, NFC, lower-cased; ``InvalidEmail`` unless it has a basic address shape.

    Deliberately loose (one ``@``, a local part, a dotted domain): whether the
    mailbox exists is not something a regex can tell.
    """
    email = unicodedata.normalize("NFC", raw.strip()).lower()
    if not email:
        raise InvalidEmail("email is required")
    if len(email) > MAX_EMAIL_CHARS:
        raise InvalidEmail(f"email must be at most {MAX_EMAIL_CHARS} characters")
    if _has_space_or_control(email):
        raise InvalidEmail("email must not contain spaces or control characters")
    local, at, domain = email.partition("@")
    if not at or "@" in domain:
        raise InvalidEmail("email must contain exactly one '@'")
    if not local:
        raise InvalidEmail("email needs a name before the '@'")
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise InvalidEmail("email domain must look like example.com")
    return email


def normalize_display_name(raw: str) -> str:
    """Trimmed NFC name of 1..100 characters without control characters."""
    name = unicodedata.normalize("NFC", raw.strip())
    if not name:
        raise InvalidInput("display_name must not be empty")
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise InvalidInput(f"display_name must be at most {MAX_DISPLAY_NAME_CHARS} characters")
    # Line and paragraph separators break log lines and UIs just like control characters.
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
        raise InvalidInput("display_name must not contain control characters")
    return name
