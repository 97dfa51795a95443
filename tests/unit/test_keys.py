from __future__ import annotations

import stat
from pathlib import Path

import jwt
import pytest

from dfms.keys import SigningKeyError, ensure_keys, generate_key, load_keys


def test_generated_key_signs_es256_tokens(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "keys")
    token = jwt.encode({"sub": "u"}, key.private_key, algorithm="ES256",
                       headers={"kid": key.kid})
    assert jwt.get_unverified_header(token)["kid"] == key.kid
    assert jwt.decode(token, key.public_key, algorithms=["ES256"])["sub"] == "u"
    pem = tmp_path / "keys" / f"{key.kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600


def test_rotation_keeps_old_keys_for_verification(tmp_path: Path) -> None:
    first = generate_key(tmp_path)
    second = generate_key(tmp_path)
    current, every = load_keys(tmp_path)
    assert current.kid == second.kid != first.kid
    assert set(every) == {first.kid, second.kid}


def test_ensure_generates_once(tmp_path: Path) -> None:
    assert ensure_keys(tmp_path).kid == ensure_keys(tmp_path).kid


def test_missing_keys_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="dfms keys generate"):
        load_keys(tmp_path)
