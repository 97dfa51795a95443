"""Byte-range parsing, validators, names, MIME detection and Content-Disposition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfms.gateway.errors import ApiError
from dfms.gateway.mime import detect
from dfms.gateway.names import clean_name
from dfms.gateway.ranges import (
    ByteRange,
    Unsatisfiable,
    etag_matches,
    if_range_allows,
    parse_range,
)
from dfms.gateway.serve import content_disposition


@pytest.mark.parametrize(("header", "size", "expected"), [
    ("bytes=0-9", 100, [ByteRange(0, 9)]),
    ("bytes=90-", 100, [ByteRange(90, 99)]),
    ("bytes=-10", 100, [ByteRange(90, 99)]),
    ("bytes=-1000", 100, [ByteRange(0, 99)]),
    ("bytes=95-200", 100, [ByteRange(95, 99)]),
    ("bytes=0-0, 5-9 ,-1", 100, [ByteRange(0, 0), ByteRange(5, 9), ByteRange(99, 99)]),
    ("bytes=200-300, 0-1", 100, [ByteRange(0, 1)]),  # the satisfiable subset
    ("BYTES=0-1", 100, [ByteRange(0, 1)]),
])
def test_ranges_resolve_against_the_size(header: str, size: int,
                                         expected: list[ByteRange]) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", [None, "", "items=0-1", "bytes=", "bytes=abc",
                                    "bytes=5-1", "bytes=-", "bytes=1-2-3",
                                    "bytes=" + ",".join(["0-0"] * 33)])
def test_malformed_or_excessive_ranges_are_ignored(header: str | None) -> None:
    assert parse_range(header, 100) is None


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=0-", 0),
                                              ("bytes=-0", 100), ("bytes=150-160", 100)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@given(size=st.integers(0, 10_000), a=st.integers(0, 12_000), b=st.integers(0, 12_000))
def test_resolved_ranges_always_lie_inside_the_content(size: int, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    try:
        ranges = parse_range(f"bytes={lo}-{hi}", size)
    except Unsatisfiable:
        assert lo >= size
        return
    assert ranges is not None
    (r,) = ranges
    assert 0 <= r.start <= r.end < size
    assert (r.start, r.end) == (lo, min(hi, size - 1))


def test_validators() -> None:
    etag = '"abc"'
    assert etag_matches('"x", "abc"', etag) and etag_matches("*", etag)
    assert etag_matches('W/"abc"', etag) and not etag_matches('"abd"', etag)
    assert if_range_allows(None, etag, "date") and if_range_allows('"abc"', etag, "date")
    assert not if_range_allows('"old"', etag, "date")
    assert not if_range_allows('W/"abc"', etag, "date")  # weak never matches If-Range
    assert if_range_allows("date", etag, "date")


@pytest.mark.parametrize("name", ["a", "report 2024.pdf", "naïve café", "😀 emoji",
                                  'quo"tes\'', "x" * 255, "é" * 127])
def test_good_names(name: str) -> None:
    assert clean_name(name) == name


@pytest.mark.parametrize("name", ["", "   ", ".", "..", "a/b", "a\\b", "tab\there", "nul\x00",
                                  "x" * 256, "é" * 128, 5])
def test_bad_names_are_400(name: object) -> None:
    with pytest.raises(ApiError) as info:
        clean_name(name)
    assert (info.value.status, info.value.code) == (400, "invalid_name")


def test_names_are_nfc_normalized() -> None:
    assert clean_name("cafe\u0301") == "caf\u00e9"


def name_error(name: object, what: str = "file name") -> str:
    with pytest.raises(ApiError) as info:
        clean_name(name, what)
    assert (info.value.status, info.value.code) == (400, "invalid_name")
    return info.value.message


@pytest.mark.parametrize(("name", "trimmed"), [
    ("trail.txt ", "trail.txt"), ("trail.txt   ", "trail.txt"), (" lead.txt", "lead.txt"),
    ("\u00a0both\u3000", "both"), ("in  side .txt", "in  side .txt"),
])
def test_spaces_are_trimmed_at_both_ends(name: str, trimmed: str) -> None:
    assert clean_name(name) == trimmed


@pytest.mark.parametrize("name", ["  ", " ", "\u00a0", "\u3000 "])
def test_names_of_spaces_only_are_empty(name: str) -> None:
    assert "empty" in name_error(name)


@pytest.mark.parametrize(("name", "char"), [
    ("rtl\u202etxt.exe", "U+202E"), ("\u202alre", "U+202A"), ("x\u202d", "U+202D"),
    ("iso\u2066late", "U+2066"), ("pop\u2069", "U+2069"), ("lrm\u200e.txt", "U+200E"),
    ("zero\u200bwidth", "U+200B"), ("word\u2060joiner", "U+2060"), ("\ufeffbom", "U+FEFF"),
    ("rep\u200dort", "U+200D"), ("\u200ca", "U+200C"), ("caf\u00e9\u200d", "U+200D"),
])
def test_deceptive_characters_are_rejected_by_code_point(name: str, char: str) -> None:
    message = name_error(name)
    assert char in message and message.startswith("file name must not contain")


@pytest.mark.parametrize("name", ["\U0001f468\u200d\U0001f469\u200d\U0001f467",
                                  "\U0001f3f3\ufe0f\u200d\U0001f308 flag",
                                  "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645.txt"])
def test_joiners_inside_emoji_and_scripts_that_need_them_are_kept(name: str) -> None:
    assert clean_name(name) == name


@pytest.mark.parametrize(("name", "shown"), [("\udcff.txt", "byte 0xFF"),
                                             ("a\udc80", "byte 0x80"),
                                             ("x\ud800", "surrogate U+D800")])
def test_names_that_are_not_utf8_say_so(name: str, shown: str) -> None:
    message = name_error(name)
    assert "not valid UTF-8" in message and shown in message
    assert "percent-encoded" in message and "control" not in message


def test_header_names_are_percent_decoded_then_validated() -> None:
    from dfms.gateway.names import decode_header_name

    assert decode_header_name("report%202024.pdf%20") == "report 2024.pdf"
    for raw in ("caf%E9.txt", "%FF", "caf\udce9.txt"):  # Latin-1, not UTF-8; a raw byte
        with pytest.raises(ApiError) as info:
            decode_header_name(raw)
        assert info.value.code == "invalid_name" and "not valid UTF-8" in info.value.message
    with pytest.raises(ApiError) as info:
        decode_header_name("%20%20")
    assert "empty" in info.value.message


@pytest.mark.parametrize(("head", "name", "mime"), [
    (b"%PDF-1.7 ...", "x.bin", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n....", "photo", "image/png"),
    (b"PK\x03\x04....", "doc.docx",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"PK\x03\x04....", "archive", "application/zip"),
    (b"hello world\n", "notes", "text/plain"),
    (b"\x00\x01\x02", "blob", "application/octet-stream"),
    (b"", "empty.csv", "text/csv"),
])
def test_mime_detection(head: bytes, name: str, mime: str) -> None:
    assert detect(head, name) == mime


def test_content_disposition_carries_any_name() -> None:
    value = content_disposition('rapport "final" ✓.pdf')
    assert value.startswith('attachment; filename="rapport _final_ _.pdf"')
    assert value.endswith("filename*=UTF-8''rapport%20%22final%22%20%E2%9C%93.pdf")


def test_restored_names_stay_within_the_limit() -> None:
    from dfms.metadata.trash import restored_name

    assert restored_name("report.pdf", 1) == "report (restored).pdf"
    assert restored_name("README", 3) == "README (restored 3)"
    long = restored_name("é" * 125 + ".txt", 2)
    assert len(long.encode()) <= 255 and long.endswith(" (restored 2).txt")
