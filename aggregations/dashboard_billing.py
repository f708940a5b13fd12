"""The billing dashboard's charts: exact per-account metering (billing role only).

Usage, bandwidth and sessions per day, from ``metering_daily``: exact, per account, so an
account with one user shows that person's activity. This page is a billing artefact, built
on the billing catalog; the analysts' dashboard (:mod:`aggregations.dashboard_analytics`)
never reads metering.
"""

from __future__ import annotations

from typing import Any, Final

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from aggregations.dashboard_page import Chart, Connection, Rows, day_axis, rows_of, style

TOP_ACCOUNTS: Final = 8
CHART_IDS: Final = ("chart-usage", "chart-bandwidth", "chart-sessions")
# One colour per account in both usage panels (plotly would give each trace the next one).
_ACCOUNT_COLOURS: Final = qualitative.Plotly
_OTHERS_COLOUR: Final = "#9ca3af"
_ACCOUNT = "(CAST($account AS VARCHAR) IS NULL OR account_id = $account)"


def date_range(connection: Connection) -> tuple[Any, Any] | None:
    ((first, last),) = rows_of(connection, "SELECT min(date), max(date) FROM metering_daily")
    return None if first is None else (first, last)


def totals(connection: Connection, account: str | None) -> tuple[Any, ...]:
    (row,) = rows_of(
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
    return rows_of(
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
    return rows_of(
        connection,
        f"""
        SELECT date, CAST(sum(upload_bytes) AS BIGINT), CAST(sum(uploads) AS BIGINT),
               CAST(sum(download_bytes) AS BIGINT), CAST(sum(downloads) AS BIGINT)
        FROM metering_daily WHERE {_ACCOUNT} GROUP BY date ORDER BY date
        """,  # noqa: S608 - constant fragments only
        {"account": account},
    )


def _sessions(connection: Connection, account: str | None) -> Rows:
    """(date, sessions started, mean length in seconds of the sessions ended that day)."""
    return rows_of(
        connection,
        f"""
        SELECT date, CAST(sum(sessions) AS BIGINT),
               CAST(sum(session_seconds) AS DOUBLE) / nullif(sum(sessions), 0)
        FROM metering_daily WHERE {_ACCOUNT} GROUP BY date ORDER BY date
        """,  # noqa: S608 - constant fragments only
        {"account": account},
    )


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
    day_axis(figure, [row[0] for row in rows])
    return style(figure, 560)


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
    day_axis(figure, days)
    return style(figure, 380)


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
                name="mean session length (min)",
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
    day_axis(figure, days)
    return style(figure, 380)


def charts(connection: Connection, account: str | None) -> list[Chart]:
    scope = f"account {account}" if account else f"top {TOP_ACCOUNTS} accounts and others"
    usage = _usage(connection, account, TOP_ACCOUNTS)
    bandwidth = _bandwidth(connection, account)
    sessions = _sessions(connection, account)
    nothing = "No metering published yet" + (f" for account {account}." if account else ".")
    return [
        Chart(
            CHART_IDS[0],
            "Usage",
            f"Exact metering, {scope}.",
            usage_figure(usage) if usage else None,
            nothing,
        ),
        Chart(
            CHART_IDS[1],
            "Bandwidth",
            "Bytes uploaded and downloaded per day (exact metering).",
            bandwidth_figure(bandwidth) if bandwidth else None,
            nothing,
        ),
        Chart(
            CHART_IDS[2],
            "Sessions",
            "Sessions started per day and the mean length of the sessions ended that day"
            " (exact metering).",
            sessions_figure(sessions) if sessions else None,
            nothing,
        ),
    ]
