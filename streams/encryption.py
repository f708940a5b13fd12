"""Encryption at rest of identifiable Parquet (pyarrow's Parquet modular encryption).

Every identifiable file is encrypted whole (footer and all columns) with data keys that
pyarrow generates per file; the data keys are wrapped with the keyring's active encryption
key by :class:`KeyringKmsClient` (AES-256-GCM). A reader without the keyring sees nothing,
not even the schema. To plug in a real KMS, implement ``pyarrow.parquet.encryption.KmsClient``
and pass its factory to :func:`crypto_factory`.

Encrypted files are not byte-identical when a range is replayed (pyarrow draws fresh data
keys and nonces); their rows are.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from datetime import timedelta

import pyarrow.parquet.encryption as pqe
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


class KeyringKmsClient(pqe.KmsClient):
    """Wraps Parquet data keys with a local master key (AES-GCM); the key never leaves memory."""

    def __init__(self, master_keys: Mapping[str, bytes]) -> None:
        super().__init__()
        self._master_keys = dict(master_keys)

    def _aead(self, master_key_identifier: str) -> AESGCM:
        try:
            return AESGCM(self._master_keys[master_key_identifier])
        except KeyError:
            raise KeyError(
                f"no encryption key with id {master_key_identifier!r} in the keyring"
            ) from None

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead(master_key_identifier).encrypt(
            nonce, key_bytes, master_key_identifier.encode()
        )
        return base64.b64encode(nonce + sealed).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        raw = base64.b64decode(wrapped_key)
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        return self._aead(master_key_identifier).decrypt(
            nonce, sealed, master_key_identifier.encode()
        )

    def __repr__(self) -> str:
        return f"KeyringKmsClient(keys={sorted(self._master_keys)})"


class ParquetEncryption:
    """File encryption / decryption properties for one keyring's encryption keys."""

    def __init__(
        self,
        master_keys: Mapping[str, bytes],
        active_key_id: str,
        kms_factory: Callable[[pqe.KmsConnectionConfig], pqe.KmsClient] | None = None,
    ) -> None:
        keys = dict(master_keys)
        self._factory = pqe.CryptoFactory(kms_factory or (lambda _config: KeyringKmsClient(keys)))
        self._kms_config = pqe.KmsConnectionConfig()
        self._active_key_id = active_key_id

    def encryption_properties(self) -> pqe.FileEncryptionProperties:
        config = pqe.EncryptionConfiguration(
            footer_key=self._active_key_id,
            uniform_encryption=True,
            plaintext_footer=False,
            double_wrapping=True,
            cache_lifetime=timedelta(minutes=10),
        )
        return self._factory.file_encryption_properties(self._kms_config, config)

    def decryption_properties(self) -> pqe.FileDecryptionProperties:
        config = pqe.DecryptionConfiguration(cache_lifetime=timedelta(minutes=10))
        return self._factory.file_decryption_properties(self._kms_config, config)

    def __repr__(self) -> str:
        return f"ParquetEncryption(active_key_id={self._active_key_id!r})"
