"""streams.collector.encoding: which codings are accepted, and decoding with a cap."""

from __future__ import annotations

import gzip
import zlib

import pytest

from streams.collector.encoding import (
    DecodedTooLarge,
    UndecodableBody,
    content_encoding,
    decode_body,
)

BODY = b'[{"type": "login"}]' * 20


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, "identity"),
        ("", "identity"),
        ("identity", "identity"),
        ("gzip", "gzip"),
        (" GZip ", "gzip"),
        ("deflate", "deflate"),
        ("br", None),  # aiohttp would answer 400 itself without the Brotli package
        ("br2", None),  # aiohttp took it for plain bytes
        ("x-gzip", None),
        ("gzip, identity", None),  # aiohttp took stacked codings for plain bytes
        ("gzip,gzip", None),
        ("zstd", None),
    ],
)
def test_content_encoding(header: str | None, coding: str | None) -> None:
    assert content_encoding(header) == coding


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("gzip", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),  # two members
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some clients send
    ],
)
def test_decoding_round_trips(coding: str, encode: object) -> None:
    assert callable(encode)
    assert decode_body(encode(BODY), coding, max_bytes=len(BODY)) == BODY


@pytest.mark.parametrize("coding", ["identity", "gzip", "deflate"])
def test_the_cap_applies_to_the_decoded_size(coding: str) -> None:
    data = {"identity": BODY, "gzip": gzip.compress(BODY), "deflate": zlib.compress(BODY)}[coding]
    with pytest.raises(DecodedTooLarge):
        decode_body(data, coding, max_bytes=len(BODY) - 1)


def test_a_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024))  # 200 MB in ~200 KB
    with pytest.raises(DecodedTooLarge):
        decode_body(bomb, "gzip", max_bytes=1024 * 1024)


@pytest.mark.parametrize(
    ("coding", "data", "words"),
    [
        ("gzip", b"not gzip", "not valid gzip"),
        ("gzip", gzip.compress(BODY, mtime=0)[:-10], "cut short"),
        ("gzip", gzip.compress(BODY, mtime=0) + b"junk", "not valid gzip"),
        ("deflate", b"\xff" * 20, "not valid deflate"),
        ("deflate", zlib.compress(BODY) + b"junk", "bytes after"),
    ],
)
def test_a_body_not_in_its_coding_says_why(coding: str, data: bytes, words: str) -> None:
    with pytest.raises(UndecodableBody, match=words):
        decode_body(data, coding, max_bytes=10 * len(BODY))
