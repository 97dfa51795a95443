"""Argon2id hashes, password rules and account-field normalisation (no database)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from dfms.auth import passwords
from dfms.auth.errors import InvalidEmail, InvalidInput, WeakPassword
from dfms.auth.passwords import (
    Argon2Params,
    InvalidPasswordHash,
    check_password_rules,
    hash_password,
    needs_rehash,
    parse_hash,
    verify_password,
)
from dfms.auth.validation import normalize_display_name, normalize_email
from dfms.config import AuthConfig

CHEAP = Argon2Params(memory_kib=8192, iterations=1, lanes=1)
PW = "correct horse battery staple"


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PW, CHEAP)


def test_hash_is_a_self_describing_phc_string(stored: str) -> None:
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    parsed = parse_hash(stored)
    assert parsed.params == CHEAP
    assert len(parsed.salt) == passwords.SALT_BYTES
    assert len(parsed.digest) == passwords.HASH_BYTES
    salt_b64, hash_b64 = stored.rsplit("$", 2)[1:]
    assert "=" not in salt_b64 + hash_b64  # unpadded base64, as in the PHC format


def test_verify_accepts_the_password_and_rejects_others(stored: str) -> None:
    assert verify_password(PW, stored)
    assert not verify_password(PW + " ", stored)
    assert not verify_password("", stored)
    assert not verify_password(PW.upper(), stored)


def test_same_password_gets_a_new_salt_each_time() -> None:
    first, second = hash_password(PW, CHEAP), hash_password(PW, CHEAP)
    assert first != second
    assert verify_password(PW, first) and verify_password(PW, second)


def test_interoperates_with_the_standard_phc_format(stored: str) -> None:
    # cryptography's own PHC verifier (same format as argon2-cffi / libsodium).
    Argon2id.verify_phc_encoded(PW.encode(), stored)
    theirs = Argon2id(salt=b"s" * 16, length=32, iterations=1, lanes=1,
                      memory_cost=8192).derive_phc_encoded(PW.encode())
    assert verify_password(PW, theirs)


def test_parameters_are_read_from_the_stored_string() -> None:
    other = Argon2Params(memory_kib=16384, iterations=2, lanes=2)
    stored = hash_password(PW, other)
    assert parse_hash(stored).params == other
    # Verification uses the stored parameters, not the current ones.
    assert verify_password(PW, stored)
    assert needs_rehash(stored, CHEAP)
    assert not needs_rehash(stored, other)


def test_params_from_config() -> None:
    cfg = AuthConfig(argon2_memory_kib=32768, argon2_iterations=4, argon2_lanes=2)
    assert Argon2Params.from_config(cfg) == Argon2Params(32768, 4, 2)


def _flip_last_hash_char(stored: str) -> str:
    head, _, digest = stored.rpartition("$")
    raw = bytearray(base64.b64decode(digest + "=" * (-len(digest) % 4)))
    raw[0] ^= 0x01
    return f"{head}${base64.b64encode(bytes(raw)).decode().rstrip('=')}"


@pytest.mark.parametrize("tamper", [
    _flip_last_hash_char,
    lambda s: s.replace("$argon2id$", "$argon2i$"),
    lambda s: s.replace("v=19", "v=16"),
    lambda s: s.replace("m=8192", "m=8193"),
    lambda s: s.replace("t=1", "t=2"),
    lambda s: s.replace("m=8192", "m=999999999"),  # out of bounds: refused, not computed
    lambda s: s[:-4],
    lambda s: s + "!",
    lambda s: s.rsplit("$", 1)[0],
    lambda s: "",
    lambda s: "plaintext-password",
])
def test_tampered_hash_never_verifies(stored: str, tamper: Callable[[str], str]) -> None:
    bad = tamper(stored)
    assert bad != stored
    assert not verify_password(PW, bad)


def test_parse_rejects_malformed_strings() -> None:
    for bad in ("", "$argon2id$v=19$m=8192,t=1,p=1$c2FsdA$", "$argon2id$v=19$m=1,t=1,p=1$a$b",
                "$argon2id$v=19$m=8192,t=0,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"):
        with pytest.raises(InvalidPasswordHash):
            parse_hash(bad)


def test_password_is_nfc_normalised_before_hashing() -> None:
    composed, decomposed = "caf\u00e9-password", "cafe\u0301-password"
    assert verify_password(decomposed, hash_password(composed, CHEAP))


def test_dummy_hash_is_cached_and_uses_the_given_params() -> None:
    dummy = passwords.dummy_hash(CHEAP)
    assert passwords.dummy_hash(CHEAP) is dummy
    assert parse_hash(dummy).params == CHEAP
    assert not verify_password(PW, dummy)


async def test_async_variants_run_off_the_event_loop(stored: str) -> None:
    slow = Argon2Params(memory_kib=65536, iterations=2, lanes=1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    stored_slow = await passwords.hash_password_async(PW, slow)
    elapsed = time.perf_counter() - started
    task.cancel()
    assert await passwords.verify_password_async(PW, stored_slow)
    assert not await passwords.verify_password_async("nope", stored)
    assert ticks >= 2 or elapsed < 0.005  # the loop kept running while Argon2 worked


# --- password rules ----------------------------------------------------------------------

@pytest.mark.parametrize(("password", "words"), [
    ("short", "at least 10"),
    ("x" * 1025 + "y", "at most 1024"),
    ("aaaaaaaaaaaa", "repeated"),
    ("Alice@Example.com", "email"),
])
def test_password_rules_name_the_rule_that_failed(password: str, words: str) -> None:
    with pytest.raises(WeakPassword) as info:
        check_password_rules(password, min_length=10, email="alice@example.com")
    assert words in info.value.message
    assert info.value.code == "weak_password"


def test_acceptable_passwords_pass() -> None:
    for ok in ("0123456789", "correct horse battery staple", "é" * 9 + "e", "xy" * 512):
        check_password_rules(ok, min_length=10, email="alice@example.com")


# --- emails and display names -----------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("  Alice@Example.COM ", "alice@example.com"),
    ("bob.smith+tag@mail.example.org", "bob.smith+tag@mail.example.org"),
    ("JOS\u0045\u0301@example.com", "jos\u00e9@example.com"),  # NFC then lower-case
])
def test_email_normalisation(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "   ", "no-at-sign.example.com", "two@@example.com", "a@b@example.com",
    "@example.com", "alice@localhost", "alice@example.", "alice@.com", "alice@exa..mple.com",
    "al ice@example.com", "alice@exam\tple.com", "a" * 250 + "@example.com",
])
def test_invalid_emails_are_refused(raw: str) -> None:
    with pytest.raises(InvalidEmail) as info:
        normalize_email(raw)
    assert info.value.code == "invalid_email"


def test_display_name_rules() -> None:
    assert normalize_display_name("  Ada Lovelace ") == "Ada Lovelace"
    assert normalize_display_name("x" * 100) == "x" * 100
    for bad in ("", "   ", "x" * 101, "bad\nname", "bell\x07", "sep\u2028arator"):
        with pytest.raises(InvalidInput) as info:
            normalize_display_name(bad)
        assert info.value.code == "validation_error"
