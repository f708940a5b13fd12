"""The dashboards: self-contained pages, each of one role. The analysts' page draws exactly
the published differentially private numbers (read back through the analyst catalog) with
their 95 % intervals and nothing from metering; the billing page draws exact metering
(checked against the test traffic itself). Both are served fresh on every request.

The data (``make_published``) is ``tests.fixtures.dashboard_data``'s, shared with
tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import plotly.offline
import pytest
from click.testing import CliRunner

from aggregations.catalog import open_catalog
from aggregations.commands import dashboard_command
from aggregations.dashboard import (
    CHART_IDS,
    CSP,
    Span,
    build_dashboard,
    create_app,
    default_output,
    default_span,
    serve,
)
from aggregations.dashboard_analytics import top_values
from aggregations.pricing import NoMeteringError
from aggregations.publish import publish
from streams.errors import ConfigurationError
from tests.fixtures.dashboard_data import (
    DAY,
    DAYS,
    EPSILON,
    OTHERS,
    TOP_8,
    make_published,
    traffic,
)
from tests.fixtures.facts import DEFAULT_PRIVACY, fact, facts_table, write_committed_facts


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_published(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def page(published: Path) -> str:
    return build_dashboard(published, epsilon=EPSILON)


@pytest.fixture(scope="module")
def billing_page(published: Path) -> str:
    return build_dashboard(published, role="billing")


def analytics(published: Path, sql: str) -> list[tuple[Any, ...]]:
    """What the analyst role reads: the numbers the page must draw."""
    return open_catalog(str(published), role="analyst").sql(sql).fetchall()


# --- helpers: what the page plots, and what it references --------------------------------


def plotted(page: str) -> dict[str, list[dict[str, Any]]]:
    """Chart div id -> its traces, read back from the ``Plotly.newPlot`` calls."""
    decoder = json.JSONDecoder()
    return {
        match.group(1): decoder.raw_decode(page, match.end())[0]
        for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page)
    }


class _References(HTMLParser):
    """Every attribute that could make a browser fetch something, and every script src."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data", "poster") and value:
                self.found.append(f"<{tag} {name}={value}>")
        if tag == "link":
            self.found.append(f"<link {attrs}>")


def references(page: str) -> list[str]:
    parser = _References()
    parser.feed(page)
    return parser.found


def _closed(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["occurred_hour"] < DAY + timedelta(days=DAYS)]


def _sum(
    rows: Iterable[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
    value: Callable[[dict[str, Any]], int] = lambda r: 1,
) -> Counter[Any]:
    totals: Counter[Any] = Counter()
    for row in rows:
        totals[key(row)] += value(row)
    return totals


def _day(row: dict[str, Any]) -> str:
    return str(row["occurred_hour"].date())


def _series(trace: dict[str, Any]) -> dict[Any, Any]:
    return dict(zip(trace["x"], trace["y"], strict=True))


# --- both pages ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["analyst", "billing"])
def test_pages_are_self_contained(page: str, billing_page: str, role: str) -> None:
    text = page if role == "analyst" else billing_page
    bundle = plotly.offline.get_plotlyjs()
    assert text.count(bundle) == 1  # inlined once, not per chart
    assert references(text) == []  # no src/href at all: nothing to fetch, online or not
    # Outside plotly.js (whose attribution strings name websites) no URL at all.
    assert not re.search(r"https?://", text.replace(bundle, ""))
    assert f'http-equiv="Content-Security-Policy" content="{CSP}"' in text
    assert "connect-src 'none'" in CSP


def test_nothing_published_yet(tmp_path: Path) -> None:
    for role in ("analyst", "billing"):
        text = build_dashboard(tmp_path / "empty", role=role)  # type: ignore[arg-type]
        assert 'id="nothing-published"' in text and "sieve publish" in text
        assert "Plotly.newPlot" not in text and references(text) == []


# --- the analysts' page -----------------------------------------------------------------------


def test_every_analyst_chart_is_on_the_page(page: str) -> None:
    charts = plotted(page)
    assert list(charts) == list(CHART_IDS["analyst"])
    for div_id in CHART_IDS["analyst"]:
        assert f'<div id="{div_id}" class="plotly-graph-div"' in page
        assert charts[div_id], f"{div_id} has no trace"
    assert "Data: 2026-11-01 to 2026-11-03 (UTC days)" in page
    assert "epsilon = 1 per person per day (configured)" in page


def test_the_analyst_page_shows_no_metering(page: str) -> None:
    body = page.split("</head>")[1]
    # No account id, no byte count: per-account usage is billing data.
    assert "acct-" not in body and "bandwidth" not in body.lower()
    assert set(plotted(page)) & set(CHART_IDS["billing"]) == set()
    with pytest.raises(ValueError, match="no account dimension"):
        build_dashboard(Path("."), account="acct-01")


def test_daily_active_people_with_their_interval(page: str, published: Path) -> None:
    high, low, people = plotted(page)["chart-people"]
    rows = analytics(
        published,
        "SELECT date, people, people_low, people_high FROM analytics_daily"
        " WHERE dimension = 'total' ORDER BY date",
    )
    days = [str(r[0]) for r in rows]
    assert people["x"] == days and people["y"] == [r[1] for r in rows]
    assert low["y"] == [r[2] for r in rows] and high["y"] == [r[3] for r in rows]
    assert low["fill"] == "tonexty"  # the band between the two bounds is shaded
    assert all(lo < p < hi for _, p, lo, hi in rows)  # an interval, not a point


def test_activity_by_event_type(page: str, published: Path) -> None:
    traces = plotted(page)["chart-activity"]
    bars = {t["name"]: _series(t) for t in traces if t["type"] == "bar"}
    rows = analytics(
        published,
        "SELECT value, date, events FROM analytics_daily WHERE dimension = 'type'"
        " AND cell = 'value'",
    )
    expected: dict[str, dict[str, int]] = {}
    for value, day, events in rows:
        expected.setdefault(value, {})[str(day)] = events
    assert bars == expected
    (total,) = [t for t in traces if t.get("name") == "all events"]
    totals = analytics(
        published, "SELECT events FROM analytics_daily WHERE dimension = 'total' ORDER BY date"
    )
    assert total["y"] == [r[0] for r in totals]


def test_geography_shows_published_countries_with_error_bars(page: str, published: Path) -> None:
    events, person_days = plotted(page)["chart-geography"]
    rows = analytics(
        published,
        "SELECT coalesce(value, '(other)'), sum(events), sqrt(sum(events_sd * events_sd))"
        " FROM analytics_daily WHERE dimension = 'country' GROUP BY 1",
    )
    shown = dict(zip(events["y"], events["x"], strict=True))
    assert shown == {label: n for label, n, _ in rows}
    errors = dict(zip(events["y"], events["error_x"]["array"], strict=True))
    assert errors == pytest.approx({label: 1.96 * sd for label, _, sd in rows})
    assert "FR" in shown and "(other)" in shown
    assert "(other)" not in person_days["y"]  # "other" rows carry events only
    body = page.split("</head>")[1]
    assert '"LU"' not in body  # 3 people a day never pass the threshold


def test_devices_show_the_share_of_published_events(page: str, published: Path) -> None:
    traces = {t["name"]: t for t in plotted(page)["chart-devices"]}
    assert set(traces) == {"Device class", "Browser", "OS"}
    rows = analytics(
        published,
        "SELECT CASE WHEN cell = 'other' THEN '(other)' ELSE value END, sum(events)"
        " FROM analytics_daily WHERE dimension = 'browser_family' GROUP BY 1",
    )
    total = sum(n for _, n in rows)
    shown = dict(zip(traces["Browser"]["y"], traces["Browser"]["x"], strict=True))
    assert shown == pytest.approx({label: 100 * n / total for label, n in rows})


def test_top_values_sums_the_tail() -> None:
    rows = [("a", 5, 3.0, 2, 1.0), ("b", 4, 4.0, 1, 1.0), ("c", 2, 0.0, None, None)]
    assert top_values(rows, 1) == [("a", 5, 3.0, 2, 1.0), ("(all others)", 6, 4.0, None, None)]
    assert top_values(rows, 3) == rows


# --- the billing page -------------------------------------------------------------------------


def test_usage_shows_the_top_accounts_and_others_per_day(billing_page: str) -> None:
    assert list(plotted(billing_page)) == list(CHART_IDS["billing"])
    traces = plotted(billing_page)["chart-usage"]
    names = list(dict.fromkeys(t["name"] for t in traces))
    assert names == [*TOP_8, "others"]
    rows = _closed(traffic())
    for metric, axis in (("request", "y"), ("page_view", "y2")):
        expected = _sum(
            (r for r in rows if r["type"] == metric),
            lambda r: ("others" if r["account_id"] in OTHERS else r["account_id"], _day(r)),
        )
        shown = {
            (t["name"], day): value
            for t in traces
            if t["yaxis"] == axis
            for day, value in _series(t).items()
        }
        assert shown == dict(expected)


def test_bandwidth_and_sessions_per_day(billing_page: str) -> None:
    rows = _closed(traffic())
    upload, download = plotted(billing_page)["chart-bandwidth"]
    assert _series(upload) == dict(
        _sum((r for r in rows if r["type"] == "upload"), _day, lambda r: r["bytes"])
    )
    assert _series(download) == dict(
        _sum((r for r in rows if r["type"] == "download"), _day, lambda r: r["bytes"])
    )
    sessions, lengths = plotted(billing_page)["chart-sessions"]
    logins = _sum((r for r in rows if r["type"] == "login"), _day)
    assert _series(sessions) == dict(logins)
    seconds = _sum(
        (r for r in rows if r["type"] == "logout"), _day, lambda r: int(r["session_seconds"])
    )
    assert _series(lengths) == {d: round(seconds[d] / logins[d] / 60, 2) for d in logins}


def test_one_account(published: Path) -> None:
    text = build_dashboard(published, role="billing", account="acct-03")
    charts = plotted(text)
    assert {t["name"] for t in charts["chart-usage"]} == {"acct-03"}
    rows = [r for r in _closed(traffic()) if r["account_id"] == "acct-03"]
    assert _series(charts["chart-bandwidth"][0]) == dict(
        _sum((r for r in rows if r["type"] == "upload"), _day, lambda r: r["bytes"])
    )
    assert "Sieve billing: acct-03" in text
    with pytest.raises(NoMeteringError, match="unknown account 'nobody'"):
        build_dashboard(published, role="billing", account="nobody")


def test_hostile_values_cannot_inject_markup(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    rows = [fact(DAY + timedelta(hours=9), account_id=hostile, subject_key="p")]
    text = build_dashboard(
        make_published(tmp_path, [*rows, fact(DAY + timedelta(days=1))]),
        role="billing",
        account=hostile,
    )
    assert hostile not in text
    assert plotted(text)["chart-usage"][0]["name"] == hostile  # escaped, not dropped


# --- the command and the server ------------------------------------------------------------


def test_command_writes_the_pages(published: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(published))
    monkeypatch.setenv("SIEVE_DP_EPSILON", "0.5")
    result = CliRunner().invoke(dashboard_command, [])
    assert result.exit_code == 0, result.output
    written = published / "dashboard.html"
    assert result.output == f"dashboard: {written}\n"
    assert "epsilon = 0.5 per person per day (configured)" in written.read_text()
    refused = CliRunner().invoke(dashboard_command, ["--account", "acct-05"])
    assert refused.exit_code != 0 and "--role billing" in refused.output
    result = CliRunner().invoke(dashboard_command, ["--role", "billing", "--account", "acct-05"])
    assert result.exit_code == 0, result.output
    assert "Sieve billing: acct-05" in (published / "billing.html").read_text()
    out = published / "elsewhere" / "one.html"
    result = CliRunner().invoke(dashboard_command, ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not list(out.parent.glob(".*tmp*"))  # the temporary file was renamed


def test_a_remote_data_root_needs_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="pass --out"):
        default_output("mock:///data")
    monkeypatch.setenv("SIEVE_DATA_ROOT", "mock:///data")
    result = CliRunner().invoke(dashboard_command, [])
    assert isinstance(result.exception, ConfigurationError)


def test_serve_rebuilds_the_page_per_request(tmp_path: Path) -> None:
    root = make_published(tmp_path)
    urls: list[str] = []
    bodies: list[tuple[int, str, str]] = []

    async def browse(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            for round_ in range(2):
                if round_ == 1:  # a twelfth account publishes between the two requests
                    late = [fact(DAY, account_id="acct-late", subject_key="z", event_key="z")]
                    # Past every offset of the first range: ranges of a partition never overlap.
                    write_committed_facts(root, facts_table(late), first_offset=10_000_000)
                    publish(
                        str(root), DAY + timedelta(days=30), timedelta(hours=1), DEFAULT_PRIVACY
                    )
                async with session.get(url) as response:
                    bodies.append(
                        (
                            response.status,
                            response.headers["Content-Security-Policy"],
                            await response.text(),
                        )
                    )
        # Handlers are installed: serve() set them up before any other task could run.
        os.kill(os.getpid(), signal.SIGINT)

    def ready(announced: list[str]) -> None:
        urls.extend(announced)
        tasks.append(asyncio.get_running_loop().create_task(browse(announced[0])))

    tasks: list[asyncio.Task[None]] = []
    app = create_app(lambda: build_dashboard(root, role="billing"))
    asyncio.run(asyncio.wait_for(serve(app, "127.0.0.1", 0, ready), 60))
    assert tasks and tasks[0].done() and tasks[0].exception() is None
    assert urls and urls[0].startswith("http://127.0.0.1:")
    (status1, csp, first), (status2, _, second) = bodies
    assert (status1, status2, csp) == (200, 200, CSP)
    assert "<b>11</b><span>accounts</span>" in first
    assert "<b>12</b><span>accounts</span>" in second


def test_serve_on_a_taken_port_says_so() -> None:
    async def scenario(port: int) -> None:
        await serve(create_app(lambda: ""), "127.0.0.1", port, lambda urls: None)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigurationError, match="choose another --port"):
            asyncio.run(asyncio.wait_for(scenario(taken.getsockname()[1]), 30))


# --- the days shown ----------------------------------------------------------------------------


def _mark(day: datetime) -> datetime:
    """A watermark under which ``day`` is the last closed day (grace 1 h)."""
    return day + timedelta(days=1, hours=1)


def test_by_default_a_page_shows_the_last_closed_month() -> None:
    grace = timedelta(hours=1)
    # 2 November is the last closed day: October is the last closed month.
    span = default_span(_mark(datetime(2026, 11, 2, tzinfo=UTC)), grace, None, None)
    assert span == Span(date(2026, 10, 1), date(2026, 10, 31))
    # Closed through 31 October: October itself.
    span = default_span(_mark(datetime(2026, 10, 31, tzinfo=UTC)), grace, None, None)
    assert span == Span(date(2026, 10, 1), date(2026, 10, 31))
    # Nothing published: every day.
    assert default_span(None, grace, None, None) == Span()


def test_since_and_until_each_complete_the_other() -> None:
    grace, mark = timedelta(hours=1), _mark(datetime(2026, 11, 20, tzinfo=UTC))
    assert default_span(mark, grace, date(2026, 11, 3), None) == Span(
        date(2026, 11, 3), date(2026, 11, 20)
    )
    assert default_span(mark, grace, None, date(2026, 10, 12)) == Span(
        date(2026, 10, 1), date(2026, 10, 12)
    )
    assert default_span(mark, grace, date(2026, 9, 1), date(2026, 9, 2)) == Span(
        date(2026, 9, 1), date(2026, 9, 2)
    )
    with pytest.raises(ValueError, match="after --until"):
        default_span(mark, grace, date(2026, 9, 3), date(2026, 9, 2))


def test_a_page_draws_only_its_days_and_its_axis_spans_them(published: Path) -> None:
    middle = (DAY + timedelta(days=1)).date()
    for role in ("analyst", "billing"):
        text = build_dashboard(published, role=role, span=Span(middle, middle))  # type: ignore[arg-type]
        charts = plotted(text)
        daily = [
            trace
            for traces in charts.values()
            for trace in traces
            if trace.get("x") and str(trace["x"][0])[:4] == "2026"
        ]
        assert daily, role
        assert {str(x)[:10] for trace in daily for x in trace["x"]} == {middle.isoformat()}
        assert f"showing {middle} to {middle}" in text
    # The x axis is the span itself (half a day either side), not the data's extent.
    layout = re.search(r'"xaxis":\{[^}]*"range":\["([^"]+)","([^"]+)"\]', text)
    assert layout is not None and layout.group(1).startswith("2026-11-01T12")


def test_the_command_takes_since_and_until_and_refuses_an_unknown_account(
    published: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(published))
    out = published / "range.html"
    day = (DAY + timedelta(days=2)).date().isoformat()
    result = CliRunner().invoke(
        dashboard_command,
        ["--role", "billing", "--since", day, "--until", day, "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    bandwidth = plotted(out.read_text())["chart-bandwidth"][0]
    assert [str(x)[:10] for x in bandwidth["x"]] == [day]
    backwards = CliRunner().invoke(dashboard_command, ["--since", day, "--until", "2026-11-01"])
    assert backwards.exit_code == 2 and "after --until" in backwards.output
    unknown = CliRunner().invoke(
        dashboard_command, ["--role", "billing", "--account", "nope", "--out", str(out)]
    )
    assert isinstance(unknown.exception, NoMeteringError) and unknown.exception.exit_code == 4
    assert "unknown account 'nope'" in str(unknown.exception)


def test_the_command_shows_the_last_closed_month_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Traffic from 30 October to 2 November; 3 November closes 2 November.
    start = datetime(2026, 10, 30, 9, tzinfo=UTC)
    rows = [
        fact(start + timedelta(days=d), subject_key=f"p{d}", account_id="acct-1") for d in range(4)
    ]
    make_published(tmp_path, [*rows, fact(datetime(2026, 11, 3, 2, tzinfo=UTC))])
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(tmp_path))
    result = CliRunner().invoke(dashboard_command, ["--role", "billing"])
    assert result.exit_code == 0, result.output
    usage = plotted((tmp_path / "billing.html").read_text())["chart-usage"]
    assert {str(x)[:10] for trace in usage for x in trace["x"]} == {"2026-10-30", "2026-10-31"}
