"""The billing dashboard's charts: exact per-account metering (billing role only).

Usage, bandwidth and sessions per day, from ``metering_daily``: exact, per account, so an
account with one user shows that person's activity. This page is a billing artefact, built
on the billing catalog; the analysts' dashboard (:mod:`aggregations.dashboard_analytics`)
never reads metering. Its charts use the packaged meters (requests, page views, bytes,
sessions); a chart whose meters a meters file does not declare says so instead.
"""

from __future__ import annotations

from typing import Any, Final

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from aggregations.dashboard_page import (
    EVERY_DAY,
    IN_SPAN,
    Chart,
    Connection,
    Rows,
    Span,
    day_axis,
    rows_of,
    style,
)

TOP_ACCOUNTS: Final = 8
CHART_IDS: Final = ("chart-usage", "chart-bandwidth", "chart-sessions")
# The meters each chart draws, and the totals cards.
NEEDS: Final = {
    CHART_IDS[0]: ("requests", "page_views"),
    CHART_IDS[1]: ("upload_bytes", "uploads", "download_bytes", "downloads"),
    CHART_IDS[2]: ("sessions", "session_seconds"),
}
CARDS: Final = (
    ("requests", "requests"),
    ("page_views", "page views"),
    ("sessions", "sessions"),
    ("upload_bytes", "uploaded"),
    ("download_bytes", "downloaded"),
)
# One colour per account in both usage panels (plotly would give each trace the next one).
_ACCOUNT_COLOURS: Final = qualitative.Plotly
_OTHERS_COLOUR: Final = "#9ca3af"
_ACCOUNT = "(CAST($account AS VARCHAR) IS NULL OR account_id = $account)"


def published_meters(connection: Connection) -> set[str]:
    """The meter columns of ``metering_daily`` (what the last publish run published)."""
    return {row[0] for row in rows_of(connection, "DESCRIBE metering_daily")}


def known_account(connection: Connection, account: str) -> bool:
    """Whether any metering is published for ``account`` (any day)."""
    ((count,),) = rows_of(
        connection,
        "SELECT count(*) FROM metering_daily WHERE account_id = $account",
        {"account": account},
    )
    return bool(count)


def date_range(connection: Connection, span: Span = EVERY_DAY) -> tuple[Any, Any] | None:
    ((first, last),) = rows_of(
        connection,
        f"SELECT min(date), max(date) FROM metering_daily WHERE {IN_SPAN}",  # noqa: S608
        span.params,
    )
    return None if first is None else (first, last)


def totals(
    connection: Connection, account: str | None, span: Span = EVERY_DAY
) -> list[tuple[str, Any]]:
    """(card label, value) of the accounts and each published card meter over the span."""
    meters = [(meter, label) for meter, label in CARDS if meter in published_meters(connection)]
    sums = "".join(f", sum({meter})" for meter, _ in meters)
    (row,) = rows_of(
        connection,
        f"""
        SELECT count(DISTINCT account_id){sums}
        FROM metering_daily WHERE {_ACCOUNT} AND {IN_SPAN}
        """,  # noqa: S608 - checked meter names and constant fragments only
        {"account": account, **span.params},
    )
    values = [0 if value is None else value for value in row]
    return [
        ("accounts", values[0]),
        *((label, v) for (_, label), v in zip(meters, values[1:], strict=True)),
    ]


def _usage(connection: Connection, account: str | None, top: int, span: Span) -> Rows:
    """(date, account or None for "others", requests, page_views), busiest accounts first."""
    return rows_of(
        connection,
        f"""
        WITH usage AS (
            SELECT date, account_id, requests, page_views FROM metering_daily
            WHERE {_ACCOUNT} AND {IN_SPAN}
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
        {"account": account, "top": top, **span.params},
    )


def _bandwidth(connection: Connection, account: str | None, span: Span) -> Rows:
    return rows_of(
        connection,
        f"""
        SELECT date, CAST(sum(upload_bytes) AS BIGINT), CAST(sum(uploads) AS BIGINT),
               CAST(sum(download_bytes) AS BIGINT), CAST(sum(downloads) AS BIGINT)
        FROM metering_daily WHERE {_ACCOUNT} AND {IN_SPAN} GROUP BY date ORDER BY date
        """,  # noqa: S608 - constant fragments only
        {"account": account, **span.params},
    )


def _sessions(connection: Connection, account: str | None, span: Span) -> Rows:
    """(date, sessions started, mean length in seconds of the sessions ended that day)."""
    return rows_of(
        connection,
        f"""
        SELECT date, CAST(sum(sessions) AS BIGINT),
               CAST(sum(session_seconds) AS DOUBLE) / nullif(sum(sessions), 0)
        FROM metering_daily WHERE {_ACCOUNT} AND {IN_SPAN} GROUP BY date ORDER BY date
        """,  # noqa: S608 - constant fragments only
        {"account": account, **span.params},
    )


def usage_figure(rows: Rows, span: Span = EVERY_DAY) -> go.Figure:
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
    day_axis(figure, [row[0] for row in rows], span)
    return style(figure, 600)


def bandwidth_figure(rows: Rows, span: Span = EVERY_DAY) -> go.Figure:
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
    day_axis(figure, days, span)
    return style(figure, 400)


def sessions_figure(rows: Rows, span: Span = EVERY_DAY) -> go.Figure:
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
    day_axis(figure, days, span)
    return style(figure, 400)


def charts(connection: Connection, account: str | None, span: Span = EVERY_DAY) -> list[Chart]:
    scope = f"account {account}" if account else f"top {TOP_ACCOUNTS} accounts and others"
    present = published_meters(connection)
    nothing = (
        "No metering published"
        + (f" for account {account}" if account else "")
        + f" from {span.describe()}."
    )
    specs = [
        ("Usage", f"Exact metering, {scope}.", _usage, usage_figure),
        (
            "Bandwidth",
            "Bytes uploaded and downloaded per day (exact metering).",
            _bandwidth,
            bandwidth_figure,
        ),
        (
            "Sessions",
            "Sessions started per day and the mean length of the sessions ended that day"
            " (exact metering).",
            _sessions,
            sessions_figure,
        ),
    ]
    built = []
    for div_id, (title, note, query, draw) in zip(CHART_IDS, specs, strict=True):
        missing = [meter for meter in NEEDS[div_id] if meter not in present]
        if missing:
            reason = f"The published meters have no {', '.join(missing)} (see the meters file)."
            built.append(Chart(div_id, title, note, None, reason))
            continue
        rows = (
            _usage(connection, account, TOP_ACCOUNTS, span)
            if query is _usage
            else query(connection, account, span)  # type: ignore[operator]
        )
        built.append(Chart(div_id, title, note, draw(rows, span) if rows else None, nothing))
    return built
