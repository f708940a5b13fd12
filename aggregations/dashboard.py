"""The dashboard: one self-contained HTML page of charts over the *published* views.

``build_dashboard(data_root_or_connection)`` reads only the catalog views (see
:mod:`aggregations.catalog`): exact metering for usage, bandwidth and sessions, and the
k-anonymous analytics cells for sessions' median length, geography and devices. Given a data
root it opens the catalog locked down (no file outside ``published/`` is readable), so no
query here can reach facts or identifiable data even by mistake.

The page needs no network: plotly.js is inlined once in ``<head>``, every chart is a plotly
figure whose data is inlined JSON, and a Content-Security-Policy forbids loading or sending
anything (``connect-src 'none'``), so a future plotly that reached for a CDN would fail
loudly in the browser instead of quietly phoning home. ``serve`` adds a small aiohttp server
that rebuilds the page on every request.
"""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

import duckdb
import plotly.graph_objects as go
import plotly.offline
from aiohttp import web
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from aggregations.storage import resolve_root
from streams.errors import ConfigurationError
from streams.http_server import serve_until_stopped

PAGE_FILE: Final = "dashboard.html"
TOP_ACCOUNTS: Final = 8
TOP_VALUES: Final = 20
# Ids of the chart divs, in page order (tests and bookmarks rely on them).
CHART_IDS: Final = (
    "chart-usage",
    "chart-bandwidth",
    "chart-sessions",
    "chart-geography",
    "chart-devices",
)
DEVICE_DIMENSIONS: Final = (
    ("device_class", "Device class"),
    ("browser_family", "Browser"),
    ("os_family", "OS"),
)
# Inline scripts and styles only; nothing may be fetched, framed or sent anywhere.
CSP: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; "
    "base-uri 'none'"
)
# No client address in the access log (as the collector): it is personal data.
_PLOT_CONFIG: Final = {"displaylogo": False, "responsive": True}
# One colour per account in both usage panels (plotly would give each trace the next one).
_ACCOUNT_COLOURS: Final = qualitative.Plotly
_OTHERS_COLOUR: Final = "#9ca3af"
_DAY_MS: Final = 86_400_000

Connection = duckdb.DuckDBPyConnection
Rows = list[tuple[Any, ...]]
# (label, events, person-days) of one dimension's published cells.
Cells = list[tuple[str, int, int]]


@dataclass(frozen=True)
class Chart:
    """One section of the page: a figure, or the reason there is none yet."""

    div_id: str
    title: str
    note: str
    figure: go.Figure | None
    empty_message: str


# --- queries (constant SQL over the catalog views; values are parameters) ------------------

_ACCOUNT = "(CAST($account AS VARCHAR) IS NULL OR account_id = $account)"
_LABEL = "CASE WHEN cell = 'other' THEN '(other)' ELSE coalesce(value, '(unknown)') END"


def _rows(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> Rows:
    return connection.execute(sql, params or {}).fetchall()


def _date_range(connection: Connection) -> tuple[date, date] | None:
    ((first, last),) = _rows(
        connection,
        "SELECT min(date), max(date) FROM (SELECT date FROM metering_daily"
        " UNION ALL SELECT date FROM analytics_daily)",
    )
    return None if first is None else (first, last)


def _smallest_cell(connection: Connection) -> int | None:
    ((people,),) = _rows(
        connection,
        "SELECT min(people) FROM (SELECT people FROM analytics_daily"
        " UNION ALL SELECT people FROM analytics_hourly)",
    )
    return None if people is None else int(people)


def _totals(connection: Connection, account: str | None) -> tuple[Any, ...]:
    (row,) = _rows(
        connection,
        f"""
        SELECT count(DISTINCT account_id), sum(requests), sum(page_views), sum(sessions),
               sum(upload_bytes), sum(download_bytes)
        FROM metering_daily WHERE {_ACCOUNT}
        """,  # noqa: S608 - constant fragments only
        {"account": account},
    )
    return tuple(0 if value is None else value for value in row)


def _usage(connection: Connection, account: str | None, top: int) -> Rows:
    """(date, account or None for "others", requests, page_views), busiest accounts first."""
    return _rows(
        connection,
        f"""
        WITH usage AS (
            SELECT date, account_id, requests, page_views FROM metering_daily WHERE {_ACCOUNT}
        ), ranked AS (
            SELECT account_id, row_number() OVER (
                ORDER BY sum(requests + page_views) DESC, account_id) AS rank
            FROM usage GROUP BY account_id
        ), labelled AS (
            SELECT date, requests, page_views, least(rank, $top + 1) AS bucket,
                   CASE WHEN rank <= $top THEN account_id END AS account
            FROM usage JOIN ranked USING (account_id)
        )
        SELECT date, account, CAST(sum(requests) AS BIGINT), CAST(sum(page_views) AS BIGINT)
        FROM labelled GROUP BY bucket, account, date ORDER BY bucket, date
        """,  # noqa: S608 - constant fragments only
        {"account": account, "top": top},
    )


def _bandwidth(connection: Connection, account: str | None) -> Rows:
    return _rows(
        connection,
        f"""
        SELECT date, CAST(sum(upload_bytes) AS BIGINT), CAST(sum(uploads) AS BIGINT),
               CAST(sum(download_bytes) AS BIGINT), CAST(sum(downloads) AS BIGINT)
        FROM metering_daily WHERE {_ACCOUNT} GROUP BY date ORDER BY date
        """,  # noqa: S608 - constant fragments only
        {"account": account},
    )


def _sessions(connection: Connection, account: str | None) -> Rows:
    """(date, sessions started or None, median session seconds over all accounts or None)."""
    return _rows(
        connection,
        f"""
        WITH m AS (
            SELECT date, CAST(sum(sessions) AS BIGINT) AS sessions FROM metering_daily
            WHERE {_ACCOUNT} GROUP BY date
        ), a AS (
            SELECT date, median_session_seconds FROM analytics_daily
            WHERE dimension = 'type' AND cell = 'value' AND value = 'logout'
              AND median_session_seconds IS NOT NULL
        )
        SELECT date, m.sessions, a.median_session_seconds
        FROM m FULL JOIN a USING (date) ORDER BY date
        """,  # noqa: S608 - constant fragments only
        {"account": account},
    )


def _cells(connection: Connection, dimension: str) -> Cells:
    """One dimension's published day cells summed over the range, largest first."""
    rows = _rows(
        connection,
        f"""
        SELECT {_LABEL} AS label, CAST(sum(events) AS BIGINT) AS events,
               CAST(sum(people) AS BIGINT) AS person_days
        FROM analytics_daily WHERE dimension = $dimension AND cell IN ('value', 'other')
        GROUP BY label ORDER BY events DESC, label
        """,  # noqa: S608 - constant fragments only
        {"dimension": dimension},
    )
    return [(str(label), int(events), int(people)) for label, events, people in rows]


# --- figures (pure: rows in, plotly figure out) ------------------------------------------


def _style(figure: go.Figure, height: int) -> go.Figure:
    figure.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 30, "t": 50, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 0},
        hovermode="x unified",
        font={"size": 13},
    )
    return figure


def _day_axis(figure: go.Figure, days: Sequence[date]) -> None:
    """Ticks on whole days, at most about a dozen: plotly's automatic date ticks land on
    noon and midnight for short ranges, which reads as hourly data."""
    if not days:
        return
    first, last = min(days), max(days)
    step = max(1, -(-((last - first).days + 1) // 12))
    figure.update_xaxes(
        type="date", tick0=first.isoformat(), dtick=step * _DAY_MS, tickformat="%b %-d\n%Y"
    )


def top_values(rows: Cells, limit: int) -> Cells:
    """The ``limit`` largest rows, the rest summed into one "(all others)" row. Summing
    published cells publishes nothing new: each is already >= k people."""
    head, tail = list(rows[:limit]), rows[limit:]
    if tail:
        head.append(("(all others)", sum(r[1] for r in tail), sum(r[2] for r in tail)))
    return head


def usage_figure(rows: Rows) -> go.Figure:
    figure = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=("Requests per day", "Page views per day"),
    )
    accounts = list(dict.fromkeys(row[1] for row in rows))
    for index, account in enumerate(accounts):
        mine = [row for row in rows if row[1] == account]
        name = "others" if account is None else str(account)
        colour = (
            _OTHERS_COLOUR if account is None else _ACCOUNT_COLOURS[index % len(_ACCOUNT_COLOURS)]
        )
        days = [row[0] for row in mine]
        for line, column in ((1, 2), (2, 3)):
            figure.add_trace(
                go.Bar(
                    x=days,
                    y=[row[column] for row in mine],
                    name=name,
                    legendgroup=name,
                    marker_color=colour,
                    showlegend=line == 1,
                    hovertemplate="%{y:,}",
                ),
                row=line,
                col=1,
            )
    figure.update_layout(barmode="stack")
    _day_axis(figure, [row[0] for row in rows])
    return _style(figure, 560)


def bandwidth_figure(rows: Rows) -> go.Figure:
    days = [row[0] for row in rows]
    figure = go.Figure(
        [
            go.Bar(
                x=days,
                y=[row[1] for row in rows],
                customdata=[row[2] for row in rows],
                name="uploaded",
                hovertemplate="%{y:.3~s}B in %{customdata:,} uploads",
            ),
            go.Bar(
                x=days,
                y=[row[3] for row in rows],
                customdata=[row[4] for row in rows],
                name="downloaded",
                hovertemplate="%{y:.3~s}B in %{customdata:,} downloads",
            ),
        ]
    )
    figure.update_layout(
        barmode="group", yaxis={"title": "bytes per day", "tickformat": ".3~s", "ticksuffix": "B"}
    )
    _day_axis(figure, days)
    return _style(figure, 380)


def sessions_figure(rows: Rows) -> go.Figure:
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    days = [row[0] for row in rows]
    figure.add_trace(
        go.Bar(x=days, y=[row[1] for row in rows], name="sessions started", hovertemplate="%{y:,}"),
        secondary_y=False,
    )
    minutes = [None if row[2] is None else round(float(row[2]) / 60, 2) for row in rows]
    if any(m is not None for m in minutes):
        figure.add_trace(
            go.Scatter(
                x=days,
                y=minutes,
                name="median session length (min, all accounts)",
                mode="lines+markers",
                connectgaps=False,
                hovertemplate="%{y:.1f} min",
            ),
            secondary_y=True,
        )
    figure.update_yaxes(title_text="sessions", secondary_y=False)
    figure.update_yaxes(
        title_text="minutes", secondary_y=True, rangemode="tozero", showgrid=False, tickformat=".1f"
    )
    _day_axis(figure, days)
    return _style(figure, 380)


def geography_figure(rows: Cells) -> go.Figure:
    shown = list(reversed(top_values(rows, TOP_VALUES)))  # largest on top
    labels = [row[0] for row in shown]
    figure = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=("Events", "Person-days"),
    )
    figure.add_trace(
        go.Bar(
            y=labels,
            x=[row[1] for row in shown],
            orientation="h",
            name="events",
            hovertemplate="%{y}: %{x:,} events",
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Bar(
            y=labels,
            x=[row[2] for row in shown],
            orientation="h",
            name="person-days",
            hovertemplate="%{y}: %{x:,} person-days",
        ),
        row=1,
        col=2,
    )
    figure = _style(figure, max(260, 60 + 26 * len(shown)))
    figure.update_layout(showlegend=False, hovermode="closest")
    return figure


def devices_figure(by_dimension: dict[str, Cells]) -> go.Figure:
    figure = make_subplots(
        rows=1,
        cols=len(DEVICE_DIMENSIONS),
        horizontal_spacing=0.12,
        subplot_titles=[title for _, title in DEVICE_DIMENSIONS],
    )
    longest = 1
    for column, (dimension, title) in enumerate(DEVICE_DIMENSIONS, start=1):
        shown = list(reversed(top_values(by_dimension.get(dimension, []), 10)))
        longest = max(longest, len(shown))
        total = sum(row[1] for row in shown) or 1
        figure.add_trace(
            go.Bar(
                y=[row[0] for row in shown],
                x=[100 * row[1] / total for row in shown],
                customdata=[row[1] for row in shown],
                orientation="h",
                name=title,
                hovertemplate="%{y}: %{x:.1f}% (%{customdata:,} events)<extra></extra>",
            ),
            row=1,
            col=column,
        )
    figure.update_xaxes(title_text="% of events", ticksuffix="%")
    figure = _style(figure, max(260, 80 + 28 * longest))
    figure.update_layout(showlegend=False, hovermode="closest")
    return figure


# --- the page -----------------------------------------------------------------------------


def _charts(connection: Connection, account: str | None) -> list[Chart]:
    scope = f"account {account}" if account else f"top {TOP_ACCOUNTS} accounts and others"
    usage, bandwidth, sessions = (
        _usage(connection, account, TOP_ACCOUNTS),
        _bandwidth(connection, account),
        _sessions(connection, account),
    )
    countries = _cells(connection, "country")
    devices = {dimension: _cells(connection, dimension) for dimension, _ in DEVICE_DIMENSIONS}
    no_metering = "No metering published yet" + (f" for account {account}." if account else ".")
    no_cells = "No k-anonymous cells published yet (days with fewer than k people are held back)."
    all_accounts = " All accounts: analytics have no account dimension." if account else ""
    return [
        Chart(
            CHART_IDS[0],
            "Usage",
            f"Exact metering, {scope}.",
            usage_figure(usage) if usage else None,
            no_metering,
        ),
        Chart(
            CHART_IDS[1],
            "Bandwidth",
            "Bytes uploaded and downloaded per day (exact metering).",
            bandwidth_figure(bandwidth) if bandwidth else None,
            no_metering,
        ),
        Chart(
            CHART_IDS[2],
            "Sessions",
            "Sessions started per day (exact metering); median length of the sessions ended"
            " that day (k-anonymous, over all accounts, shown only where published).",
            sessions_figure(sessions) if sessions else None,
            no_metering,
        ),
        Chart(
            CHART_IDS[3],
            "Geography",
            "Events and person-days per country over the range (k-anonymous cells; people are"
            f" counted once per day, so person-days are not distinct people).{all_accounts}",
            geography_figure(countries) if countries else None,
            no_cells,
        ),
        Chart(
            CHART_IDS[4],
            "Devices",
            f"Share of events by device class, browser and OS (k-anonymous).{all_accounts}",
            devices_figure(devices) if any(devices.values()) else None,
            no_cells,
        ),
    ]


def _section(chart: Chart) -> str:
    body = (
        chart.figure.to_html(
            full_html=False, include_plotlyjs=False, div_id=chart.div_id, config=_PLOT_CONFIG
        )
        if chart.figure is not None
        else f'<p class="empty" id="{chart.div_id}-empty">{html.escape(chart.empty_message)}</p>'
    )
    return (
        f'<section id="section-{chart.div_id}"><h2>{html.escape(chart.title)}</h2>'
        f'<p class="note">{html.escape(chart.note)}</p>{body}</section>'
    )


def _summary(totals: tuple[Any, ...]) -> str:
    accounts, requests, page_views, sessions, up, down = totals
    cards = [
        ("accounts", f"{accounts:,}"),
        ("requests", f"{requests:,}"),
        ("page views", f"{page_views:,}"),
        ("sessions", f"{sessions:,}"),
        ("uploaded", _bytes(up)),
        ("downloaded", _bytes(down)),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'
            for label, value in cards
        )
        + "</div>"
    )


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _header(
    span: tuple[date, date] | None,
    k: int | None,
    smallest: int | None,
    account: str | None,
    generated_at: datetime | None,
) -> str:
    facts = []
    if span is not None:
        facts.append(f"Data: {span[0].isoformat()} to {span[1].isoformat()} (UTC days)")
    if k is not None:
        facts.append(f"analytics k = {k} (configured)")
    if smallest is not None:
        facts.append(f"smallest published cell: {smallest} people")
    if account:
        facts.append(f"account: {account}")
    if generated_at is not None:
        facts.append(f"generated {generated_at.isoformat(timespec='seconds')}")
    line = f'<p class="meta">{html.escape(" · ".join(facts))}</p>'
    if k is not None and smallest is not None and smallest < k:
        # Sums over batches only grow cells, so a view cell under k means an actual cell was.
        line += (
            f'<p class="warning">Some published cells describe fewer than k = {k} people:'
            " they were published with a smaller k than is configured now.</p>"
        )
    return line


_STYLE: Final = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; background: #f4f6f9; color: #1f2937; }
header { background: #1f2937; color: #f9fafb; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 2px 0; color: #d1d5db; }
main { max-width: 1320px; margin: 0 auto; padding: 16px 24px 40px; }
section { background: #fff; border-radius: 8px; padding: 12px 20px 8px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0, 0, 0, .08); }
section h2 { margin: 4px 0; font-size: 19px; }
.note { margin: 0 0 6px; color: #6b7280; font-size: 14px; }
.empty, .nothing { padding: 28px 0; color: #92400e; font-size: 16px; }
.warning { color: #fde68a; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }
.card { background: #fff; border-radius: 8px; padding: 10px 18px; min-width: 150px;
        box-shadow: 0 1px 3px rgba(0, 0, 0, .08); }
.card b { display: block; font-size: 22px; }
.card span { color: #6b7280; font-size: 13px; }
"""


def _page(title: str, header: str, body: str, plotly_js: str) -> str:
    if "</script" in plotly_js.lower():
        raise ValueError("plotly.js contains '</script': it cannot be inlined as it is")
    script = f"<script>{plotly_js}</script>" if plotly_js else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>{script}</head>\n"
        f"<body><header><h1>{html.escape(title)}</h1>{header}</header>"
        f"<main>{body}</main></body></html>\n"
    )


def render_page(
    connection: Connection,
    *,
    account: str | None = None,
    k: int | None = None,
    generated_at: datetime | None = None,
) -> str:
    """The page from an open catalog connection (views of :mod:`aggregations.catalog`)."""
    title = "Sieve dashboard" + (f": {account}" if account else "")
    span = _date_range(connection)
    header = _header(span, k, _smallest_cell(connection), account, generated_at)
    if span is None:
        nothing = (
            '<section><p class="nothing" id="nothing-published">Nothing is published yet.'
            " Run <code>sieve publish</code> once the worker has committed events: a window"
            " is published after it closes (its end plus the grace period).</p></section>"
        )
        return _page(title, header, nothing, "")
    body = _summary(_totals(connection, account)) + "".join(
        _section(chart) for chart in _charts(connection, account)
    )
    return _page(title, header, body, plotly.offline.get_plotlyjs())


def build_dashboard(
    connection_or_data_root: Connection | str | os.PathLike[str],
    *,
    account: str | None = None,
    k: int | None = None,
    generated_at: datetime | None = None,
) -> str:
    """A self-contained HTML page of charts over the published views.

    Given a data root, opens its catalog locked down (creating the empty published folders
    if need be, like ``sieve sql``) and closes it after. ``account`` restricts the metering
    charts to one account; ``k`` is the configured k, shown in the header (published files
    do not record the k they were made with); ``generated_at`` is shown when given.
    """
    if isinstance(connection_or_data_root, duckdb.DuckDBPyConnection):
        return render_page(connection_or_data_root, account=account, k=k, generated_at=generated_at)
    from aggregations.catalog import open_catalog
    from aggregations.publish import ensure_layout

    data_root = os.fspath(connection_or_data_root)
    ensure_layout(resolve_root(data_root))
    connection = open_catalog(data_root, lock_down=True)
    try:
        return render_page(connection, account=account, k=k, generated_at=generated_at)
    finally:
        connection.close()


def default_output(data_root: str) -> Path:
    """``<data root>/dashboard.html``; a data root that is not a local folder needs --out."""
    root = resolve_root(data_root)
    if not root.is_local:
        raise ConfigurationError(
            f"the data root {data_root} is not a local folder: pass --out FILE for the page"
        )
    return Path(root.path) / PAGE_FILE


def write_page(path: Path, page: str) -> None:
    """Write to a temporary name, then rename: a browser refreshing never reads half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)


# --- serving ------------------------------------------------------------------------------


def create_app(render: Callable[[], str]) -> web.Application:
    """An app serving ``render()`` at ``/``, rebuilt per request (in a thread: DuckDB and
    plotly block, and the server must keep answering)."""

    async def page(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render)
        return web.Response(
            text=body,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP},
        )

    app = web.Application()
    app.router.add_get("/", page)
    return app


async def serve(
    app: web.Application, host: str, port: int, on_ready: Callable[[list[str]], None]
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM; ``on_ready`` gets the URLs once listening."""
    await serve_until_stopped(app, host, port, on_ready, what="dashboard", port_hint="--port")
