"""``sieve keys new PATH``: a private key file, never overwritten without --force."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from click.testing import CliRunner

from streams.errors import ConfigurationError
from streams.keys_command import keys
from streams.privacy.keyring import Keyring


def _key_material(path: Path) -> list[str]:
    document = json.loads(path.read_text())
    encoded = [
        *document["pseudonymization"]["keys"].values(),
        *document["encryption"]["keys"].values(),
    ]
    return encoded + [base64.b64decode(key).hex() for key in encoded]


def test_keys_new_writes_a_private_key_file_the_pipeline_loads(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keyring.json"
    done = CliRunner().invoke(keys, ["new", str(path)])
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyring = Keyring.load(path)
    assert keyring.encryption_keys()[1] == "e1"
    assert str(path) in done.output
    assert not [key for key in _key_material(path) if key in done.output]


def test_keys_new_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    assert CliRunner().invoke(keys, ["new", str(path)]).exit_code == 0
    before = path.read_bytes()

    refused = CliRunner().invoke(keys, ["new", str(path)])
    assert isinstance(refused.exception, ConfigurationError)
    assert refused.exception.exit_code == 2
    assert "--force" in str(refused.exception)
    assert path.read_bytes() == before

    forced = CliRunner().invoke(keys, ["new", "--force", str(path)])
    assert forced.exit_code == 0, forced.output
    assert path.read_bytes() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Keyring.load(path)
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temporary file left


def test_exist_ok_keeps_a_valid_key_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    assert CliRunner().invoke(keys, ["new", "--exist-ok", str(path)]).exit_code == 0
    before = path.read_bytes()
    again = CliRunner().invoke(keys, ["new", "--exist-ok", str(path)])
    assert again.exit_code == 0 and "kept" in again.output
    assert path.read_bytes() == before

    path.write_text("{}")
    broken = CliRunner().invoke(keys, ["new", "--exist-ok", str(path)])
    assert isinstance(broken.exception, ConfigurationError)
