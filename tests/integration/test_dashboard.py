"""The dashboard in a real browser: headless Chromium, driven over the DevTools protocol.

One Chromium per page check, with no network (DNS answers nothing), drives a fresh tab:
it records every console message, uncaught exception, browser log entry (CSP violations,
failed loads) and network request, loads the page, waits until plotly has drawn every
chart (a condition polled per animation frame, with a deadline), reads back what each
chart drew, and takes a full-page screenshot. The assertions then say: no error, no
request beyond the file itself, every chart drew marks with data, and the screenshot is
a real picture. A second check feeds the same machinery a page with a console error, an
exception and an external script, so a silent harness cannot pass.

Chromium is Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it). Missing,
the tests fail, naming the command that installs it: they never skip (issue 12.4).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from aggregations.dashboard import CHART_IDS, build_dashboard, create_app, write_page
from tests.fixtures.chromium import STEP_TIMEOUT_S, browser, chromium
from tests.fixtures.dashboard_data import TOP_8, make_published

ALL_CHARTS = (*CHART_IDS["analyst"], *CHART_IDS["billing"])

VISIT_TIMEOUT_S = 120.0  # a whole page visit, start to screenshot
WIDTH = 1400


# --- what a page did in the browser ------------------------------------------------------

# Waits (one check per animation frame, until a deadline) until every chart div has been
# drawn by plotly, then reports what each one holds.
_CHARTS_JS = """
(async (ids, patience) => {
  const drawn = () => ids.every(id => {
    const div = document.getElementById(id);
    return div && div._fullLayout && div.querySelector('svg.main-svg');
  });
  const deadline = performance.now() + patience;
  while (!drawn() && performance.now() < deadline) {
    await new Promise(resolve => requestAnimationFrame(resolve));
  }
  const area = el => { const b = el.getBBox(); return b.width * b.height; };
  const box = el => { const r = el.getBoundingClientRect();
                      return [r.left, r.top, r.right, r.bottom]; };
  return ids.map(id => {
    const div = document.getElementById(id);
    if (!div) return {id, present: false};
    const texts = sel => [...div.querySelectorAll(sel)].map(t => t.textContent);
    return {
      id, present: true,
      svgs: div.querySelectorAll('svg.main-svg').length,
      traces: div.querySelectorAll('g.trace').length,
      bars: [...div.querySelectorAll('g.trace.bars g.point path')].filter(p => area(p) > 0)
        .length,
      lines: [...div.querySelectorAll('g.trace.scatter path.js-line')]
        .filter(p => (p.getAttribute('d') || '').length > 10).length,
      legend: texts('g.legend text.legendtext'),
      ticks: texts('g[class$="tick"] > text'),  // xtick, x2tick, ytick, y2tick, ...
      titles: texts('text.gtitle, g.annotation text, text[class$="title"]'),
      width: div.getBoundingClientRect().width,
      // Boxes in page pixels: the toolbar (shown on hover), each legend entry, each tick label.
      modebar: [...div.querySelectorAll('.modebar')].map(box),
      legendItems: [...div.querySelectorAll('g.legend g.traces')].map(box),
      tickLabels: [...div.querySelectorAll('g.xtick > text, g.x2tick > text')].map(box),
      titleBoxes: [...div.querySelectorAll('g.annotation text, text.gtitle')].map(box),
      xTickValues: [...div.querySelectorAll('g[class^="xtick"] > text, g[class^="x2tick"] > text,'
                                          + ' g[class^="x3tick"] > text')]
        .map(t => t.textContent),
    };
  });
})(%s, %d)
"""


@dataclass
class PageVisit:
    charts: dict[str, dict[str, Any]]
    problems: list[str]  # console errors, exceptions, error log entries
    requests: list[str]  # every URL the page asked for
    screenshot: bytes
    events: list[dict[str, Any]] = field(repr=False)


def _problems(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(
                f"exception: {details.get('exception', {}).get('description')}"
                f" {details.get('text')}"
            )
        elif method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "assert",
            "warning",
        ):
            args = [a.get("value", a.get("description")) for a in params["args"]]
            found.append(f"console.{params['type']}: {args}")
        # The browser's own warnings (interventions, deprecations) vary by version: only its
        # errors count. The page's console warnings do count: plotly warns through them.
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            found.append(f"log {entry['source']}: {entry['text']} {entry.get('url', '')}")
    return found


async def visit(
    url: str, profile: Path, ids: tuple[str, ...] = ALL_CHARTS, patience_ms: int = 20_000
) -> PageVisit:
    async with asyncio.timeout(VISIT_TIMEOUT_S), browser(profile) as tools:
        target = await tools.call("Target.createTarget", {"url": "about:blank"})
        attached = await tools.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            await tools.call(f"{domain}.enable", session=session)
        await tools.call(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": WIDTH,
                "height": 2400,
                "deviceScaleFactor": 1,
                "mobile": False,
            },
            session=session,
        )
        loaded = tools.expect("Page.loadEventFired")
        navigated = await tools.call("Page.navigate", {"url": url}, session=session)
        assert "errorText" not in navigated, navigated
        await asyncio.wait_for(loaded, STEP_TIMEOUT_S)
        result = await tools.call(
            "Runtime.evaluate",
            {
                "expression": _CHARTS_JS % (json.dumps(list(ids)), patience_ms),
                "awaitPromise": True,
                "returnByValue": True,
            },
            session=session,
        )
        assert "exceptionDetails" not in result, result
        height = await tools.call(
            "Runtime.evaluate",
            {
                "expression": "document.documentElement.scrollHeight",
                "returnByValue": True,
            },
            session=session,
        )
        shot = await tools.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": WIDTH,
                    "height": height["result"]["value"],
                    "scale": 1,
                },
            },
            session=session,
        )
        events = list(tools.events)
    charts = {chart["id"]: chart for chart in result["result"]["value"]}
    requests = [
        e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"
    ]
    return PageVisit(charts, _problems(events), requests, base64.b64decode(shot["data"]), events)


# --- PNG: enough decoding to know the picture is not blank ---------------------------------


def png_rows(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, raw rows) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks: dict[bytes, list[bytes]] = {}
    at = 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        chunks.setdefault(kind, []).append(png[at + 8 : at + 8 + length])
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    assert (depth, colour, interlace) in ((8, 2, 0), (8, 6, 0)), "unexpected PNG format"
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride = width * channels + 1
    assert len(raw) == stride * height
    previous = bytes(stride - 1)
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        row = _unfilter(line[0], bytearray(line[1:]), previous, channels)
        rows.append(row)
        previous = row
    return width, height, rows


def _unfilter(kind: int, row: bytearray, above: bytes, bpp: int) -> bytes:
    if kind == 1:  # Sub
        for i in range(bpp, len(row)):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:  # Up
        row = bytearray((a + b) & 0xFF for a, b in zip(row, above, strict=True))
    elif kind == 3:  # Average
        for i in range(len(row)):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + ((left + above[i]) >> 1)) & 0xFF
    elif kind == 4:  # Paeth
        for i in range(len(row)):
            a = row[i - bpp] if i >= bpp else 0
            b, c = above[i], above[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return bytes(row)


def pixel_colours(rows: list[bytes], width: int) -> Counter[bytes]:
    """How many pixels have each colour (channels as bytes)."""
    channels = len(rows[0]) // width
    colours: Counter[bytes] = Counter()
    for row in rows:
        colours.update(row[i : i + channels] for i in range(0, len(row), channels))
    return colours


# --- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_published(tmp_path_factory.mktemp("data"))


def _visit(root: Path, role: str, profile: Path) -> tuple[PageVisit, Path]:
    chromium()
    page = root / f"{role}.html"
    write_page(page, build_dashboard(root, role=role, epsilon=1.0))  # type: ignore[arg-type]
    seen = asyncio.run(visit(page.as_uri(), profile, CHART_IDS[role]))  # type: ignore[index]
    page.with_suffix(".png").write_bytes(seen.screenshot)
    return seen, page


@pytest.fixture(scope="module")
def dashboard_visit(
    published: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PageVisit, Path]:
    return _visit(published, "analyst", tmp_path_factory.mktemp("profile"))


@pytest.fixture(scope="module")
def billing_visit(
    published: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PageVisit, Path]:
    return _visit(published, "billing", tmp_path_factory.mktemp("profile"))


def test_no_console_errors_and_no_network(
    dashboard_visit: tuple[PageVisit, Path], billing_visit: tuple[PageVisit, Path]
) -> None:
    for seen, page in (dashboard_visit, billing_visit):
        assert seen.problems == []
        assert seen.requests == [page.as_uri()]  # the file itself; nothing else


# What each chart must show: words in its legend, ticks or titles.
EXPECTED = {
    "chart-people": ["active people", "95 % interval", "people", "Nov 1"],
    "chart-activity": ["all events", "total, 95 %", "request", "events"],
    "chart-geography": ["FR", "DE", "(other)", "Events", "Person-days"],
    "chart-devices": ["desktop", "mobile", "Firefox", "Chrome Mobile", "Linux", "Android"],
    "chart-usage": [*TOP_8, "others", "Requests per day", "Page views per day", "Nov 1"],
    "chart-bandwidth": ["uploaded", "downloaded", "bytes per day"],
    "chart-sessions": ["sessions started", "mean session length", "minutes"],
}


@pytest.mark.parametrize("chart_id", ALL_CHARTS)
def test_every_chart_is_drawn_with_data(
    dashboard_visit: tuple[PageVisit, Path],
    billing_visit: tuple[PageVisit, Path],
    chart_id: str,
) -> None:
    seen = dashboard_visit[0] if chart_id in CHART_IDS["analyst"] else billing_visit[0]
    chart = seen.charts[chart_id]
    assert chart["present"] and chart["svgs"] >= 1, chart
    assert chart["traces"] >= 1 and chart["bars"] + chart["lines"] > 0, chart
    assert chart["width"] > 1000, chart  # responsive: the plot fills the section
    labels = " ".join(chart["legend"] + chart["ticks"] + chart["titles"])
    assert [text for text in EXPECTED[chart_id] if text not in labels] == [], labels
    if chart_id == "chart-usage":
        # 9 series x 2 panels x 3 days, every stacked segment visible.
        assert chart["bars"] == 9 * 2 * 3
    if chart_id == "chart-people":
        assert chart["lines"] == 3  # the band's two bounds (zero width) and the count
    if chart_id == "chart-sessions":
        assert chart["lines"] == 1  # the mean length


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("chart_id", ALL_CHARTS)
def test_no_legend_entry_or_title_is_under_the_toolbar_or_the_axis_labels(
    dashboard_visit: tuple[PageVisit, Path],
    billing_visit: tuple[PageVisit, Path],
    chart_id: str,
) -> None:
    seen = dashboard_visit[0] if chart_id in CHART_IDS["analyst"] else billing_visit[0]
    chart = seen.charts[chart_id]
    assert chart["modebar"], "plotly's toolbar is on every chart"
    for item in chart["legendItems"]:
        for toolbar in chart["modebar"]:
            assert not _overlap(item, toolbar), (item, toolbar)
        for label in chart["tickLabels"]:
            assert not _overlap(item, label), (item, label)
    for title in chart["titleBoxes"]:
        for toolbar in chart["modebar"]:
            assert not _overlap(title, toolbar), (title, toolbar)
    # Counts never run below zero on an axis (the intervals' low ends are clipped at 0).
    assert not [v for v in chart["xTickValues"] if v.startswith(("-", "\u2212"))], chart[
        "xTickValues"
    ]


def test_the_screenshot_is_a_picture(dashboard_visit: tuple[PageVisit, Path]) -> None:
    seen, page = dashboard_visit
    shot = page.with_suffix(".png")
    assert shot.stat().st_size > 50_000
    width, height, rows = png_rows(seen.screenshot)
    assert width == WIDTH and height > 2000
    # Known pixels prove the decoding (all five PNG filters occur in Chromium's output):
    # the header's #1f2937 at the top left, the page's #f4f6f9 in the bottom margin.
    channels = len(rows[0]) // width
    assert rows[5][5 * channels : 5 * channels + 3] == bytes.fromhex("1f2937")
    assert rows[height - 5][5 * channels : 5 * channels + 3] == bytes.fromhex("f4f6f9")
    colours = pixel_colours(rows, width)
    background, most = colours.most_common(1)[0]
    # A blank page is one colour; the dashboard has a dark header, white cards, coloured
    # bars and text: hundreds of colours, and the commonest covers well under all of it.
    assert len(colours) > 50, colours.most_common(5)
    assert most < 0.8 * width * height, (background, most)


def test_the_served_page_renders_too(tmp_path: Path) -> None:
    chromium()
    root = make_published(tmp_path / "data")

    async def scenario() -> PageVisit:
        server = TestServer(create_app(lambda: build_dashboard(root)), host="127.0.0.1")
        await server.start_server()
        try:
            return await visit(
                str(server.make_url("/")), tmp_path / "profile", CHART_IDS["analyst"]
            )
        finally:
            await server.close()

    seen = asyncio.run(scenario())
    assert seen.problems == []
    drawn = {i: seen.charts[i]["bars"] + seen.charts[i]["lines"] for i in CHART_IDS["analyst"]}
    assert all(drawn.values()), seen.charts


def test_the_harness_sees_errors_and_requests(tmp_path: Path) -> None:
    chromium()
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><script src="https://cdn.example.invalid/x.js"></script>'
        "</head><body><div id=\"chart-x\"></div><script>console.error('boom');"
        "null.property;</script></body></html>"
    )
    # Nothing will ever draw there: a short deadline keeps the test fast.
    seen = asyncio.run(visit(bad.as_uri(), tmp_path / "profile", ("chart-x",), 500))
    problems = "\n".join(seen.problems)
    assert "boom" in problems and "TypeError" in problems
    assert "https://cdn.example.invalid/x.js" in seen.requests
    assert seen.charts["chart-x"]["svgs"] == 0  # nothing drawn, and the harness says so
