"""The analysts' dashboard charts: differentially private analytics only (analyst role).

Every number drawn is a published DP count, and every one is drawn with its uncertainty:
a shaded 95 % band on the daily lines, error bars (+-1.96 noise sd) on the bars. Sums over
several days add their noise variances. Nothing here reads metering.
"""

from __future__ import annotations

import math
from typing import Any, Final

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from aggregations.catalog import Z95
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

CHART_IDS: Final = ("chart-people", "chart-activity", "chart-geography", "chart-devices")
TOP_VALUES: Final = 20
DEVICE_DIMENSIONS: Final = (
    ("device_class", "Device class"),
    ("browser_family", "Browser"),
    ("os_family", "OS"),
)
_LABEL = "CASE WHEN cell = 'other' THEN '(other)' ELSE coalesce(value, '(unknown)') END"
_BAND: Final = "rgba(37, 99, 235, 0.18)"
_LINE: Final = "#1d4ed8"
# (label, events, events sd, people or None, people sd or None) over the range.
Cells = list[tuple[str, int, float, int | None, float | None]]


def date_range(connection: Connection, span: Span = EVERY_DAY) -> tuple[Any, Any] | None:
    ((first, last),) = rows_of(
        connection,
        f"SELECT min(date), max(date) FROM analytics_daily WHERE {IN_SPAN}",  # noqa: S608
        span.params,
    )
    return None if first is None else (first, last)


def _daily_totals(connection: Connection, span: Span) -> Rows:
    """(date, people, low, high, events, low, high) of each day's total."""
    return rows_of(
        connection,
        f"""
        SELECT date, people, people_low, people_high, events, events_low, events_high
        FROM analytics_daily WHERE dimension = 'total' AND {IN_SPAN} ORDER BY date
        """,  # noqa: S608 - constant fragments only
        span.params,
    )


def _types(connection: Connection, span: Span) -> Rows:
    return rows_of(
        connection,
        f"""
        SELECT date, value, events FROM analytics_daily
        WHERE dimension = 'type' AND cell = 'value' AND {IN_SPAN} ORDER BY value, date
        """,  # noqa: S608 - constant fragments only
        span.params,
    )


def cells(connection: Connection, dimension: str, span: Span = EVERY_DAY) -> Cells:
    """One dimension's published day cells summed over the range, largest first."""
    rows = rows_of(
        connection,
        f"""
        SELECT {_LABEL} AS label, CAST(sum(events) AS BIGINT), sqrt(sum(events_sd * events_sd)),
               CAST(sum(people) AS BIGINT), sqrt(sum(people_sd * people_sd))
        FROM analytics_daily
        WHERE dimension = $dimension AND cell IN ('value', 'other') AND {IN_SPAN}
        GROUP BY label ORDER BY 2 DESC, label
        """,  # noqa: S608 - constant fragments only
        {"dimension": dimension, **span.params},
    )
    return [
        (str(label), int(events), float(sd), None if p is None else int(p), psd)
        for label, events, sd, p, psd in rows
    ]


def top_values(rows: Cells, limit: int) -> Cells:
    """The ``limit`` largest rows, the rest summed into one "(all others)" row (noise
    variances add; people of the tail are not shown: "(other)" rows have none)."""
    head, tail = list(rows[:limit]), rows[limit:]
    if tail:
        events = sum(r[1] for r in tail)
        sd = math.sqrt(sum(r[2] ** 2 for r in tail))
        head.append(("(all others)", events, sd, None, None))
    return head


def _band(figure: go.Figure, days: list[Any], low: list[Any], high: list[Any], name: str) -> None:
    figure.add_trace(
        go.Scatter(
            x=days, y=high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"
        )
    )
    figure.add_trace(
        go.Scatter(
            x=days,
            y=low,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor=_BAND,
            name=name,
            hoverinfo="skip",
        )
    )


def people_figure(rows: Rows, span: Span = EVERY_DAY) -> go.Figure:
    days = [row[0] for row in rows]
    figure = go.Figure()
    _band(figure, days, [row[2] for row in rows], [row[3] for row in rows], "95 % interval")
    figure.add_trace(
        go.Scatter(
            x=days,
            y=[row[1] for row in rows],
            name="active people",
            mode="lines+markers",
            line={"color": _LINE},
            customdata=[[row[2], row[3]] for row in rows],
            hovertemplate="%{y:,} (95 %: %{customdata[0]:,} to %{customdata[1]:,})",
        )
    )
    figure.update_layout(yaxis={"title": "people", "rangemode": "tozero"})
    day_axis(figure, days, span)
    return style(figure, 380)


def activity_figure(totals: Rows, types: Rows, span: Span = EVERY_DAY) -> go.Figure:
    figure = go.Figure()
    for value in dict.fromkeys(row[1] for row in types):
        mine = [row for row in types if row[1] == value]
        figure.add_trace(
            go.Bar(
                x=[row[0] for row in mine],
                y=[row[2] for row in mine],
                name=str(value),
                hovertemplate="%{y:,}",
            )
        )
    days = [row[0] for row in totals]
    _band(figure, days, [row[5] for row in totals], [row[6] for row in totals], "total, 95 %")
    figure.add_trace(
        go.Scatter(
            x=days,
            y=[row[4] for row in totals],
            name="all events",
            mode="lines+markers",
            line={"color": "#111827"},
            hovertemplate="%{y:,}",
        )
    )
    figure.update_layout(barmode="stack", yaxis={"title": "events", "rangemode": "tozero"})
    day_axis(figure, days, span)
    return style(figure, 420)


def _bars(labels: list[str], values: list[int], sds: list[float], name: str) -> go.Bar:
    """Horizontal bars with +-1.96 sd error bars (the 95 % interval of the noise), the low
    end clipped at 0 as the views' ``*_low`` are: a count is never negative, and an axis
    running into negative numbers reads as if it could be."""
    return go.Bar(
        y=labels,
        x=values,
        error_x={
            "type": "data",
            "array": [Z95 * sd for sd in sds],
            "arrayminus": [min(value, Z95 * sd) for value, sd in zip(values, sds, strict=True)],
            "visible": True,
        },
        orientation="h",
        name=name,
        hovertemplate="%{y}: %{x:,}<extra></extra>",
    )


def geography_figure(rows: Cells) -> go.Figure:
    shown = list(reversed(top_values(rows, TOP_VALUES)))  # largest on top
    with_people = [row for row in shown if row[3] is not None]
    figure = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=("Events", "Person-days"),
    )
    figure.add_trace(
        _bars([r[0] for r in shown], [r[1] for r in shown], [r[2] for r in shown], "events"),
        row=1,
        col=1,
    )
    figure.add_trace(
        _bars(
            [r[0] for r in with_people],
            [r[3] or 0 for r in with_people],
            [r[4] or 0.0 for r in with_people],
            "person-days",
        ),
        row=1,
        col=2,
    )
    figure = style(figure, max(260, 60 + 26 * len(shown)))
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
    figure = style(figure, max(260, 80 + 28 * longest))
    figure.update_layout(showlegend=False, hovermode="closest")
    return figure


def charts(connection: Connection, span: Span = EVERY_DAY) -> list[Chart]:
    totals = _daily_totals(connection, span)
    types = _types(connection, span)
    countries = cells(connection, "country", span)
    devices = {dimension: cells(connection, dimension, span) for dimension, _ in DEVICE_DIMENSIONS}
    nothing = f"No analytics published from {span.describe()} (a day is released once it closes)."
    return [
        Chart(
            CHART_IDS[0],
            "Daily active people",
            "Distinct people a day (differentially private: the band is the 95 % interval of"
            " the noise). A person is counted once a day; days do not add up to people.",
            people_figure(totals, span) if totals else None,
            nothing,
        ),
        Chart(
            CHART_IDS[1],
            "Activity",
            "Events per day by event type, and all events with their 95 % interval. Each"
            " person's day counts at most the configured number of events.",
            activity_figure(totals, types, span) if totals else None,
            nothing,
        ),
        Chart(
            CHART_IDS[2],
            "Geography",
            "Events and person-days per country over the range, with 95 % intervals; a"
            " country is shown on days its noisy people count passed the threshold, the rest"
            " is (other).",
            geography_figure(countries) if countries else None,
            nothing,
        ),
        Chart(
            CHART_IDS[3],
            "Devices",
            "Share of events by device class, browser and OS (published values and (other)).",
            devices_figure(devices) if any(devices.values()) else None,
            nothing,
        ),
    ]
