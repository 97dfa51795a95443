from __future__ import annotations

import os
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


def test_cli_creates_the_first_keys_only_if_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from dfms.auth.share_tokens import KEY_FILE
    from dfms.cli import main

    keys_dir = tmp_path / "keys"
    for name in [n for n in os.environ if n.startswith("DFMS_")]:
        monkeypatch.delenv(name)
    # Configured by the environment alone, as in a container: auth.keys_dir is the default.
    monkeypatch.setenv("DFMS_AUTH__KEYS_DIR", str(keys_dir))
    monkeypatch.chdir(tmp_path)
    assert main(["keys", "generate", "--if-missing"]) == 0
    first = capsys.readouterr().out
    key, _ = load_keys(keys_dir)
    secret = (keys_dir / KEY_FILE).read_bytes()
    assert f"signing key {key.kid} in {keys_dir}: generated (now current)" in first
    assert "share-link secret" in first and "created" in first
    assert main(["keys", "generate", "--if-missing"]) == 0
    again = capsys.readouterr().out
    assert again.count("present, kept") == 2 and key.kid in again
    assert load_keys(keys_dir)[0].kid == key.kid and (keys_dir / KEY_FILE).read_bytes() == secret
    # Without --if-missing it rotates: a new key becomes current, the secret stays.
    assert main(["keys", "generate"]) == 0
    assert load_keys(keys_dir)[0].kid != key.kid
    assert (keys_dir / KEY_FILE).read_bytes() == secret
    # --dir wins over the config; a directory that cannot be written is a clear error.
    other = tmp_path / "other"
    assert main(["keys", "generate", "--if-missing", "--dir", str(other)]) == 0
    assert (other / KEY_FILE).exists() and load_keys(other)[0].kid
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert main(["keys", "generate", "--if-missing", "--dir", str(blocked / "keys")]) == 1
    assert f"cannot write keys in {blocked / 'keys'}" in capsys.readouterr().err
