"""CORS for browser clients: which web origins may post events (``aiohttp_cors``).

A browser sends the write key in an ``Authorization`` header, which no page may send to
another origin without asking first: the preflight ``OPTIONS`` is answered with the
allowed methods and headers for an allowed origin, and 403 for any other, so the browser
never sends the events. Credentials (cookies, the browser's own HTTP authentication) are
never allowed: the collector uses none, and ``Access-Control-Allow-Credentials`` with an
origin echoed for ``*`` would let every site on the web act with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import aiohttp_cors
from aiohttp import hdrs, web

from streams.origins import ANY_ORIGIN, check_origins

__all__ = ["ANY_ORIGIN", "allow_origins", "check_origins"]

# How long a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE_S: Final = 600
_ALLOWED_HEADERS: Final = (hdrs.AUTHORIZATION, hdrs.CONTENT_TYPE, hdrs.CONTENT_ENCODING)
# Retry-After tells a script when to send a batch again (429, 503).
_EXPOSED_HEADERS: Final = (hdrs.RETRY_AFTER,)


def allow_origins(app: web.Application, origins: Sequence[str], paths: Iterable[str]) -> None:
    """Answer CORS (preflights included) on the POST routes of ``paths`` for ``origins``."""
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        allow_headers=_ALLOWED_HEADERS,
        expose_headers=_EXPOSED_HEADERS,
        allow_methods=(hdrs.METH_POST,),
        max_age=PREFLIGHT_MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in check_origins(origins)})
    wanted = set(paths)
    for route in list(app.router.routes()):
        resource = route.resource
        if route.method == hdrs.METH_POST and resource is not None and resource.canonical in wanted:
            cors.add(route)
