"""The key file: pseudonymization (HMAC) and encryption keys, each set with an active key id.

Format (JSON, mode 0600)::

    {"pseudonymization": {"active": "p1", "consent": "p1", "keys": {"p1": "<base64>"}},
     "encryption":       {"active": "e1", "keys": {"e1": "<base64>"}}}

Keys are base64 of at least 32 random bytes. Every pseudonym carries the id of the key that
made it, so keys can rotate: add a key, point ``active`` at it, keep the old one while data
made with it still matters.

``consent`` (optional, defaults to ``active``) pins the key of the consent state. Consent
keys must survive rotation: the state only holds pseudonyms, so if they changed with the
active key every opted-out person would silently be collected again. Rotate ``active``,
leave ``consent`` alone.

Key bytes live only in private attributes and never appear in ``repr``, ``str`` or error
messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from streams.errors import ConfigurationError
from streams.secret_files import parse_secret_json, read_private_text
from streams.storage import write_private_atomic

MIN_KEY_BYTES: Final = 32
_GENERATED_KEY_BYTES: Final = 32
# Key ids end up in Parquet columns and file metadata: keep them short and boring.
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Keyring:
    """Pseudonymization and encryption keys by id. Immutable; never shows key bytes."""

    __slots__ = ("_consent_id", "_encryption", "_encryption_id", "_pseudo", "_pseudo_id")

    def __init__(
        self,
        *,
        pseudonymization: Mapping[str, bytes],
        pseudonymization_active: str,
        encryption: Mapping[str, bytes],
        encryption_active: str,
        consent: str | None = None,
    ) -> None:
        consent_id = pseudonymization_active if consent is None else consent
        _check_key_set("pseudonymization", pseudonymization, pseudonymization_active)
        _check_key_set("encryption", encryption, encryption_active)
        if consent_id not in pseudonymization:
            raise ValueError(f"pseudonymization.consent names unknown key id {consent_id!r}")
        self._pseudo: Mapping[str, bytes] = MappingProxyType(dict(pseudonymization))
        self._pseudo_id = pseudonymization_active
        self._consent_id = consent_id
        self._encryption: Mapping[str, bytes] = MappingProxyType(dict(encryption))
        self._encryption_id = encryption_active

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def generate(cls) -> Keyring:
        """A fresh keyring with one random key per purpose (ids ``p1`` and ``e1``)."""
        return cls(
            pseudonymization={"p1": secrets.token_bytes(_GENERATED_KEY_BYTES)},
            pseudonymization_active="p1",
            encryption={"e1": secrets.token_bytes(_GENERATED_KEY_BYTES)},
            encryption_active="e1",
        )

    @classmethod
    def load(cls, path: Path | str) -> Keyring:
        """Read a key file; any problem is a :class:`ConfigurationError` naming the file."""
        path = Path(path)
        text = read_private_text(
            path,
            "keyring file",
            "create one with `sieve demo` or streams.privacy.keyring.write_new_keyring",
        )
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<keyring>") -> Keyring:
        """Parse the key file format; ``source`` names the file in error messages."""
        document = parse_secret_json(text, "keyring file", source)
        if not isinstance(document, dict):
            raise ConfigurationError(f"keyring file {source} must hold a JSON object")
        pseudo, pseudo_active, consent = _parse_section(document, "pseudonymization", source)
        enc, enc_active, _ = _parse_section(document, "encryption", source)
        return cls(
            pseudonymization=pseudo,
            pseudonymization_active=pseudo_active,
            encryption=enc,
            encryption_active=enc_active,
            consent=consent,
        )

    # --- access ----------------------------------------------------------------------------

    @property
    def pseudonymization_key_id(self) -> str:
        """Id of the key new pseudonyms (event and subject keys) are made with."""
        return self._pseudo_id

    @property
    def consent_key_id(self) -> str:
        """Id of the key consent keys are made with (pinned across rotations)."""
        return self._consent_id

    @property
    def encryption_key_id(self) -> str:
        """Id of the key new encrypted files are written with."""
        return self._encryption_id

    @property
    def pseudonymization_key_ids(self) -> tuple[str, ...]:
        return tuple(self._pseudo)

    @property
    def encryption_key_ids(self) -> tuple[str, ...]:
        return tuple(self._encryption)

    def pseudonymization_key(self, key_id: str | None = None) -> bytes:
        """The HMAC key ``key_id`` (default: the active one). KeyError names only the id."""
        key_id = self._pseudo_id if key_id is None else key_id
        return _get(self._pseudo, key_id, "pseudonymization")

    def encryption_key(self, key_id: str | None = None) -> bytes:
        """The encryption key ``key_id`` (default: the active one). KeyError names only the id."""
        key_id = self._encryption_id if key_id is None else key_id
        return _get(self._encryption, key_id, "encryption")

    def encryption_keys(self) -> tuple[Mapping[str, bytes], str]:
        """(every encryption key by id, the active id): old keys still decrypt old files."""
        return self._encryption, self._encryption_id

    def to_json(self) -> str:
        """The key file text. Holds secrets: write it only to a 0600 file."""
        return json.dumps(
            {
                "pseudonymization": {
                    "active": self._pseudo_id,
                    "consent": self._consent_id,
                    "keys": _encode_keys(self._pseudo),
                },
                "encryption": {
                    "active": self._encryption_id,
                    "keys": _encode_keys(self._encryption),
                },
            },
            indent=2,
        )

    def __repr__(self) -> str:
        return (
            f"Keyring(pseudonymization={self._pseudo_id!r} of {list(self._pseudo)},"
            f" consent={self._consent_id!r}, encryption={self._encryption_id!r}"
            f" of {list(self._encryption)})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would copy secrets into queues, caches and crash dumps without anyone
        # deciding to: pass the key file path instead and load it where it is needed.
        raise TypeError("a Keyring cannot be pickled; pass the key file path instead")


def write_new_keyring(path: Path | str) -> Keyring:
    """Generate a keyring and write it to ``path`` with mode 0600; never overwrites.

    The file appears atomically (written to a private temporary file, then hard-linked to
    ``path``, which fails if ``path`` exists), so a reader never sees half a key file.
    """
    keyring = Keyring.generate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        raise ConfigurationError(f"keyring file {path} already exists; refusing to overwrite it")
    try:
        write_private_atomic(path, lambda handle: handle.write(keyring.to_json()), replace=False)
    except FileExistsError:
        raise ConfigurationError(
            f"keyring file {path} already exists; refusing to overwrite it"
        ) from None
    return keyring


def replace_with_new_keyring(path: Path | str) -> Keyring:
    """Generate a keyring and write it to ``path`` (mode 0600), replacing any file there.

    For ``sieve keys new --force``: whatever the old file held is gone, so identifiable
    files encrypted with its keys can no longer be read and pseudonyms change. The new file
    appears atomically (private temporary file, then rename).
    """
    keyring = Keyring.generate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_atomic(path, lambda handle: handle.write(keyring.to_json()))
    return keyring


# --- helpers ---------------------------------------------------------------------------------


def _parse_section(
    document: dict[str, Any], name: str, source: str
) -> tuple[dict[str, bytes], str, str | None]:
    section = document.get(name)
    if not isinstance(section, dict):
        raise ConfigurationError(f"keyring file {source}: missing object {name!r}")
    active = section.get("active")
    if not isinstance(active, str):
        raise ConfigurationError(f"keyring file {source}: {name}.active must be a key id string")
    consent = section.get("consent")
    if consent is not None and not isinstance(consent, str):
        raise ConfigurationError(f"keyring file {source}: {name}.consent must be a key id string")
    raw_keys = section.get("keys")
    if not isinstance(raw_keys, dict) or not raw_keys:
        raise ConfigurationError(f"keyring file {source}: {name}.keys must be a non-empty object")
    for key_id in raw_keys:
        if not _KEY_ID.match(key_id):
            raise ConfigurationError(
                f"keyring file {source}: {name}.keys: key id {key_id!r} must be 1 to 64 of"
                " A-Z a-z 0-9 _ . -"
            )
    keys = {
        key_id: _decode_key(value, f"{name}.keys.{key_id}", source)
        for key_id, value in raw_keys.items()
    }
    for field, value in (("active", active), ("consent", consent)):
        if value is not None and value not in keys:
            raise ConfigurationError(
                f"keyring file {source}: {name}.{field} names unknown key id {value!r}"
            )
    return keys, active, consent


def _decode_key(value: object, where: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigurationError(f"keyring file {source}: {where} must be a base64 string")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"keyring file {source}: {where} is not valid base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"keyring file {source}: {where} is too short ({len(key)} bytes, at least"
            f" {MIN_KEY_BYTES} needed)"
        )
    return key


def _check_key_set(name: str, keys: Mapping[str, bytes], active: str) -> None:
    if active not in keys:
        raise ValueError(f"{name}: active key id {active!r} is not in the key set")
    for key_id, key in keys.items():
        if not _KEY_ID.match(key_id):
            raise ValueError(f"{name}: bad key id {key_id!r}")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"{name}: key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes")


def _get(keys: Mapping[str, bytes], key_id: str, purpose: str) -> bytes:
    try:
        return keys[key_id]
    except KeyError:
        raise KeyError(f"no {purpose} key with id {key_id!r} in the keyring") from None


def _encode_keys(keys: Mapping[str, bytes]) -> dict[str, str]:
    return {key_id: base64.b64encode(key).decode("ascii") for key_id, key in keys.items()}
