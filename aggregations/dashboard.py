"""The dashboards: one self-contained HTML page of charts over one role's published views.

- **analyst** (the default, for anyone who reads analytics): differentially private
  analytics only, each number with its 95 % interval (:mod:`aggregations.dashboard_analytics`).
- **billing** (``--role billing``, for whoever invoices): exact per-account usage,
  bandwidth and sessions from metering (:mod:`aggregations.dashboard_billing`). It used to
  share the analysts' page; an account with one user is one person's exact activity, so it
  is a billing artefact now, written to its own file.

Given a data root, ``build_dashboard`` opens the role's catalog locked down (no file
outside the role's published folders is readable), so no query here can reach facts,
identifiable data or the other role's data even by mistake. ``serve`` adds a small aiohttp
server that rebuilds the page on every request.
"""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Final

import duckdb
import plotly.offline
from aiohttp import web

from aggregations import dashboard_analytics, dashboard_billing
from aggregations.catalog import Role
from aggregations.dashboard_page import CSP, Connection, cards, human_bytes, page, section
from aggregations.storage import resolve_root
from streams.errors import ConfigurationError
from streams.http_server import serve_until_stopped

PAGE_FILES: Final[dict[Role, str]] = {"analyst": "dashboard.html", "billing": "billing.html"}
CHART_IDS: Final[dict[Role, tuple[str, ...]]] = {
    "analyst": dashboard_analytics.CHART_IDS,
    "billing": dashboard_billing.CHART_IDS,
}

__all__ = [
    "CHART_IDS",
    "CSP",
    "PAGE_FILES",
    "build_dashboard",
    "create_app",
    "default_output",
    "render_page",
    "serve",
    "write_page",
]


def _header(
    span: tuple[date, date] | None,
    facts: list[str],
    generated_at: datetime | None,
) -> str:
    line = []
    if span is not None:
        line.append(f"Data: {span[0].isoformat()} to {span[1].isoformat()} (UTC days)")
    line += facts
    if generated_at is not None:
        line.append(f"generated {generated_at.isoformat(timespec='seconds')}")
    return f'<p class="meta">{html.escape(" · ".join(line))}</p>'


def _nothing(role: Role) -> str:
    return (
        '<section><p class="nothing" id="nothing-published">Nothing is published yet.'
        " Run <code>sieve publish</code> once the worker has committed events: a window"
        " is published after it closes (its end plus the grace period)."
        + (
            " A day's analytics are released once, when it closes, and late facts in its"
            " late batches."
            if role == "analyst"
            else ""
        )
        + "</p></section>"
    )


def render_page(
    connection: Connection,
    *,
    role: Role = "analyst",
    account: str | None = None,
    epsilon: float | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The page from an open catalog connection of ``role`` (:mod:`aggregations.catalog`).

    ``account`` (billing only) restricts the charts to one account; ``epsilon`` is the
    configured budget, shown in the analysts' header.
    """
    if role == "analyst":
        if account is not None:
            raise ValueError("the analytics have no account dimension: --account is billing's")
        title = "Sieve analytics"
        span = dashboard_analytics.date_range(connection)
        facts = ["differentially private: every count has noise, bands are 95 % intervals"]
        if epsilon is not None:
            facts.append(f"epsilon = {epsilon:g} per person per day (configured)")
        header = _header(span, facts, generated_at)
        if span is None:
            return page(title, header, _nothing(role), "")
        body = "".join(section(chart) for chart in dashboard_analytics.charts(connection))
        return page(title, header, body, plotly.offline.get_plotlyjs())
    title = "Sieve billing" + (f": {account}" if account else "")
    span = dashboard_billing.date_range(connection)
    facts = ["exact per-account metering: billing role only"]
    if account:
        facts.append(f"account: {account}")
    header = _header(span, facts, generated_at)
    if span is None:
        return page(title, header, _nothing(role), "")
    accounts, requests, page_views, sessions, up, down = dashboard_billing.totals(
        connection, account
    )
    summary = cards(
        [
            ("accounts", f"{accounts:,}"),
            ("requests", f"{requests:,}"),
            ("page views", f"{page_views:,}"),
            ("sessions", f"{sessions:,}"),
            ("uploaded", human_bytes(up)),
            ("downloaded", human_bytes(down)),
        ]
    )
    body = summary + "".join(
        section(chart) for chart in dashboard_billing.charts(connection, account)
    )
    return page(title, header, body, plotly.offline.get_plotlyjs())


def build_dashboard(
    connection_or_data_root: Connection | str | os.PathLike[str],
    *,
    role: Role = "analyst",
    account: str | None = None,
    epsilon: float | None = None,
    generated_at: datetime | None = None,
) -> str:
    """A self-contained HTML page of ``role``'s charts over its published views.

    Given a data root, opens the role's catalog locked down (creating the empty published
    folders if need be, like ``sieve sql``) and closes it after.
    """
    options = {"role": role, "account": account, "epsilon": epsilon, "generated_at": generated_at}
    if isinstance(connection_or_data_root, duckdb.DuckDBPyConnection):
        return render_page(connection_or_data_root, **options)  # type: ignore[arg-type]
    from aggregations.sandbox import open_sandbox

    connection = open_sandbox(os.fspath(connection_or_data_root), role)
    try:
        return render_page(connection, **options)  # type: ignore[arg-type]
    finally:
        connection.close()


def default_output(data_root: str, role: Role = "analyst") -> Path:
    """``<data root>/dashboard.html`` (billing: ``billing.html``); a data root that is not a
    local folder needs --out."""
    root = resolve_root(data_root)
    if not root.is_local:
        raise ConfigurationError(
            f"the data root {data_root} is not a local folder: pass --out FILE for the page"
        )
    return Path(root.path) / PAGE_FILES[role]


def write_page(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a browser refreshing never reads half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


# --- serving ------------------------------------------------------------------------------


def create_app(render: Callable[[], str]) -> web.Application:
    """An app serving ``render()`` at ``/``, rebuilt per request (in a thread: DuckDB and
    plotly block, and the server must keep answering)."""

    async def handler(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render)
        return web.Response(
            text=body,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP},
        )

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def serve(
    app: web.Application, host: str, port: int, on_ready: Callable[[list[str]], None]
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; ``on_ready`` gets the URLs once listening."""
    await serve_until_stopped(app, host, port, on_ready, what="dashboard", port_hint="--port")
