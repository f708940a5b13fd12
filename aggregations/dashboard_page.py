"""What both dashboards share: the chart record, plotly styling, and the self-contained page.

The page needs no network: plotly.js is inlined once in ``<head>``, every chart is a plotly
figure whose data is inlined JSON, and a Content-Security-Policy forbids loading or sending
anything (``connect-src 'none'``), so a future plotly that reached for a CDN would fail
loudly in the browser instead of quietly phoning home.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import duckdb
import plotly.graph_objects as go

Connection = duckdb.DuckDBPyConnection
Rows = list[tuple[Any, ...]]

# Inline scripts and styles only; nothing may be fetched, framed or sent anywhere.
CSP: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; "
    "base-uri 'none'"
)
PLOT_CONFIG: Final = {"displaylogo": False, "responsive": True}
_DAY_MS: Final = 86_400_000


# Every chart query filters its days with this, on its parameters $since and $until.
IN_SPAN: Final = (
    "(CAST($since AS DATE) IS NULL OR date >= $since)"
    " AND (CAST($until AS DATE) IS NULL OR date <= $until)"
)


@dataclass(frozen=True)
class Span:
    """The days a page shows, inclusive; None on a side: no bound there."""

    since: date | None = None
    until: date | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until}

    def describe(self) -> str:
        first = self.since.isoformat() if self.since else "the first day"
        last = self.until.isoformat() if self.until else "the last day"
        return f"{first} to {last}"


EVERY_DAY: Final = Span()


@dataclass(frozen=True)
class Chart:
    """One section of the page: a figure, or the reason there is none yet."""

    div_id: str
    title: str
    note: str
    figure: go.Figure | None
    empty_message: str


def rows_of(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> Rows:
    return connection.execute(sql, params or {}).fetchall()


def style(figure: go.Figure, height: int) -> go.Figure:
    """The common look. The legend sits under the plot, at the bottom of the figure: at the
    top it ran under plotly's toolbar (top right), which covered its last entries. The top
    margin keeps subplot titles below the toolbar too."""
    figure.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 30, "t": 64, "b": 40},
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 0,
            "yanchor": "bottom",
            "x": 0,
            "xanchor": "left",
        },
        hovermode="x unified",
        font={"size": 13},
    )
    return figure


def day_axis(figure: go.Figure, days: Sequence[date], span: Span | None = None) -> None:
    """Ticks on whole days, at most about a dozen (plotly's automatic date ticks land on
    noon and midnight for short ranges, which reads as hourly data), over the page's span
    when it has one: the axis shows the range asked for, never years of stray data."""
    if not days:
        return
    first = span.since if span is not None and span.since else min(days)
    last = span.until if span is not None and span.until else max(days)
    step = max(1, -(-((last - first).days + 1) // 12))
    half_day = timedelta(hours=12)
    figure.update_xaxes(
        type="date",
        tick0=first.isoformat(),
        dtick=step * _DAY_MS,
        tickformat="%b %-d\n%Y",
        range=[
            (datetime.combine(first, time(0)) - half_day).isoformat(),
            (datetime.combine(last, time(0)) + half_day).isoformat(),
        ],
    )


def section(chart: Chart) -> str:
    body = (
        chart.figure.to_html(
            full_html=False, include_plotlyjs=False, div_id=chart.div_id, config=PLOT_CONFIG
        )
        if chart.figure is not None
        else f'<p class="empty" id="{chart.div_id}-empty">{html.escape(chart.empty_message)}</p>'
    )
    return (
        f'<section id="section-{chart.div_id}"><h2>{html.escape(chart.title)}</h2>'
        f'<p class="note">{html.escape(chart.note)}</p>{body}</section>'
    )


def cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'
            for label, value in items
        )
        + "</div>"
    )


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


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
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 16px; }
.card { background: #fff; border-radius: 8px; padding: 10px 18px; min-width: 150px;
        box-shadow: 0 1px 3px rgba(0, 0, 0, .08); }
.card b { display: block; font-size: 22px; }
.card span { color: #6b7280; font-size: 13px; }
"""


def page(title: str, header: str, body: str, plotly_js: str) -> str:
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
