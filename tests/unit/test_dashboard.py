"""The dashboard page: built from published data only, self-contained, every chart with the
right numbers (checked against the test traffic itself, not against the views), and served
fresh on every request.

``make_published(root)`` is also the data of tests/integration/test_dashboard.py.
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
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp
import plotly.offline
import pytest
from click.testing import CliRunner

from aggregations.commands import dashboard_command
from aggregations.dashboard import (
    CHART_IDS,
    CSP,
    build_dashboard,
    create_app,
    default_output,
    serve,
    top_values,
)
from aggregations.publish import publish
from aggregations.testing import fact, facts_table, write_committed_facts
from streams.errors import ConfigurationError

DAY = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 3
K = 10
# 40 people a day. With k = 10, LU (3 people) is pooled with the smallest published country
# (IT, 11 people) into "(other)": the page must show FR, DE and (other), never IT or LU.
COUNTRIES = ["FR"] * 14 + ["DE"] * 12 + ["IT"] * 11 + ["LU"] * 3
ACCOUNTS = 11
# Ranked by requests + page views over the 3 days (ties by id: acct-06 before acct-09).
TOP_8 = ["acct-10", "acct-06", "acct-09", "acct-08", "acct-05", "acct-07", "acct-04", "acct-03"]
OTHERS = {"acct-00", "acct-01", "acct-02"}


def traffic() -> list[dict[str, Any]]:
    """Facts of DAYS days; one event the next day closes the last one."""
    rows: list[dict[str, Any]] = []
    for day in range(DAYS):
        for person, country in enumerate(COUNTRIES):
            desktop = person % 3 != 0
            common = {
                "subject_key": f"d{day}p{person}",
                "country": country,
                "account_id": f"acct-{person % ACCOUNTS:02d}",
                "device_class": "desktop" if desktop else "mobile",
                "browser_family": "Firefox" if desktop else "Chrome Mobile",
                "os_family": "Linux" if desktop else "Android",
            }
            hour = DAY + timedelta(days=day, hours=9 + person % 8)
            rows += [
                fact(hour, type="request", **common) for _ in range(1 + person % ACCOUNTS + day)
            ]
            rows += [
                fact(hour, type="page_view", **common),
                fact(hour, type="login", **common),
                fact(hour, type="logout", session_seconds=60.0 * (1 + person + day), **common),
                fact(hour, type="upload", bytes=1000 * (person + 1), **common),
                fact(hour, type="download", bytes=7000 * (person + day + 1), **common),
            ]
    return [*rows, fact(DAY + timedelta(days=DAYS, hours=2), subject_key="closer")]


def make_published(root: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """Committed facts under ``root``, published with k = K; returns ``root``."""
    write_committed_facts(root, facts_table(traffic() if rows is None else rows), first_offset=0)
    publish(str(root), DAY + timedelta(days=30), timedelta(hours=1), K)
    return root


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_published(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def page(published: Path) -> str:
    return build_dashboard(published, k=K)


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


# --- the page ------------------------------------------------------------------------------


def test_page_is_self_contained(page: str) -> None:
    bundle = plotly.offline.get_plotlyjs()
    assert page.count(bundle) == 1  # inlined once, not per chart
    assert references(page) == []  # no src/href at all: nothing to fetch, online or not
    # Outside plotly.js (whose attribution strings name websites) no URL at all.
    assert not re.search(r"https?://", page.replace(bundle, ""))
    assert f'http-equiv="Content-Security-Policy" content="{CSP}"' in page
    assert "connect-src 'none'" in CSP


def test_every_chart_is_on_the_page_with_the_range_and_k(page: str) -> None:
    charts = plotted(page)
    assert list(charts) == list(CHART_IDS)
    for div_id in CHART_IDS:
        assert f'<div id="{div_id}" class="plotly-graph-div"' in page
        assert charts[div_id], f"{div_id} has no trace"
    assert "Data: 2026-11-01 to 2026-11-03 (UTC days)" in page
    assert f"analytics k = {K} (configured)" in page
    assert "smallest published cell: 12 people" in page  # DE; IT (11) is only in "other"
    assert "fewer than k" not in page.split("<main>")[0]


def test_usage_shows_the_top_accounts_and_others_per_day(page: str) -> None:
    traces = plotted(page)["chart-usage"]
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


def test_bandwidth_sessions_and_median_length_per_day(page: str) -> None:
    rows = _closed(traffic())
    upload, download = plotted(page)["chart-bandwidth"]
    assert _series(upload) == dict(
        _sum((r for r in rows if r["type"] == "upload"), _day, lambda r: r["bytes"])
    )
    assert _series(download) == dict(
        _sum((r for r in rows if r["type"] == "download"), _day, lambda r: r["bytes"])
    )
    sessions, lengths = plotted(page)["chart-sessions"]
    assert _series(sessions) == dict(_sum((r for r in rows if r["type"] == "login"), _day))
    expected_minutes = {
        day: round(
            median(r["session_seconds"] for r in rows if r["type"] == "logout" and _day(r) == day)
            / 60,
            2,
        )
        for day in ("2026-11-01", "2026-11-02", "2026-11-03")
    }
    assert _series(lengths) == expected_minutes


def test_geography_shows_only_k_anonymous_countries(page: str) -> None:
    events, person_days = plotted(page)["chart-geography"]
    rows = _closed(traffic())

    def label(row: dict[str, Any]) -> str:
        return row["country"] if row["country"] in ("FR", "DE") else "(other)"

    assert dict(zip(events["y"], events["x"], strict=True)) == dict(_sum(rows, label))
    assert dict(zip(person_days["y"], person_days["x"], strict=True)) == {
        "FR": 14 * DAYS,
        "DE": 12 * DAYS,
        "(other)": 14 * DAYS,
    }
    assert events["x"] == sorted(events["x"])  # horizontal bars: the largest on top
    body = page.split("</head>")[1]
    assert '"LU"' not in body and '"IT"' not in body


def test_devices_show_the_share_of_events(page: str) -> None:
    traces = {t["name"]: t for t in plotted(page)["chart-devices"]}
    assert set(traces) == {"Device class", "Browser", "OS"}
    rows = _closed(traffic())
    shares = _sum(rows, lambda r: r["browser_family"])
    total = sum(shares.values())
    shown = dict(zip(traces["Browser"]["y"], traces["Browser"]["x"], strict=True))
    assert shown == pytest.approx({b: 100 * n / total for b, n in shares.items()})
    assert set(traces["OS"]["y"]) == {"Linux", "Android"}
    assert set(traces["Device class"]["y"]) == {"desktop", "mobile"}


def test_one_account(published: Path) -> None:
    page = build_dashboard(published, account="acct-03", k=K)
    charts = plotted(page)
    assert {t["name"] for t in charts["chart-usage"]} == {"acct-03"}
    rows = [r for r in _closed(traffic()) if r["account_id"] == "acct-03"]
    assert _series(charts["chart-bandwidth"][0]) == dict(
        _sum((r for r in rows if r["type"] == "upload"), _day, lambda r: r["bytes"])
    )
    assert "Sieve dashboard: acct-03" in page
    # Analytics have no account dimension: the page says so rather than implying a filter.
    assert "All accounts: analytics have no account dimension." in page
    unknown = build_dashboard(published, account="nobody", k=K)
    assert "No metering published yet for account nobody." in unknown
    assert '"chart-geography"' in unknown  # the analytics still show


def test_a_configured_k_above_the_published_cells_is_flagged(published: Path) -> None:
    page = build_dashboard(published, k=13)  # the smallest published cell has 12 people
    assert "Some published cells describe fewer than k = 13 people" in page


def test_nothing_published_yet(tmp_path: Path) -> None:
    page = build_dashboard(tmp_path / "empty", k=K)
    assert 'id="nothing-published"' in page and "sieve publish" in page
    assert "Plotly.newPlot" not in page and references(page) == []


def test_days_under_k_show_metering_and_say_why_analytics_are_missing(tmp_path: Path) -> None:
    few = [
        fact(DAY + timedelta(hours=9), type="download", bytes=5, subject_key=f"p{p}")
        for p in range(3)
    ]
    page = build_dashboard(
        make_published(tmp_path, [*few, fact(DAY + timedelta(days=1, hours=2))]), k=K
    )
    charts = plotted(page)
    assert set(charts) == {"chart-usage", "chart-bandwidth", "chart-sessions"}
    assert _series(charts["chart-bandwidth"][1]) == {"2026-11-01": 15}
    assert page.count("No k-anonymous cells published yet") == 2


def test_hostile_values_cannot_inject_markup(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    rows = [fact(DAY + timedelta(hours=9), account_id=hostile, subject_key="p")]
    page = build_dashboard(
        make_published(tmp_path, [*rows, fact(DAY + timedelta(days=1))]), account=hostile
    )
    assert hostile not in page
    assert plotted(page)["chart-usage"][0]["name"] == hostile  # escaped, not dropped


def test_top_values_sums_the_tail() -> None:
    rows = [("a", 5, 3), ("b", 4, 2), ("c", 2, 1), ("d", 1, 1)]
    assert top_values(rows, 2) == [("a", 5, 3), ("b", 4, 2), ("(all others)", 3, 2)]
    assert top_values(rows, 4) == rows


# --- the command and the server ------------------------------------------------------------


def test_command_writes_the_page(published: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEVE_DATA_ROOT", str(published))
    monkeypatch.setenv("SIEVE_K_ANONYMITY", "11")
    result = CliRunner().invoke(dashboard_command, [])
    assert result.exit_code == 0, result.output
    written = published / "dashboard.html"
    assert result.output == f"dashboard: {written}\n"
    assert "analytics k = 11 (configured)" in written.read_text()
    out = published / "elsewhere" / "one.html"
    result = CliRunner().invoke(dashboard_command, ["--out", str(out), "--account", "acct-05"])
    assert result.exit_code == 0, result.output
    assert "Sieve dashboard: acct-05" in out.read_text()
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
                    write_committed_facts(root, facts_table(late), first_offset=10_000)
                    publish(str(root), DAY + timedelta(days=30), timedelta(hours=1), K)
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
    app = create_app(lambda: build_dashboard(root, k=K))
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
