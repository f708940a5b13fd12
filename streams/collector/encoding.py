"""Request bodies in a Content-Encoding: which are accepted, and decoding them with a cap.

Pure (bytes in, bytes out). The collector decodes bodies itself rather than letting aiohttp
do it, because aiohttp took an unknown coding (``br2``, ``gzip, identity``, ``x-gzip``) for
plain bytes, answered a body that is not gzip with 500, and answered ``br`` without the
Brotli package with its own 400 before any handler ran (issue 14). Here a coding is one of
:data:`SUPPORTED_ENCODINGS` or refused (415) before the body is read, a body that does not
decode is a 400, and the decoded size is capped while decoding, so a small compressed body
cannot expand into gigabytes.
"""

from __future__ import annotations

import zlib
from typing import Final

IDENTITY: Final = "identity"
GZIP: Final = "gzip"
DEFLATE: Final = "deflate"
SUPPORTED_ENCODINGS: Final = (IDENTITY, GZIP, DEFLATE)

# zlib's window bits: 16 + 15 reads a gzip member, 15 a zlib stream (what HTTP calls
# "deflate", RFC 9110 8.4.1.2), -15 a raw deflate stream (what some clients send instead).
_GZIP_WBITS: Final = 31
_ZLIB_WBITS: Final = 15
_RAW_DEFLATE_WBITS: Final = -15


class UndecodableBody(ValueError):
    """The body is not in the coding its Content-Encoding names; the message says why."""


class DecodedTooLarge(ValueError):
    """The decoded body would exceed the cap."""


def content_encoding(header: str | None) -> str | None:
    """The one supported coding a Content-Encoding header names, or None if it names
    anything else (several codings, an unknown one). No header is identity."""
    if header is None:
        return IDENTITY
    coding = header.strip().lower()
    if coding == "":
        return IDENTITY
    return coding if coding in SUPPORTED_ENCODINGS else None


def decode_body(body: bytes, coding: str, max_bytes: int) -> bytes:
    """``body`` decoded from ``coding``; raises :class:`UndecodableBody` or, as soon as the
    output passes ``max_bytes``, :class:`DecodedTooLarge`."""
    if coding == IDENTITY:
        if len(body) > max_bytes:
            raise DecodedTooLarge
        return body
    if coding == GZIP:
        return _inflate(body, _GZIP_WBITS, max_bytes, "gzip")
    if coding == DEFLATE:
        wbits = _ZLIB_WBITS if _has_zlib_header(body) else _RAW_DEFLATE_WBITS
        return _inflate(body, wbits, max_bytes, "deflate")
    raise UndecodableBody(f"the coding {coding!r} is not supported")


def _has_zlib_header(data: bytes) -> bool:
    # RFC 1950: compression method 8 (deflate), and the two header bytes a multiple of 31.
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _inflate(data: bytes, wbits: int, max_bytes: int, name: str) -> bytes:
    out = bytearray()
    remaining = data
    # A gzip body may hold several members one after the other (RFC 1952 2.2).
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(remaining, max_bytes + 1 - len(out))
        except zlib.error:
            raise UndecodableBody(f"the body is not valid {name} data") from None
        if len(out) > max_bytes:
            raise DecodedTooLarge
        if not inflater.eof:
            if inflater.unconsumed_tail:  # stopped at the cap with input left: too large
                raise DecodedTooLarge
            raise UndecodableBody(f"the {name} data of the body is cut short")
        remaining = inflater.unused_data
        if not remaining or wbits != _GZIP_WBITS:
            if remaining:
                raise UndecodableBody(f"the body has bytes after its {name} data")
            return bytes(out)
