"""Where a request or page view came from, as a class: the facts keep the class, never the
URL or its host.

Classes:

* ``direct``: no referrer (typed in, a bookmark, an app, or a browser that sent none);
* ``internal``: a relative referrer (no host), or a host of the service itself (the hosts
  given to :class:`ReferrerClassifier`, and their subdomains). The account's own site is
  not known to Sieve (events name an account id, never its domain), so "internal" means
  the service's own pages: a console page linking to another;
* ``search``: a web search engine (one of :data:`SEARCH_ENGINES` is a label of the host,
  so ``www.google.co.uk`` is Google);
* ``social``: a social network or link shortener of one (:data:`SOCIAL_HOSTS` or their
  subdomains);
* ``other``: any other host, or a referrer that is not a URL.

Only ``request`` and ``page_view`` events have a referrer; the others' class is null.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Final, Literal

import pyarrow as pa
import pyarrow.compute as pc

ReferrerClass = Literal["search", "social", "direct", "internal", "other"]

# Labels that make a host a search engine's, whatever its country domain.
SEARCH_ENGINES: Final = frozenset(
    {"google", "bing", "duckduckgo", "yahoo", "baidu", "yandex", "ecosia", "qwant", "startpage"}
)
SOCIAL_HOSTS: Final = frozenset(
    {
        "facebook.com",
        "fb.com",
        "instagram.com",
        "twitter.com",
        "x.com",
        "t.co",
        "linkedin.com",
        "lnkd.in",
        "reddit.com",
        "youtube.com",
        "tiktok.com",
        "pinterest.com",
        "threads.net",
        "mastodon.social",
        "news.ycombinator.com",
    }
)
# The host of an absolute or protocol-relative URL (RFC 3986's authority without userinfo
# and port). Matched by Arrow (RE2) once per distinct referrer of a batch: a Python URL
# parser per referrer cost more than the rest of the stage.
_HOST: Final = (
    r"^[\t\n\r ]*(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//(?:[^/?#@]*@)?"
    r"(?P<host>\[[^\]/?#]*\]|[^/?#:\[\]]*)"
)
_CLASSES: Final = ("search", "social", "direct", "internal", "other")


class ReferrerClassifier:
    """Classifies referrers; ``internal_hosts`` are the service's own (lower case)."""

    def __init__(self, internal_hosts: Iterable[str] = ()) -> None:
        self._internal = frozenset(host.lower().strip(".") for host in internal_hosts)
        self._of_host = functools.lru_cache(maxsize=1 << 14)(self._host_class)

    def classify(self, referrer: str | None) -> ReferrerClass:
        """The class of one referrer."""
        return self.classify_column(pa.array([referrer], pa.string()))[0].as_py()

    def classify_column(self, referrers: pa.Array) -> pa.Array:
        """The class of each referrer (a string array), in order."""
        distinct = referrers.dictionary_encode(null_encoding="encode")
        values = distinct.dictionary
        # The struct's field ignores the struct's nulls (no match): they are masked here.
        hosts = pc.if_else(
            pc.match_substring_regex(values, _HOST),
            pc.utf8_lower(pc.extract_regex(values, _HOST).field("host")),
            pa.scalar(None, pa.string()),
        )
        host_codes = hosts.dictionary_encode()  # null where the referrer has no authority
        of_host = pa.array(
            [self._of_host(host) for host in host_codes.dictionary.to_pylist()], pa.string()
        ).take(host_codes.indices)
        trimmed = pc.utf8_trim_whitespace(values)
        blank = pc.fill_null(pc.equal(trimmed, ""), True)
        # No authority: a path of the same site, or not a URL at all ("android-app:...").
        no_host = pc.if_else(pc.starts_with(trimmed, "/"), "internal", "other")
        classes = pc.if_else(blank, "direct", pc.coalesce(of_host, no_host))
        return classes.take(distinct.indices)

    def _host_class(self, host: str) -> ReferrerClass:
        host = host.strip("[]").rstrip(".")
        if not host:
            return "other"
        if _within(host, self._internal):
            return "internal"
        if not SEARCH_ENGINES.isdisjoint(host.split(".")[:-1]):
            return "search"
        if _within(host, SOCIAL_HOSTS):
            return "social"
        return "other"


def _within(host: str, domains: frozenset[str]) -> bool:
    """``host`` is one of ``domains`` or a subdomain of one."""
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels)))
