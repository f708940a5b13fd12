"""The public domain of every analytics dimension: every value it can take, known up front.

Releasing a noisy count for *every* value of a public domain (most of them noisy zeros)
reveals nothing by the presence of a value, so no data-dependent key selection (and no
delta for it) is needed; the threshold on noisy people that decides which values are
published is then post-processing. The domains come from code, never from the facts:

- ``country``: every two-letter code (the contract and the geolocator only ever produce
  ``[A-Z]{2}``, ``ZZ`` for unknown);
- ``device_class``: :data:`streams.enrich.useragent.DEVICE_CLASSES`;
- ``browser_family`` / ``os_family``: the families the bundled uap-core rules can produce
  from literals (:func:`streams.enrich.useragent.rule_families`), which is all the worker
  keeps (anything else is ``Other``);
- ``type``: the event types of the contract.

A fact whose value is outside its domain (a worker on newer uap-core rules, say) is counted
under the domain's fallback value, so every event still counts once per dimension.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from typing import Final

from aggregations.schemas import DIMENSIONS
from schemas.events import EVENT_TYPES
from streams.enrich.geo import UNKNOWN_COUNTRY
from streams.enrich.useragent import DEVICE_CLASSES, OTHER, bundled_families


@dataclass(frozen=True)
class Domain:
    """The values of one dimension, sorted; ``fallback`` is one of them."""

    dimension: str
    values: tuple[str, ...]
    fallback: str

    def __post_init__(self) -> None:
        if self.fallback not in self.values:
            raise ValueError(f"{self.dimension}: fallback {self.fallback!r} not in the domain")
        if list(self.values) != sorted(set(self.values)):
            raise ValueError(f"{self.dimension}: values must be sorted and distinct")


_LETTERS: Final = string.ascii_uppercase


@functools.cache
def domains() -> dict[str, Domain]:
    """Every dimension's domain, in :data:`~aggregations.schemas.DIMENSIONS` order."""
    # What a UserAgentParser keeps, without building one (its resolver is most of the cost
    # of a small publish run).
    browsers, systems = bundled_families()
    built = {
        "country": Domain(
            "country", tuple(sorted(a + b for a in _LETTERS for b in _LETTERS)), UNKNOWN_COUNTRY
        ),
        "device_class": Domain("device_class", tuple(sorted(DEVICE_CLASSES)), "unknown"),
        "browser_family": Domain("browser_family", tuple(sorted(browsers)), OTHER),
        "os_family": Domain("os_family", tuple(sorted(systems)), OTHER),
        "type": Domain("type", tuple(sorted(EVENT_TYPES)), "request"),
    }
    return {dimension: built[dimension] for dimension in DIMENSIONS}
