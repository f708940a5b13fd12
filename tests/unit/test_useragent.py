"""User-agent enrichment: uap-core conformance, the coarse values, device class, batching."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.enrich.useragent import (
    DEVICE_CLASSES,
    OTHER,
    UNKNOWN,
    UserAgentInfo,
    UserAgentParser,
    bundled_families,
    rule_families,
)

UAP_CORE = Path(__file__).resolve().parent.parent / "data" / "uap-core"


def _cases(name: str) -> list[dict[str, str | None]]:
    with (UAP_CORE / f"{name}.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


UA_CASES = _cases("test_ua")
OS_CASES = _cases("test_os")
PACKAGED_AGENTS = [
    line
    for line in resources.files("streams.data")
    .joinpath("user_agents.txt")
    .read_text("utf-8")
    .splitlines()
    if line and not line.startswith("#")  # the attribution header
]


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()


@pytest.fixture(scope="module")
def verbatim() -> UserAgentParser:
    return UserAgentParser(verbatim_families=True)


def _share(agreeing: int, total: int, label: str) -> float:
    share = agreeing / total
    print(f"{label}: {agreeing}/{total} = {share:.2%}")
    return share


# --- conformance with uap-core's own test cases ---------------------------------------------


def test_uap_core_cases_are_all_there() -> None:
    # test_ua.yaml / test_os.yaml of uap-core, converted to JSON lines (README.md there).
    assert len(UA_CASES) == 1601
    assert len(OS_CASES) == 483
    assert all(isinstance(c["user_agent_string"], str) and c["family"] for c in UA_CASES)


def test_browser_family_agrees_with_uap_core(verbatim: UserAgentParser) -> None:
    infos = verbatim.parse_many([c["user_agent_string"] for c in UA_CASES])
    agreeing = sum(i.browser_family == c["family"] for i, c in zip(infos, UA_CASES, strict=True))
    assert _share(agreeing, len(UA_CASES), "browser family, verbatim") >= 0.99


def test_os_family_agrees_with_uap_core(verbatim: UserAgentParser) -> None:
    infos = verbatim.parse_many([c["user_agent_string"] for c in OS_CASES])
    agreeing = sum(i.os_family == c["family"] for i, c in zip(infos, OS_CASES, strict=True))
    assert _share(agreeing, len(OS_CASES), "OS family, verbatim") >= 0.99


def test_coarse_browser_family_is_uap_core_family_or_other(parser: UserAgentParser) -> None:
    # The facts keep the expected family when the rules spell it out, "Other" when uap-core
    # copies it from the string: agreement with that coarsened expectation, and how much of
    # the test set keeps its exact family (uap-core's cases are heavy on obscure crawlers
    # named by generic rules, so far from all).
    allowed = parser.browser_families
    assert allowed is not None
    infos = parser.parse_many([c["user_agent_string"] for c in UA_CASES])
    expected = [c["family"] if c["family"] in allowed else OTHER for c in UA_CASES]
    agreeing = sum(i.browser_family == e for i, e in zip(infos, expected, strict=True))
    exact = sum(i.browser_family == c["family"] for i, c in zip(infos, UA_CASES, strict=True))
    assert _share(agreeing, len(UA_CASES), "browser family, coarse vs coarsened") >= 0.99
    assert _share(exact, len(UA_CASES), "browser family, coarse vs exact") >= 0.60


def test_coarse_os_family_is_uap_core_family_or_other(parser: UserAgentParser) -> None:
    allowed = parser.os_families
    assert allowed is not None
    infos = parser.parse_many([c["user_agent_string"] for c in OS_CASES])
    expected = [c["family"] if c["family"] in allowed else OTHER for c in OS_CASES]
    agreeing = sum(i.os_family == e for i, e in zip(infos, expected, strict=True))
    exact = sum(i.os_family == c["family"] for i, c in zip(infos, OS_CASES, strict=True))
    assert _share(agreeing, len(OS_CASES), "OS family, coarse vs coarsened") >= 0.99
    assert _share(exact, len(OS_CASES), "OS family, coarse vs exact") >= 0.95


def test_bundled_families_are_the_parsers(parser: UserAgentParser) -> None:
    # The DP domains take them from bundled_families() without building a parser: they must
    # be exactly what a parser lets reach the facts.
    assert bundled_families() == (parser.browser_families, parser.os_families)
    assert len(bundled_families()[0]) > 100


def test_common_families_reach_the_facts(parser: UserAgentParser) -> None:
    assert parser.browser_families is not None and parser.os_families is not None
    assert {
        "Chrome",
        "Chrome Mobile",
        "Chrome Mobile iOS",
        "Firefox",
        "Safari",
        "Mobile Safari",
        "Edge",
        "Samsung Internet",
        "Opera",
        "Googlebot",
        "bingbot",
    } <= parser.browser_families
    assert {"Windows", "Mac OS X", "Linux", "Android", "iOS", "Chrome OS", "Ubuntu"} <= (
        parser.os_families
    )


# --- coarse values: nothing copied from the string reaches the facts ------------------------


@pytest.mark.parametrize(
    ("user_agent", "captured"),
    [
        ("jane.doe@example.com/1.0 CFNetwork/1240.0.4 Darwin/20.5.0", "jane.doe@example.com"),
        ("Mozilla/5.0 (compatible; JaneDoeBot/1.0)", "JaneDoeBot"),
    ],
)
def test_text_captured_by_generic_rules_becomes_other(
    parser: UserAgentParser, verbatim: UserAgentParser, user_agent: str, captured: str
) -> None:
    assert verbatim.parse(user_agent).browser_family == captured  # what uap-core would say
    info = parser.parse(user_agent)
    assert info.browser_family == OTHER
    assert info.browser_major is None


def test_bot_named_by_a_generic_rule_is_still_a_bot(parser: UserAgentParser) -> None:
    assert parser.parse("Mozilla/5.0 (compatible; JaneDoeBot/1.0)").is_bot


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(st.characters(codec="ascii", exclude_characters="/\r\n"), max_size=40),
    tail=st.sampled_from(["/1.0 CFNetwork/1240.0.4 Darwin/20.5.0", "Bot/2.1", "-crawler", ""]),
)
def test_values_are_always_from_the_closed_sets(
    parser: UserAgentParser, name: str, tail: str
) -> None:
    info = parser.parse(name + tail)
    assert parser.browser_families is not None and parser.os_families is not None
    assert info.browser_family in parser.browser_families
    assert info.os_family in parser.os_families
    assert info.device_class in DEVICE_CLASSES
    assert info.browser_major is None or info.browser_major.isdigit()


def test_packaged_agents_parse_to_closed_sets(parser: UserAgentParser) -> None:
    assert parser.browser_families is not None and parser.os_families is not None
    for info in parser.parse_many(PACKAGED_AGENTS):
        assert info.browser_family in parser.browser_families
        assert info.os_family in parser.os_families
        assert info.browser_major is None or info.browser_major.isdigit()


# --- device class and bot flag ----------------------------------------------------------------

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (CHROME_WINDOWS, UserAgentInfo("Chrome", "120", "Windows", "desktop", False)),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like"
            " Gecko) Version/17.1 Safari/605.1.15",
            UserAgentInfo("Safari", "17", "Mac OS X", "desktop", False),
        ),
        (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            UserAgentInfo("Firefox", "121", "Ubuntu", "desktop", False),
        ),
        (
            # "Tablet PC 2.0" is a Windows desktop component, not a tablet.
            "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0; SLCC2; Tablet PC 2.0)",
            UserAgentInfo("IE", "8", "Windows", "desktop", False),
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
            " like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            UserAgentInfo("Mobile Safari", "17", "iOS", "mobile", False),
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/120.0.6099.144 Mobile Safari/537.36",
            UserAgentInfo("Chrome Mobile", "120", "Android", "mobile", False),
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
            " Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            UserAgentInfo("Mobile Safari", "17", "iOS", "tablet", False),
        ),
        (
            # An Android browser without "Mobile": a tablet, by Google's convention.
            "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko)"
            " Chrome/120.0.0.0 Safari/537.36",
            UserAgentInfo("Chrome", "120", "Android", "tablet", False),
        ),
        (
            "Mozilla/5.0 (Android 14; Tablet; rv:121.0) Gecko/121.0 Firefox/121.0",
            UserAgentInfo("Firefox Mobile", "121", "Android", "tablet", False),
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            UserAgentInfo("Googlebot", "2", OTHER, "bot", True),
        ),
        (
            # Googlebot's smartphone crawler looks like a phone, and is still a bot.
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36"
            " (KHTML, like Gecko) Chrome/120.0.6099.71 Mobile Safari/537.36 (compatible;"
            " Googlebot/2.1; +http://www.google.com/bot.html)",
            UserAgentInfo("Googlebot", "2", "Android", "bot", True),
        ),
        (
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            UserAgentInfo("bingbot", "2", OTHER, "bot", True),
        ),
        (
            "python-requests/2.31.0",
            UserAgentInfo("Python Requests", "2", OTHER, "other", False),
        ),
        (
            "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko)"
            " SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
            UserAgentInfo("Samsung Internet", "4", "Tizen", "other", False),
        ),
        (None, UNKNOWN),
        ("", UNKNOWN),
        ("   ", UNKNOWN),
    ],
)
def test_known_agents(
    parser: UserAgentParser, user_agent: str | None, expected: UserAgentInfo
) -> None:
    assert parser.parse(user_agent) == expected


def test_uap_core_bots_are_bots(parser: UserAgentParser) -> None:
    # Every case whose uap-core family names a bot, spider or crawler is flagged (610 of
    # them); uap-core's "Spider" device rules flag many more (HTTP libraries, fetchers).
    named = [c for c in UA_CASES if re.search(r"bot|spider|crawl", str(c["family"]), re.I)]
    assert len(named) >= 500
    infos = parser.parse_many([c["user_agent_string"] for c in named])
    assert all(i.is_bot and i.device_class == "bot" for i in infos)


# --- batching and cache ---------------------------------------------------------------------


def test_parse_many_keeps_order_and_parses_each_distinct_string_once() -> None:
    parser = UserAgentParser(cache_size=16)
    safari = PACKAGED_AGENTS[0]
    batch = [CHROME_WINDOWS, safari, None, CHROME_WINDOWS, "", safari, CHROME_WINDOWS]
    infos = parser.parse_many(batch)
    assert infos == [parser.parse(ua) for ua in batch]
    assert infos[2] == infos[4] == UNKNOWN
    assert infos[0].browser_family == "Chrome"
    # Two distinct strings parsed; the loop above only hit the cache.
    assert parser.cache_info().misses == 2


def test_cache_is_bounded() -> None:
    parser = UserAgentParser(cache_size=8)
    parser.parse_many(PACKAGED_AGENTS[:200])
    assert parser.cache_info().currsize <= 8


# --- the packaged list for the traffic generator ------------------------------------------------


def test_packaged_agents_list(parser: UserAgentParser) -> None:
    assert 300 <= len(PACKAGED_AGENTS) <= 2000
    assert all(0 < len(ua.encode("utf-8")) < 2048 and ua == ua.strip() for ua in PACKAGED_AGENTS)
    classes = [i.device_class for i in parser.parse_many(PACKAGED_AGENTS)]
    share = {c: classes.count(c) / len(classes) for c in DEVICE_CLASSES}
    assert share["desktop"] + share["mobile"] >= 0.85
    assert 0 < share["bot"] <= 0.05
    assert share["tablet"] > 0


# --- families the rules spell out -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "families"),
    [
        (("Firefox/(\\d+)", "Firefox"), {"Firefox"}),
        (("(Firefox|Chrome)/(\\d+)", None), {"Firefox", "Chrome"}),
        (
            ("(Collector|Explorer)-(?:Android|iOS)-(\\d+)", "$1 for ArcGIS"),
            {"Collector for ArcGIS", "Explorer for ArcGIS"},
        ),
        (("^(Box(?: Sync)?)/(\\d+)", None), {"Box", "Box Sync"}),
        (("(espn\\.go)", None), {"espn.go"}),
        (("\\b(Nutch|[A-z]+[Bb]ot|Isara)[ \\-](\\d+)", None), {"Nutch", "Isara"}),
        (("^(.{0,200})/(\\d+)(?:\\.(\\d+)|) CFNetwork", None), set()),
        (("(Pinterest(?:bot|))/(\\d+)", "Pinterestbot"), {"Pinterestbot"}),
        (("(\\(StatusCake\\))", None), {"(StatusCake)"}),
        (("(?i)(foo)", None), set()),
    ],
)
def test_rule_families_for_user_agent_rules(
    rule: tuple[str, str | None], families: set[str]
) -> None:
    assert rule_families([rule]) == families | {OTHER}


def test_rule_families_for_os_rules_substitute_any_group_and_strip() -> None:
    rules = [
        ("(Fedora|(?:Free|Open)BSD)[/ ](\\d+)", None),
        ("(Windows) (NT|CE)", "$1 $2"),
        ("(Linux)(?: (x86)|)", " $1 "),
        ("HbbTV/\\d+ \\(; ?([a-zA-Z]+) ?;", None),
    ]
    assert rule_families(rules, os_semantics=True) == {
        OTHER,
        "Fedora",
        "FreeBSD",
        "OpenBSD",
        "Windows NT",
        "Windows CE",
        "Linux",
    }
