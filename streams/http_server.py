"""Serving an aiohttp app from a command (the collector, the dashboard) until a signal.

Binding errors become one clear line; SIGINT/SIGTERM stop accepting, then requests in
flight finish before the runner closes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from streams.errors import ConfigurationError

# No client address in access logs: it is personal data and nothing here needs it.
ACCESS_LOG_FORMAT = '%t "%r" %s %b %Tf'


@dataclass(frozen=True)
class Listener:
    """An application served beside the main one, on an address of its own (the
    collector's ``/metrics``, which its clients' port must not show)."""

    app: web.Application
    host: str
    port: int
    what: str
    port_hint: str
    on_ready: Callable[[list[str]], None] = lambda urls: None


async def serve_until_stopped(
    app: web.Application,
    host: str,
    port: int,
    on_ready: Callable[[list[str]], None],
    *,
    what: str,
    port_hint: str,
    also: Sequence[Listener] = (),
) -> None:
    """Serve ``app`` (and each of ``also``) until SIGINT or SIGTERM; ``on_ready`` gets the
    URLs once everything listens."""
    main = Listener(app, host, port, what, port_hint, on_ready)
    runners: list[tuple[Listener, web.AppRunner]] = []
    try:
        for listener in (main, *also):
            runner = web.AppRunner(listener.app, access_log_format=ACCESS_LOG_FORMAT)
            runners.append((listener, runner))
            await runner.setup()
            try:
                await web.TCPSite(runner, listener.host, listener.port).start()
            except OSError as error:
                raise ConfigurationError(
                    f"the {listener.what} cannot listen on {listener.host}:{listener.port}"
                    f" ({error.strerror or error}); choose another {listener.port_hint}"
                ) from None
        for listener, runner in runners:
            listener.on_ready([url_of(address) for address in runner.addresses])
        await _until_stopped()
    finally:
        for _, runner in runners:  # the main app first: /metrics answers while it drains
            await runner.cleanup()


async def _until_stopped() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stop_signal, stopped.set)
    try:
        await stopped.wait()
    finally:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(stop_signal)


def url_of(address: object) -> str:
    """``http://host:port`` of a runner address ((host, port) or IPv6's 4-tuple)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"http://{host}:{address[1]}"
    return str(address)
