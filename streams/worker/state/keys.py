"""128-bit pseudonyms (32 hex characters) as numpy words, for work over whole batches.

Event and consent keys are truncated HMAC-SHA256 outputs (``pseudonymize``), so their bits
are uniform: filters take their hash positions straight from the key, no hashing again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

KEY_BYTES: Final = 16

Words = npt.NDArray[np.uint64]  # shape (n, 2): the key's high and low 64 bits


def key_words(keys: Sequence[str]) -> Words:
    """The (high, low) 64-bit words of each 32-hex-character key, aligned with ``keys``."""
    raw = bytes.fromhex("".join(keys))
    if len(raw) != KEY_BYTES * len(keys):
        raise ValueError(f"keys must be {2 * KEY_BYTES} hex characters each")
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)


def words_from_raw(raw: bytes) -> Words:
    """:func:`key_words` of keys stored as concatenated 16-byte values."""
    if len(raw) % KEY_BYTES:
        raise ValueError("raw keys must be a multiple of 16 bytes")
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)


def raw_keys(words: Words) -> list[bytes]:
    """Each key as its 16 raw bytes (the store's key format), big-endian like the hex."""
    return np.ascontiguousarray(words, dtype=">u8").view(f"V{KEY_BYTES}").ravel().tolist()
