"""Web origins as the CORS setting names them (``SIEVE_COLLECTOR_CORS_ORIGINS``): the rule
the settings check at load time and the collector (streams.collector.cors) applies. Here,
below both, so that reading the settings needs nothing of the collector."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

ANY_ORIGIN: Final = "*"


def check_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """``origins`` as the collector will compare them, or ``ValueError`` naming the first
    that is not ``*`` or a bare origin (``https://app.example.com[:port]``: a browser's
    ``Origin`` header has no path, no query and no trailing slash, so such an entry would
    never match and the mistake would pass silently)."""
    checked: list[str] = []
    for origin in origins:
        origin = origin.strip()
        if origin == ANY_ORIGIN:
            checked.append(origin)
            continue
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(
                f"{origin!r} is not an origin: write scheme://host[:port] (no path, no"
                " trailing slash), or * for any origin"
            )
        checked.append(origin.lower())
    return tuple(checked)
