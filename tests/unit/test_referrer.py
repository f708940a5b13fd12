"""The referrer class of requests and page views: a stage of the worker and a facts column
that keeps the class, never the URL or its host."""

from __future__ import annotations

from dataclasses import replace

import pytest

from schemas.arrow import FACTS
from streams.enrich.referrer import ReferrerClassifier
from streams.privacy.keyring import Keyring
from streams.worker.pipeline import PartitionPipeline, RawRecord
from streams.worker.stages import STAGES
from tests.fixtures.pipeline_context import default_context
from tests.fixtures.raw_events import raw_event

CLASSIFIER = ReferrerClassifier(["console.example.com"])


@pytest.mark.parametrize(
    ("referrer", "expected"),
    [
        (None, "direct"),
        ("", "direct"),
        ("  ", "direct"),
        ("https://www.google.com/search?q=sieve", "search"),
        ("https://www.google.co.uk/", "search"),
        ("http://duckduckgo.com/?q=x", "search"),
        ("https://www.bing.com.", "search"),
        ("https://t.co/abc", "social"),
        ("//www.reddit.com/r/x", "social"),
        ("https://user:pw@news.ycombinator.com:443/item?id=1", "social"),
        ("https://console.example.com/billing", "internal"),
        ("HTTPS://EU.Console.Example.COM/", "internal"),
        ("/settings/keys", "internal"),
        ("https://github.com/", "other"),
        ("https://notgoogle.example/", "other"),
        ("https://example.com/?ref=google.com", "other"),
        ("https://console.example.com.evil.net/", "other"),
        ("https:///nohost", "other"),
        ("http://[2001:db8::1]/", "other"),
        ("android-app://com.example.app", "other"),
        ("not a url", "other"),
    ],
)
def test_each_referrer_gets_its_class(referrer: str | None, expected: str) -> None:
    assert CLASSIFIER.classify(referrer) == expected


def test_without_own_hosts_only_relative_referrers_are_internal() -> None:
    classifier = ReferrerClassifier()
    assert classifier.classify("https://console.example.com/x") == "other"
    assert classifier.classify("/x") == "internal"


def test_referrer_is_a_declared_stage_before_the_split() -> None:
    names = [name for name, _ in STAGES]
    assert "referrer" in names
    assert names.index("referrer") < names.index("split")
    assert FACTS.field("referrer_class").nullable


_event = raw_event


def test_the_worker_writes_the_class_and_never_the_referrer() -> None:
    referrers = {
        "e1": "https://www.google.com/search?q=secret-query",
        "e2": "https://console.example.com/private/page-7",
        "e3": "https://t.co/xyz",
        "e4": "https://partner.example.org/landing",
    }
    values = [_event(eid, "page_view", referrer=url) for eid, url in referrers.items()]
    values += [_event("e5", "request"), _event("e6", "login")]
    context = replace(default_context(Keyring.generate()), referrers=CLASSIFIER)
    pipeline = PartitionPipeline("raw", 0, context)
    arrival = 1_793_361_600_000  # 2026-10-30T12:00Z
    assert pipeline.process([RawRecord(i, arrival, v) for i, v in enumerate(values)]) == []
    pending = pipeline.take_range()

    assert pending is not None
    facts = pending.tables["facts"]
    assert facts["referrer_class"].to_pylist() == [
        "search",
        "internal",
        "social",
        "other",
        "direct",
        None,
    ]
    cells = {str(cell) for column in facts.columns for cell in column.to_pylist()}
    for url in referrers.values():
        host = url.split("/")[2]
        assert not any(url in cell or host in cell for cell in cells)
    assert not any("secret-query" in cell for cell in cells)


def test_the_services_own_hosts_are_configured_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.settings import Settings
    from streams.worker.pipeline import PipelineContext
    from streams.worker.state.folder import StateFolder

    monkeypatch.setenv("SIEVE_INTERNAL_REFERRER_HOSTS", " console.example.com, Example.NET ,")
    settings = Settings()
    context = PipelineContext.from_settings(
        settings, Keyring.generate(), worker_version="test", state=StateFolder()
    )

    assert settings.internal_referrer_hosts == ("console.example.com", "Example.NET")
    classify = context.referrers.classify
    assert classify("https://console.example.com/private") == "internal"
    assert classify("https://eu.example.net/") == "internal"  # a subdomain of one
    assert classify("https://example.com/") == "other"
