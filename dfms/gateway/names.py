"""File and folder names: the one validation every path that takes a name goes through
(upload header and form, multipart init, folder create, rename and move).

A name is UTF-8 text, NFC-normalised, trimmed of leading and trailing spaces, not
empty, not '.' or '..', without '/', '\\', control characters or characters that
disguise it (bidirectional controls, invisible characters), at most 255 bytes.

Leading spaces are trimmed as well as trailing ones: " report.pdf" and "report.pdf"
look the same in every listing, and a name that looks like another is exactly what
the bidi and zero-width rules exist to prevent.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

from dfms.gateway.errors import ApiError, bad_request

MAX_NAME_BYTES = 255  # like most filesystems: 255 bytes of UTF-8

# Unicode space separators (category Zs), trimmed from both ends of a name.
SPACES = "\u0020\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
         "\u2009\u200a\u202f\u205f\u3000"

# Bidirectional controls: they reorder what is displayed, so "rtl\u202etxt.exe"
# shows as "rtlexe.txt". LRM/RLM and the Arabic letter mark are invisible marks.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f") | frozenset(map(chr, range(0x202A, 0x202F))) \
    | frozenset(map(chr, range(0x2066, 0x206A)))
# Invisible characters that make a name look like another one.
INVISIBLE = frozenset("\u00ad\u180e\u200b\u2060\u2061\u2062\u2063\u2064\ufeff") \
    | frozenset(map(chr, range(0x206A, 0x2070)))
# Zero-width (non-)joiners shape emoji sequences (👨‍👩‍👧) and Persian or Indic
# words, so they are allowed between two non-ASCII visible characters; anywhere
# else (an end, next to ASCII, a space or another format character) they only hide.
JOINERS = frozenset("\u200c\u200d")


def invalid_name(message: str) -> ApiError:
    return bad_request("invalid_name", message)


def decode_header_name(raw: str, what: str = "file name") -> str:
    """A percent-encoded name (X-File-Name, a form's filename), validated."""
    # surrogateescape keeps a byte that is not UTF-8 (as U+DC80-U+DCFF) so that
    # clean_name can name it, instead of failing without saying which byte.
    return clean_name(unquote(raw, errors="surrogateescape"), what)


def clean_name(raw: object, what: str = "name") -> str:
    if not isinstance(raw, str):
        raise invalid_name(f"{what} must be a string")
    _check_utf8(raw, what)
    name = unicodedata.normalize("NFC", raw).strip(SPACES)
    if not name:
        raise invalid_name(f"{what} must not be empty or only spaces")
    if name in (".", ".."):
        raise invalid_name(f"{what} must not be '.' or '..'")
    if "/" in name or "\\" in name:
        raise invalid_name(f"{what} must not contain '/' or '\\'")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise invalid_name(f"{what} must not contain control characters")
    _check_deceptive(name, what)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise invalid_name(f"{what} is longer than {MAX_NAME_BYTES} bytes of UTF-8")
    return name


def _check_utf8(name: str, what: str) -> None:
    """Lone surrogates: a byte that is not UTF-8 (surrogateescape, os.fsdecode, JSON)."""
    bad = next((c for c in name if 0xD800 <= ord(c) <= 0xDFFF), None)
    if bad is None:
        return
    # U+DC80-U+DCFF is how Python carries an undecodable byte 0x80-0xFF.
    shown = f"the byte 0x{ord(bad) - 0xDC00:02X}" if 0xDC80 <= ord(bad) <= 0xDCFF \
        else f"the lone surrogate U+{ord(bad):04X}"
    raise invalid_name(f"{what} is not valid UTF-8 (it holds {shown}); names are UTF-8 "
                       "text, percent-encoded in headers and form file names")


def _check_deceptive(name: str, what: str) -> None:
    for i, c in enumerate(name):
        if c in BIDI_CONTROLS:
            kind = "a bidirectional control, which changes how the name is displayed"
        elif c in INVISIBLE or (c in JOINERS and not _joins(name, i)):
            kind = "an invisible character, which makes the name look like another"
        else:
            continue
        raise invalid_name(f"{what} must not contain U+{ord(c):04X} "
                           f"({unicodedata.name(c, 'unnamed')}): {kind}")


def _joins(name: str, i: int) -> bool:
    """A joiner between two visible non-ASCII characters (emoji, Persian, Indic)."""
    if i == 0 or i == len(name) - 1:
        return False
    return all(not c.isascii() and not c.isspace() and unicodedata.category(c) != "Cf"
               for c in (name[i - 1], name[i + 1]))
