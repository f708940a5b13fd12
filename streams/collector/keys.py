"""Collector write keys: which key may write events for which account.

Format of the file (``SIEVE_WRITE_KEYS_FILE``, JSON, mode 0600)::

    {"<account_id>": ["<key>", "<another key>"], "<other account>": ["<key>"]}

An account may hold several keys so a key can rotate: add the new one, move the clients,
then remove the old one. An empty list disables an account without deleting it.

Keys are secrets. They never appear in ``repr``, error messages or logs: errors name the
account and the position of a bad key, never the key. Only SHA-256 digests of the keys are
kept in memory, which also gives every comparison inputs of one fixed length (see
:meth:`WriteKeys.authenticate`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from streams.errors import ConfigurationError
from streams.secret_files import parse_secret_json, read_private_text

# Random keys of fewer characters are guessable by a patient client; 16 base64 characters
# are 96 bits.
MIN_KEY_CHARS: Final = 16
MAX_KEY_CHARS: Final = 256
# RFC 6750 ``b64token``: what may follow ``Bearer`` in an Authorization header unquoted.
_KEY_SYNTAX: Final = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
# The event contract's Identifier (schemas.events): an account id no event could carry
# would make a key that can never write anything.
_ACCOUNT_SYNTAX: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


class WriteKeys:
    """The write keys of every account, held as digests. Immutable; never shows a key."""

    __slots__ = ("_accounts", "_entries")

    def __init__(self, keys_by_account: Mapping[str, Sequence[str]]) -> None:
        """Check ``keys_by_account`` and keep digests; ``ValueError`` names what is wrong."""
        entries: list[tuple[str, bytes]] = []
        owner_by_digest: dict[bytes, str] = {}
        for account_id, keys in keys_by_account.items():
            if not _ACCOUNT_SYNTAX.match(account_id):
                raise ValueError(
                    f"account id {account_id!r} must be 1 to 128 printable ASCII characters"
                    " without spaces"
                )
            if isinstance(keys, str):
                raise ValueError(f"the keys of account {account_id!r} must be a list of strings")
            for position, key in enumerate(keys):
                where = f"key #{position + 1} of account {account_id!r}"
                _check_key(key, where)
                digest = _digest(key)
                if digest in owner_by_digest:
                    # One key for two accounts would make the account of a request
                    # ambiguous; a repeated key of one account is a copy-paste slip.
                    raise ValueError(
                        f"{where} is also listed for account {owner_by_digest[digest]!r};"
                        " every key must be unique"
                    )
                owner_by_digest[digest] = account_id
                entries.append((account_id, digest))
        if not entries:
            raise ValueError("no write keys at all: the collector would refuse every request")
        self._entries: tuple[tuple[str, bytes], ...] = tuple(entries)
        self._accounts: frozenset[str] = frozenset(keys_by_account)

    @classmethod
    def load(cls, path: Path) -> WriteKeys:
        """Read a write keys file; any problem is a :class:`ConfigurationError` naming it."""
        text = read_private_text(
            path,
            "write keys file",
            'set SIEVE_WRITE_KEYS_FILE to a JSON file {"<account_id>": ["<key>", ...]}',
        )
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "<write keys>") -> WriteKeys:
        """Parse the file format; ``source`` names the file in error messages."""
        document = parse_secret_json(text, "write keys file", source)
        keys_by_account = _parse_document(document, source)
        try:
            return cls(keys_by_account)
        except ValueError as problem:
            raise ConfigurationError(f"write keys file {source}: {problem}") from None

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts listed (including ones whose key list is empty)."""
        return self._accounts

    def __len__(self) -> int:
        """How many keys there are in all."""
        return len(self._entries)

    def authenticate(self, presented: str) -> str | None:
        """The account ``presented`` is a key of, or None.

        Takes the same time whichever key matches, and whether one does: the presented key
        is compared (``hmac.compare_digest``) with every key of every account, with no early
        exit, so response times tell an attacker neither that a prefix was right nor which
        account a key belongs to. Comparing SHA-256 digests gives compare_digest inputs of
        one length (it leaks lengths otherwise).
        """
        digest = _digest(presented)
        matched: str | None = None
        for account_id, candidate in self._entries:
            if hmac.compare_digest(digest, candidate):
                matched = account_id
        return matched

    def __repr__(self) -> str:
        return f"WriteKeys({len(self._entries)} keys for {len(self._accounts)} accounts)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Digests of keys are still key material (a digest list is an offline guessing
        # target): they stay in the process that loaded them.
        raise TypeError("WriteKeys cannot be pickled; pass the write keys file path instead")


def _digest(key: str) -> bytes:
    # ``errors="replace"``: a header may carry any Latin-1 text; it must not raise here.
    return hashlib.sha256(key.encode("utf-8", errors="replace")).digest()


def _check_key(key: object, where: str) -> None:
    if not isinstance(key, str):
        raise ValueError(f"{where} must be a string")
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS:
        raise ValueError(
            f"{where} has {len(key)} characters; a key needs {MIN_KEY_CHARS} to"
            f" {MAX_KEY_CHARS} (make one with `python -c 'import secrets;"
            " print(secrets.token_urlsafe(32))'`)"
        )
    if not _KEY_SYNTAX.match(key):
        raise ValueError(f"{where} may only hold A-Z a-z 0-9 - . _ ~ + / and trailing =")


def _parse_document(document: object, source: str) -> dict[str, list[str]]:
    if not isinstance(document, dict):
        raise ConfigurationError(
            f'write keys file {source} must hold a JSON object {{"<account_id>": ["<key>", ...]}}'
        )
    parsed: dict[str, list[str]] = {}
    for account_id, keys in document.items():
        if not isinstance(keys, list):
            raise ConfigurationError(
                f"write keys file {source}: the keys of account {account_id!r} must be a"
                " JSON array of strings"
            )
        parsed[account_id] = keys
    return parsed
