from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
import uuid
from pathlib import Path

import pytest

from dfms.auth.share_tokens import (
    KEY_FILE,
    SECRET_BYTES,
    TOKEN_CHARS,
    ShareKeyError,
    ShareTokens,
    load_or_create_secret,
    token_hash,
)

SECRET = bytes(range(32))


def test_minted_token_verifies_to_its_id() -> None:
    tokens = ShareTokens(SECRET)
    minted = tokens.mint()
    assert len(minted.token) == TOKEN_CHARS
    assert set(minted.token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-_")
    assert minted.id.version == 4
    assert tokens.verify(minted.token) == minted.id
    assert minted.token_hash == hashlib.sha256(minted.token.encode()).digest()
    assert token_hash(minted.token) == minted.token_hash


def test_tokens_are_unique() -> None:
    tokens = ShareTokens(SECRET)
    minted = [tokens.mint() for _ in range(200)]
    assert len({m.token for m in minted}) == len({m.id for m in minted}) == 200


def test_another_secret_rejects_the_token() -> None:
    minted = ShareTokens(SECRET).mint()
    assert ShareTokens(bytes(32)).verify(minted.token) is None


def test_every_single_character_change_is_rejected() -> None:
    tokens = ShareTokens(SECRET)
    token = tokens.mint().token
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(token):
        other = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
        assert tokens.verify(token[:i] + other + token[i + 1:]) is None, i


def test_forged_id_with_any_mac_is_rejected() -> None:
    tokens = ShareTokens(SECRET)
    raw = uuid.uuid4().bytes + os.urandom(16)
    forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert tokens.verify(forged) is None


@pytest.mark.parametrize("bad", ["", "abc", "x" * TOKEN_CHARS, "=" * TOKEN_CHARS,
                                 "A" * (TOKEN_CHARS + 1), "A" * (TOKEN_CHARS - 1),
                                 "é" * TOKEN_CHARS, "+" * TOKEN_CHARS, "/" * TOKEN_CHARS])
def test_malformed_tokens_are_rejected(bad: str) -> None:
    assert ShareTokens(SECRET).verify(bad) is None


def test_padded_or_non_canonical_spellings_are_rejected() -> None:
    tokens = ShareTokens(SECRET)
    token = tokens.mint().token
    assert tokens.verify(token + "=") is None
    # The last character carries two unused bits: its siblings decode alike.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    for sibling in range(last & ~3, (last & ~3) + 4):
        if sibling != last:
            assert tokens.verify(token[:-1] + alphabet[sibling]) is None


def test_secret_must_be_32_bytes() -> None:
    with pytest.raises(ShareKeyError):
        ShareTokens(b"short")


def test_secret_file_is_created_private_and_reused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    secret = load_or_create_secret(keys)
    path = keys / KEY_FILE
    assert len(secret) == SECRET_BYTES and path.read_bytes() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(keys) == secret
    assert [p.name for p in keys.iterdir()] == [KEY_FILE]  # no temporary files left


def test_an_existing_secret_is_used(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(SECRET)
    assert load_or_create_secret(tmp_path) == SECRET


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33, b"x" * 64])
def test_a_malformed_secret_file_is_an_error_not_replaced(tmp_path: Path,
                                                          content: bytes) -> None:
    (tmp_path / KEY_FILE).write_bytes(content)
    with pytest.raises(ShareKeyError, match="32 bytes"):
        load_or_create_secret(tmp_path)
    assert (tmp_path / KEY_FILE).read_bytes() == content


def test_a_directory_in_place_of_the_secret_is_an_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).mkdir()
    with pytest.raises(ShareKeyError):
        load_or_create_secret(tmp_path)


def test_concurrent_first_use_agrees_on_one_secret(tmp_path: Path) -> None:
    barrier = threading.Barrier(16)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(load_or_create_secret(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 16 and len(set(results)) == 1
    assert (tmp_path / KEY_FILE).read_bytes() == results[0]
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]
