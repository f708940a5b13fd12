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
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final

import duckdb
import plotly.offline
import pyarrow.fs as pafs
from aiohttp import web

from aggregations import dashboard_analytics, dashboard_billing
from aggregations.catalog import Role
from aggregations.dashboard_page import (
    CSP,
    EVERY_DAY,
    Connection,
    Span,
    cards,
    human_bytes,
    page,
    section,
)
from aggregations.pricing import NoMeteringError
from aggregations.storage import resolve_root
from aggregations.windows import last_closed_day
from streams.errors import ConfigurationError
from streams.http_server import serve_until_stopped
from streams.storage import write_atomic

PAGE_FILES: Final[dict[Role, str]] = {"analyst": "dashboard.html", "billing": "billing.html"}
CHART_IDS: Final[dict[Role, tuple[str, ...]]] = {
    "analyst": dashboard_analytics.CHART_IDS,
    "billing": dashboard_billing.CHART_IDS,
}

__all__ = [
    "CHART_IDS",
    "CSP",
    "PAGE_FILES",
    "Span",
    "build_dashboard",
    "create_app",
    "default_output",
    "default_span",
    "render_page",
    "serve",
    "write_page",
]


def default_span(
    mark: datetime | None, grace: timedelta, since: date | None, until: date | None
) -> Span:
    """The days a page shows (pure): ``since``/``until`` as given; by default the last
    closed month (its last day closed under the published watermark ``mark``), or every day
    before anything is closed. Only ``since``: through the last closed day; only ``until``:
    from the first of its month."""
    if since is not None and until is not None and since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    last = None if mark is None else last_closed_day(mark, grace)
    if since is None and until is None:
        if last is None:
            return EVERY_DAY
        ends_month = (last + timedelta(days=1)).month != last.month
        month_end = last if ends_month else last.replace(day=1) - timedelta(days=1)
        return Span(month_end.replace(day=1), month_end)
    if until is None:
        return Span(
            since, last if last is not None and since is not None and last >= since else None
        )
    return Span(since if since is not None else until.replace(day=1), until)


def _header(
    data: tuple[date, date] | None,
    facts: list[str],
    generated_at: datetime | None,
    shown: Span = EVERY_DAY,
) -> str:
    line = []
    if data is not None:
        line.append(f"Data: {data[0].isoformat()} to {data[1].isoformat()} (UTC days)")
    if shown.since is not None or shown.until is not None:
        line.append(f"showing {shown.describe()}")
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
    span: Span = EVERY_DAY,
) -> str:
    """The page from an open catalog connection of ``role`` (:mod:`aggregations.catalog`).

    ``account`` (billing only) restricts the charts to one account: one with no metering
    at all is a :class:`~aggregations.pricing.NoMeteringError`. ``epsilon`` is the
    configured budget, shown in the analysts' header; ``span`` the days shown.
    """
    if role == "analyst":
        if account is not None:
            raise ValueError("the analytics have no account dimension: --account is billing's")
        title = "Sieve analytics"
        data = dashboard_analytics.date_range(connection)
        facts = ["differentially private: every count has noise, bands are 95 % intervals"]
        if epsilon is not None:
            facts.append(f"epsilon = {epsilon:g} per person per day (configured)")
        header = _header(data, facts, generated_at, span)
        if data is None:
            return page(title, header, _nothing(role), "")
        body = "".join(section(chart) for chart in dashboard_analytics.charts(connection, span))
        return page(title, header, body, plotly.offline.get_plotlyjs())
    if account is not None and not dashboard_billing.known_account(connection, account):
        raise NoMeteringError(f"unknown account {account!r}: no metering published for it")
    title = "Sieve billing" + (f": {account}" if account else "")
    data = dashboard_billing.date_range(connection)
    facts = ["exact per-account metering: billing role only"]
    if account:
        facts.append(f"account: {account}")
    header = _header(data, facts, generated_at, span)
    if data is None:
        return page(title, header, _nothing(role), "")
    summary = cards(
        [
            (label, human_bytes(value) if label.endswith("loaded") else f"{value:,}")
            for label, value in dashboard_billing.totals(connection, account, span)
        ]
    )
    body = summary + "".join(
        section(chart) for chart in dashboard_billing.charts(connection, account, span)
    )
    return page(title, header, body, plotly.offline.get_plotlyjs())


def build_dashboard(
    connection_or_data_root: Connection | str | os.PathLike[str],
    *,
    role: Role = "analyst",
    account: str | None = None,
    epsilon: float | None = None,
    generated_at: datetime | None = None,
    span: Span | None = EVERY_DAY,
    watermark: datetime | None = None,
    grace: timedelta = timedelta(hours=1),
) -> str:
    """A self-contained HTML page of ``role``'s charts over its published views.

    Given a data root, opens the role's catalog locked down (creating the empty published
    folders if need be, like ``sieve sql``) and closes it after. ``span``: the days shown;
    None: the default of :func:`default_span` under ``watermark``, or every day when that
    month has no data for the role.
    """
    if role == "analyst" and account is not None:
        # Before anything opens: opening a data root creates its published folders.
        raise ValueError("the analytics have no account dimension: --account is billing's")
    if isinstance(connection_or_data_root, duckdb.DuckDBPyConnection):
        connection, close = connection_or_data_root, False
    else:
        from aggregations.sandbox import open_sandbox

        connection, close = open_sandbox(os.fspath(connection_or_data_root), role), True
    try:
        if span is None:
            span = default_span(watermark, grace, None, None)
            data = (dashboard_analytics if role == "analyst" else dashboard_billing).date_range
            if data(connection, span) is None:
                span = EVERY_DAY
        return render_page(
            connection,
            role=role,
            account=account,
            epsilon=epsilon,
            generated_at=generated_at,
            span=span,
        )
    finally:
        if close:
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
    write_atomic(pafs.LocalFileSystem(), str(path), lambda out: out.write(text.encode()))


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
