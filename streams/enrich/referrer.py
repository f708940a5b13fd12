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
from collections.abc import Iterable, Sequence
from typing import Final, Literal
from urllib.parse import urlsplit

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
# Distinct referrers remembered per classifier: pages link to few pages, and a parse costs
# ~40x a dictionary hit. Answers are pure, so the cache changes only speed.
_REMEMBERED: Final = 1 << 16


class ReferrerClassifier:
    """Classifies referrers; ``internal_hosts`` are the service's own (lower case)."""

    def __init__(self, internal_hosts: Iterable[str] = ()) -> None:
        self._internal = frozenset(host.lower().strip(".") for host in internal_hosts)
        self.classify = functools.lru_cache(maxsize=_REMEMBERED)(self._classify)

    def classify_many(self, referrers: Sequence[str | None]) -> list[ReferrerClass]:
        """The class of each referrer, in order."""
        classify = self.classify
        return [classify(referrer) for referrer in referrers]

    def _classify(self, referrer: str | None) -> ReferrerClass:
        if referrer is None or not referrer.strip():
            return "direct"
        try:
            host = urlsplit(referrer.strip()).hostname
        except ValueError:  # e.g. an unbalanced IPv6 bracket
            return "other"
        if host is None:
            # No host: a path on the same site, unless it is not a URL at all ("android-app:").
            return "internal" if referrer.strip().startswith("/") else "other"
        host = host.rstrip(".")
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
