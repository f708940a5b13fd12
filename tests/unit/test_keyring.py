"""The key file: loading, writing, and never showing a secret."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from streams.errors import ConfigurationError
from streams.privacy.keyring import MIN_KEY_BYTES, Keyring, write_new_keyring

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _document(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "pseudonymization": {"active": "p1", "keys": {"p1": _b64(b"P" * 32)}},
        "encryption": {"active": "e1", "keys": {"e1": _b64(b"E" * 32)}},
    }
    document.update(overrides)
    return document


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _secret_renderings(keyring: Keyring) -> list[str]:
    keys = [keyring.pseudonymization_key(i) for i in keyring.pseudonymization_key_ids]
    keys += [keyring.encryption_key(i) for i in keyring.encryption_key_ids]
    renderings = []
    for key in keys:
        renderings += [_b64(key), key.hex(), repr(key), str(key)[2:-1][:20]]
    return renderings


def test_generated_keys_are_random_long_enough_and_active() -> None:
    first, second = Keyring.generate(), Keyring.generate()
    assert len(first.pseudonymization_key()) >= MIN_KEY_BYTES
    assert len(first.encryption_key()) >= MIN_KEY_BYTES
    assert first.pseudonymization_key() != second.pseudonymization_key()
    assert first.pseudonymization_key() != first.encryption_key()
    assert first.pseudonymization_key_id == first.consent_key_id == "p1"
    assert first.encryption_key_id == "e1"


def test_repr_and_str_never_show_key_bytes() -> None:
    keyring = Keyring.generate()
    shown = repr(keyring) + str(keyring) + f"{keyring}" + f"{keyring!r}"
    assert "p1" in shown and "e1" in shown  # ids are fine and useful
    for secret in _secret_renderings(keyring):
        assert secret not in shown


def test_key_bytes_are_not_public_attributes() -> None:
    keyring = Keyring.generate()
    assert not hasattr(keyring, "__dict__")  # slots only: no accidental vars() dump
    public = {name: getattr(keyring, name) for name in dir(keyring) if not name.startswith("_")}
    for value in public.values():
        assert not isinstance(value, bytes)


def test_keyring_refuses_to_be_pickled() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Keyring.generate())


def test_unknown_key_id_error_names_the_id_only() -> None:
    keyring = Keyring.generate()
    with pytest.raises(KeyError, match="nope"):
        keyring.pseudonymization_key("nope")
    with pytest.raises(KeyError, match="nope"):
        keyring.encryption_key("nope")


@posix_only
def test_write_new_keyring_is_private_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keyring.json"
    written = write_new_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Keyring.load(path)
    assert loaded.pseudonymization_key() == written.pseudonymization_key()
    assert loaded.encryption_key() == written.encryption_key()
    assert loaded.consent_key_id == written.consent_key_id
    assert sorted(p.name for p in path.parent.iterdir()) == ["keyring.json"]  # no temp left


def test_write_new_keyring_refuses_to_overwrite(tmp_path: Path) -> None:
    path = _write(tmp_path / "keyring.json", "precious")
    with pytest.raises(ConfigurationError, match="already exists"):
        write_new_keyring(path)
    assert path.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keyring.json"]


def test_load_reads_the_documented_format(tmp_path: Path) -> None:
    document = _document(
        pseudonymization={
            "active": "p2",
            "consent": "p1",
            "keys": {"p1": _b64(b"1" * 32), "p2": _b64(b"2" * 40)},
        }
    )
    keyring = Keyring.load(_write(tmp_path / "k.json", json.dumps(document)))
    assert keyring.pseudonymization_key_id == "p2"
    assert keyring.consent_key_id == "p1"
    assert keyring.pseudonymization_key() == b"2" * 40
    assert keyring.pseudonymization_key("p1") == b"1" * 32
    assert keyring.pseudonymization_key_ids == ("p1", "p2")
    keys, active = keyring.encryption_keys()
    assert active == "e1" and dict(keys) == {"e1": b"E" * 32}


def test_consent_key_defaults_to_active(tmp_path: Path) -> None:
    keyring = Keyring.load(_write(tmp_path / "k.json", json.dumps(_document())))
    assert keyring.consent_key_id == keyring.pseudonymization_key_id == "p1"


def test_to_json_round_trips() -> None:
    keyring = Keyring.generate()
    again = Keyring.from_json(keyring.to_json())
    assert again.pseudonymization_key() == keyring.pseudonymization_key()
    assert again.encryption_key() == keyring.encryption_key()


def test_missing_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigurationError, match=r"absent\.json.*does not exist"):
        Keyring.load(path)


def test_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a regular file"):
        Keyring.load(tmp_path)


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_group_or_world_accessible_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "k.json", json.dumps(_document()), mode)
    with pytest.raises(ConfigurationError, match=f"k.json.*mode {mode:04o}.*chmod 600"):
        Keyring.load(path)


@posix_only
def test_unreadable_file_is_a_configuration_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = _write(tmp_path / "k.json", json.dumps(_document()), 0o200)
    with pytest.raises(ConfigurationError, match="cannot be read"):
        Keyring.load(path)


def test_malformed_json_error_shows_no_file_content(tmp_path: Path) -> None:
    secret = _b64(b"S" * 32)
    text = '{"pseudonymization": {"active": "p1", "keys": {"p1": "' + secret + '"}'  # truncated
    with pytest.raises(ConfigurationError) as caught:
        Keyring.load(_write(tmp_path / "k.json", text))
    assert "k.json" in str(caught.value) and "not valid JSON" in str(caught.value)
    assert secret not in str(caught.value)
    assert caught.value.__suppress_context__  # the JSON error (holding the text) is not shown


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must hold a JSON object"),
        (_document(pseudonymization=None), "missing object 'pseudonymization'"),
        ({"pseudonymization": _document()["pseudonymization"]}, "missing object 'encryption'"),
        (_document(encryption={"active": 1, "keys": {}}), "encryption.active"),
        (_document(encryption={"active": "e1", "keys": {}}), "encryption.keys"),
        (
            _document(encryption={"active": "e9", "keys": {"e1": _b64(b"E" * 32)}}),
            "unknown key id 'e9'",
        ),
        (
            _document(
                pseudonymization={"active": "p1", "consent": "p0", "keys": {"p1": _b64(b"P" * 32)}}
            ),
            "pseudonymization.consent names unknown key id 'p0'",
        ),
        (
            _document(encryption={"active": "e1", "keys": {"e1": _b64(b"E" * 31)}}),
            "too short.*31 bytes",
        ),
        (_document(encryption={"active": "e1", "keys": {"e1": "not base64!"}}), "not valid base64"),
        (_document(encryption={"active": "e1", "keys": {"e1": 12}}), "must be a base64 string"),
        (_document(encryption={"active": "e 1", "keys": {"e 1": _b64(b"E" * 32)}}), "key id 'e 1'"),
    ],
)
def test_malformed_documents_are_configuration_errors_naming_the_problem(
    tmp_path: Path, document: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"k.json.*{message}"):
        Keyring.load(_write(tmp_path / "k.json", json.dumps(document)))


def test_constructor_rejects_short_keys_and_unknown_active() -> None:
    with pytest.raises(ValueError, match="shorter"):
        Keyring(
            pseudonymization={"p1": b"x" * 16},
            pseudonymization_active="p1",
            encryption={"e1": b"e" * 32},
            encryption_active="e1",
        )
    with pytest.raises(ValueError, match="active key id"):
        Keyring(
            pseudonymization={"p1": b"x" * 32},
            pseudonymization_active="p2",
            encryption={"e1": b"e" * 32},
            encryption_active="e1",
        )
