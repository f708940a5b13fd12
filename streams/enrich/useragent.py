"""User-agent strings -> coarse browser, OS and device class, on the uap-core rules.

Wraps the maintained ``ua-parser`` 1.x with the rules bundled by ``ua-parser-builtins`` (no
file or network access at run time) and the fastest resolver installed (``ua_parser`` picks
ua-parser-rs, then re2, then its pure-Python resolver).

The values end up in the anonymized facts, so they are coarse by construction:

* ``browser_family`` / ``os_family`` are kept only when the uap-core rules spell them out
  literally (see :func:`rule_families`); a family captured from the user-agent text by a
  generic rule (``^(.{0,200})/(\\d+) CFNetwork``, ``[A-z]+[Bb]ot``...) is client-controlled
  free text, possibly a name or an e-mail address, and becomes ``"Other"``.
* ``browser_major`` is digits only (no minor or patch version).
* ``device_class`` is one of :data:`DEVICE_CLASSES`, decided by :func:`device_class_of`.

Parsing is deterministic and pure; :class:`UserAgentParser` memoizes it per distinct string.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Final, Literal, Protocol, cast

from ua_parser import (
    BasicResolver,
    BestAvailableResolver,
    Domain,
    Parser,
    Result,
    load_builtins,
    load_lazy_builtins,
)

OTHER: Final = "Other"

DeviceClass = Literal["desktop", "mobile", "tablet", "bot", "other", "unknown"]
DEVICE_CLASSES: Final[tuple[DeviceClass, ...]] = (
    "desktop",
    "mobile",
    "tablet",
    "bot",
    "other",
    "unknown",
)


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What Sieve keeps of a user agent: coarse enough for the anonymized facts."""

    browser_family: str
    browser_major: str | None
    os_family: str
    device_class: DeviceClass
    is_bot: bool


class _Rule(Protocol):
    @property
    def regex(self) -> str: ...

    family: str


# A missing or empty user agent: nothing is known, and nothing suggests a bot.
UNKNOWN: Final = UserAgentInfo(OTHER, None, OTHER, "unknown", False)


class UserAgentParser:
    """Parses user agents with the bundled uap-core rules, memoized per distinct string.

    Build one per process (or per worker) and reuse it: the cache is what makes the hot path
    cheap, since a batch of 10k events carries few distinct agents. Thread-safe.
    """

    def __init__(self, cache_size: int = 10_000, *, verbatim_families: bool = False) -> None:
        """``verbatim_families`` keeps every family ua-parser returns, even free text captured
        from the string: for conformance checks and diagnostics only, never for the facts."""
        # The compiled resolvers (ua-parser-rs, re2) build their own automaton from the rule
        # texts: compiling every rule with Python's re as well (eager builtins) is wasted work.
        lazy = BestAvailableResolver is not BasicResolver
        matchers = load_lazy_builtins() if lazy else load_builtins()
        self._parser = Parser(BestAvailableResolver(matchers))
        self._browser_families: frozenset[str] | None = None
        self._os_families: frozenset[str] | None = None
        if not verbatim_families:
            self._browser_families, self._os_families = _families(matchers)
        self._cached = functools.lru_cache(maxsize=cache_size)(self._parse)

    @property
    def browser_families(self) -> frozenset[str] | None:
        """The browser families that can reach the facts (``None``: any, verbatim mode)."""
        return self._browser_families

    @property
    def os_families(self) -> frozenset[str] | None:
        """The OS families that can reach the facts (``None``: any, verbatim mode)."""
        return self._os_families

    def parse(self, user_agent: str | None) -> UserAgentInfo:
        """The coarse description of one user agent (:data:`UNKNOWN` for None or blank)."""
        if not user_agent or user_agent.isspace():
            return UNKNOWN
        return self._cached(user_agent)

    def parse_many(self, user_agents: Sequence[str | None]) -> list[UserAgentInfo]:
        """``parse`` of each element, in order; each distinct string is parsed at most once."""
        distinct = {ua: self.parse(ua) for ua in dict.fromkeys(user_agents)}
        return [distinct[ua] for ua in user_agents]

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the per-string cache (for metrics and benchmarks)."""
        return self._cached.cache_info()

    def _parse(self, user_agent: str) -> UserAgentInfo:
        result = self._parser(user_agent, Domain.ALL).complete()
        browser = result.user_agent
        family = _allowed(browser.family if browser else None, self._browser_families)
        major = browser.major if browser and family != OTHER else None
        if major is not None and not (major.isascii() and major.isdigit() and len(major) <= 6):
            major = None
        os_family = _allowed(result.os.family if result.os else None, self._os_families)
        device_class = device_class_of(result)
        return UserAgentInfo(family, major, os_family, device_class, device_class == "bot")


@functools.cache
def bundled_families() -> tuple[frozenset[str], frozenset[str]]:
    """The browser and OS families a parser keeps (not in verbatim mode), from the bundled
    rules' texts alone: without building a resolver, whose automaton costs far more."""
    return _families(load_lazy_builtins())


def _families(matchers: Sequence[Sequence[object]]) -> tuple[frozenset[str], frozenset[str]]:
    # Both eager and lazy matchers carry their replacement in ``family``; the Matcher
    # protocol only promises ``regex``, hence the cast (an AttributeError if it goes).
    browser_rules = cast(Sequence[_Rule], matchers[0])
    os_rules = cast(Sequence[_Rule], matchers[1])
    return (
        rule_families((m.regex, m.family) for m in browser_rules),
        rule_families(((m.regex, m.family) for m in os_rules), os_semantics=True),
    )


def _allowed(family: str | None, allowed: frozenset[str] | None) -> str:
    if not family:
        return OTHER
    if allowed is not None and family not in allowed:
        return OTHER
    return family


# --- device class ---------------------------------------------------------------------------
# uap-core has no device *type*; it names the device ("iPhone", "Samsung SM-T510", "Spider").
# The class is derived, first rule that applies wins:
#   bot     the device rules say "Spider" (uap-core's class of crawlers, monitors, previews),
#           or the browser family names a bot/crawler/spider (e.g. "msnbot" sent with a
#           desktop Firefox string, which the device rules miss);
#   other   a TV or set-top box token (HbbTV, SmartTV, NetCast, Opera TV...): these run
#           Linux, Tizen or Android and would otherwise pass for a desktop, phone or tablet;
#   tablet  the device is an iPad, a Kindle or a "Tablet" (or uap-core's brand
#           "Generic_Android_Tablet"); or an Android *browser* string ("Mozilla/...")
#           without the "Mobi"/"Mobile" token (Google asks Android phones to send it and
#           tablets to omit it; apps' own strings never carry it, so they count as phones);
#           or the "Tablet;" token (Firefox for Android tablets; not "Tablet PC 2.0", which
#           old Windows desktops send);
#   mobile  a phone OS, an iPhone/iPod/generic phone, the "Mobi" token (MDN's advice) or
#           "MIDP" (Java ME phones);
#   desktop a desktop OS (Windows, macOS, Linux distributions, Chrome OS, BSDs, Solaris),
#           a browser string ("Mozilla/" or "Opera/") and no named device other than "Mac"
#           (uap-core names no device for PCs): an HTTP library on Linux is far more likely
#           a server than someone's desktop, and a named device on Linux is an appliance;
#   other   everything else: consoles, watches, HTTP libraries and apps, unknown OS.
# An iPad in "desktop mode" sends a Mac user agent and counts as desktop: nothing in the
# string tells them apart.
_BOT_FAMILY = re.compile(r"bot|spider|crawl|slurp|scraper|archiver", re.IGNORECASE)
_TABLET_DEVICE = re.compile(r"^(iPad|Kindle)|Tablet", re.IGNORECASE)
_TV = re.compile(
    r"HbbTV|Smart-?TV|NetCast|GoogleTV|AppleTV|BRAVIA|Roku|CrKey|Opera TV|InettvBrowser",
    re.IGNORECASE,
)
_PC_DEVICES: Final = frozenset({"", "Other", "Mac"})
_BROWSER_PREFIXES: Final = ("Mozilla/", "Opera/")
_PHONE_DEVICES: Final = frozenset({"iPhone", "iPod", "Generic Smartphone", "Generic Feature Phone"})
_MOBILE_OS: Final = frozenset(
    {
        "Android",
        "iOS",
        "Windows Phone",
        "Windows Mobile",
        "BlackBerry OS",
        "Firefox OS",
        "KaiOS",
        "HarmonyOS",
        "Symbian OS",
        "Symbian^3",
        "Symbian^3 Anna",
        "Symbian^3 Belle",
        "Nokia Series 40",
        "Nokia Series 30 Plus",
        "Bada",
        "BREW",
        "Brew MP",
        "Sailfish",
        "MeeGo",
        "Maemo",
        "webOS",
        "Tizen",
    }
)
_DESKTOP_OS: Final = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Mac OS",
        "Linux",
        "Chrome OS",
        "Ubuntu",
        "Kubuntu",
        "Lubuntu",
        "Linux Mint",
        "Debian",
        "Fedora",
        "Red Hat",
        "CentOS",
        "SUSE",
        "openSUSE",
        "Arch Linux",
        "Gentoo",
        "Slackware",
        "Mageia",
        "Mandriva",
        "PCLinuxOS",
        "Puppy",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    }
)


def device_class_of(result: Result) -> DeviceClass:
    """The device class of a complete ua-parser result (rules in the comment above)."""
    device = result.device.family if result.device else ""
    brand = (result.device.brand or "") if result.device else ""
    browser = result.user_agent.family if result.user_agent else ""
    os_family = result.os.family if result.os else ""
    text = result.string
    browser_string = text.startswith(_BROWSER_PREFIXES)
    if device == "Spider" or _BOT_FAMILY.search(browser):
        return "bot"
    if _TV.search(text):
        return "other"
    if (
        _TABLET_DEVICE.search(device)
        or brand == "Generic_Android_Tablet"
        or (os_family == "Android" and browser_string and "Mobi" not in text)
        or "Tablet;" in text
    ):
        return "tablet"
    if os_family in _MOBILE_OS or device in _PHONE_DEVICES or "Mobi" in text or "MIDP" in text:
        return "mobile"
    if os_family in _DESKTOP_OS and browser_string and device in _PC_DEVICES:
        return "desktop"
    return "other"


# --- families the rules spell out -----------------------------------------------------------
# A family is safe for the facts when it is written in the rules, not copied from the input.
# For a rule with a replacement such as "$1 for ArcGIS", the family comes from capture group
# 1; its possible values are enumerated from the regex when they form a small finite set
# ("(Firefox|Chrome)", "(Box(?: Sync)?)", "(?:Free|Open|Net)BSD"). Branches that match open
# text (".", classes, "+", "*", "\w") contribute nothing: the result is a subset of what the
# rule can produce, made only of the rules' own literals.

_MAX_VARIANTS: Final = 512
_ZERO_WIDTH_ESCAPES: Final = frozenset("bBAZ")
_Language = frozenset[str] | None  # None: open (not a small finite set of literals)


def rule_families(
    rules: Iterable[tuple[str, str | None]], *, os_semantics: bool = False
) -> frozenset[str]:
    """Every family the (regex, family replacement) rules can produce from literals only.

    User-agent rules substitute ``$1`` verbatim; OS rules (``os_semantics``) substitute any
    ``$n`` and strip the result, as ``ua_parser`` does. ``"Other"`` (no rule matched) is
    always included.
    """
    families = {OTHER}
    for regex, replacement in rules:
        template = replacement or "$1"
        refs = sorted({int(d) for d in re.findall(r"\$(\d)", template)})
        if not os_semantics:
            refs = [1] if "$1" in template else []
        if not refs:
            families.add(template)
            continue
        groups = _group_languages(regex)
        if groups is None:
            continue
        # A reference to a group the regex does not have substitutes "", as in ua_parser.
        languages = [groups.get(ref, frozenset({""})) for ref in refs]
        if any(language is None for language in languages):
            continue
        for values in product(*(sorted(lang or ()) for lang in languages)):
            family = template
            for ref, value in zip(refs, values, strict=True):
                family = family.replace(f"${ref}", value)
            if os_semantics:
                family = re.sub(r"\$\d", "", family).strip()
            if family:
                families.add(family)
    return frozenset(families)


def _group_languages(regex: str) -> dict[int, _Language] | None:
    """The finite language of each capture group of ``regex`` (by group number), or None
    when the regex uses a construct the enumerator does not follow."""
    groups: dict[int, _Language] = {}
    try:
        _Enumerator(regex, groups).alternation()
    except _Unsupported:
        return None
    return groups


class _Unsupported(Exception):
    """A construct the enumerator does not follow (inline flags, named groups)."""


class _Enumerator:
    """Recursive descent over the regex subset uap-core uses, computing finite languages."""

    def __init__(self, regex: str, groups: dict[int, _Language]) -> None:
        self.src = regex
        self.pos = 0
        self.groups = groups
        self.next_group = 1

    def alternation(self) -> _Language:
        branches = [self.sequence()]
        while self.pos < len(self.src) and self.src[self.pos] == "|":
            self.pos += 1
            branches.append(self.sequence())
        finite = [b for b in branches if b is not None]
        if not finite:
            return None
        union = frozenset().union(*finite)
        return union if len(union) <= _MAX_VARIANTS else None

    def sequence(self) -> _Language:
        language: _Language = frozenset({""})
        while self.pos < len(self.src) and self.src[self.pos] not in "|)":
            piece = self.quantified(self.atom())
            if language is None or piece is None:
                language = None
                continue
            if len(language) * len(piece) > _MAX_VARIANTS:
                language = None
                continue
            language = frozenset(a + b for a in language for b in piece)
        return language

    def quantified(self, atom: _Language) -> _Language:
        if self.pos >= len(self.src):
            return atom
        ch = self.src[self.pos]
        if ch == "?":
            self.pos += 1
            self._skip_lazy()
            return None if atom is None else atom | {""}
        if ch in "*+":
            self.pos += 1
            self._skip_lazy()
            return None
        if ch == "{":
            end = self.src.find("}", self.pos)
            if end < 0:
                return atom  # a literal "{"; never in the rules, but harmless
            self.pos = end + 1
            self._skip_lazy()
            return None
        return atom

    def _skip_lazy(self) -> None:
        if self.pos < len(self.src) and self.src[self.pos] in "?+":
            self.pos += 1

    def atom(self) -> _Language:
        ch = self.src[self.pos]
        self.pos += 1
        if ch == "\\":
            escaped = self.src[self.pos : self.pos + 1]
            self.pos += 1
            if escaped in _ZERO_WIDTH_ESCAPES:
                return frozenset({""})
            return None if escaped.isalnum() else frozenset({escaped})
        if ch == "(":
            return self.group()
        if ch == "[":
            self._skip_class()
            return None
        if ch in "^$":
            return frozenset({""})
        if ch == ".":
            return None
        return frozenset({ch})

    def group(self) -> _Language:
        capture = None
        zero_width = False
        if self.src.startswith("?", self.pos):
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.src.startswith(("?=", "?!"), self.pos):
                self.pos += 2
                zero_width = True
            elif self.src.startswith(("?<=", "?<!"), self.pos):
                self.pos += 3
                zero_width = True
            else:
                raise _Unsupported(self.src)
        else:
            capture = self.next_group
            self.next_group += 1
        inner = self.alternation()
        if self.pos >= len(self.src) or self.src[self.pos] != ")":
            raise _Unsupported(self.src)
        self.pos += 1
        if capture is not None:
            self.groups[capture] = inner
        return frozenset({""}) if zero_width else inner

    def _skip_class(self) -> None:
        if self.src.startswith("^", self.pos):
            self.pos += 1
        if self.src.startswith("]", self.pos):
            self.pos += 1  # a "]" first in a class is a literal
        while self.pos < len(self.src) and self.src[self.pos] != "]":
            self.pos += 2 if self.src[self.pos] == "\\" else 1
        self.pos += 1
