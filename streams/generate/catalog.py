"""What the synthetic users do: the console's pages, its API, the media they move, their bills.

The service modelled is an image and video management console (the seed policy's), so
uploads are mostly images, downloads are derived renditions, and sizes are heavy-tailed:
most files are small, a few are huge, which is what makes per-account byte metering
interesting.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

CONSOLE_ORIGIN: Final = "https://console.sieve.example"

# (path template, weight). "{id}" becomes a short random identifier.
CONSOLE_PAGES: Final[tuple[tuple[str, float], ...]] = (
    ("/console", 10),
    ("/console/media-library", 20),
    ("/console/media-library/folders/{id}", 12),
    ("/console/media-library/assets/{id}", 14),
    ("/console/transformations", 5),
    ("/console/upload-presets", 3),
    ("/console/reports/usage", 6),
    ("/console/billing", 3),
    ("/console/billing/invoices", 2),
    ("/console/settings/account", 2),
    ("/console/settings/users", 2),
    ("/console/settings/api-keys", 2),
    ("/console/settings/privacy", 1),
    ("/console/getting-started", 2),
    ("/docs/upload-api", 3),
    ("/docs/transformations", 3),
)

# (method, path template, weight) of the REST API used by the console and by servers.
API_CALLS: Final[tuple[tuple[str, str, float], ...]] = (
    ("GET", "/api/v1/resources/image?max_results=50", 25),
    ("GET", "/api/v1/resources/video?max_results=50", 6),
    ("GET", "/api/v1/resources/{id}", 20),
    ("GET", "/api/v1/folders", 8),
    ("GET", "/api/v1/usage", 5),
    ("GET", "/api/v1/search?expression=tags%3D{id}", 6),
    ("POST", "/api/v1/image/upload", 10),
    ("POST", "/api/v1/video/upload", 2),
    ("POST", "/api/v1/resources/{id}/tags", 4),
    ("PUT", "/api/v1/resources/{id}", 3),
    ("DELETE", "/api/v1/resources/{id}", 3),
    ("POST", "/api/v1/transformations", 2),
)

# Status codes of API calls, mostly successes; 304 from conditional GETs, 429 from bursts.
STATUSES: Final[tuple[tuple[int, float], ...]] = (
    (200, 880), (201, 30), (204, 15), (304, 30), (400, 8), (401, 4), (403, 3),
    (404, 15), (409, 2), (429, 6), (500, 4), (502, 1), (503, 2),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MediaType:
    """A content type and the log-normal law of its file sizes (median, spread)."""

    content_type: str
    weight: float
    median_bytes: float
    sigma: float

    @property
    def mu(self) -> float:
        return math.log(self.median_bytes)


UPLOAD_TYPES: Final[tuple[MediaType, ...]] = (
    MediaType("image/jpeg", 45, 350_000, 1.1),
    MediaType("image/png", 20, 180_000, 1.3),
    MediaType("image/webp", 6, 90_000, 1.0),
    MediaType("image/heic", 5, 1_800_000, 0.6),
    MediaType("image/gif", 3, 600_000, 1.4),
    MediaType("image/svg+xml", 3, 12_000, 1.2),
    MediaType("video/mp4", 10, 25_000_000, 1.6),
    MediaType("video/quicktime", 3, 60_000_000, 1.5),
    MediaType("application/pdf", 5, 450_000, 1.2),
)

# Downloads are derived renditions: Pareto sizes above a minimum per type.
DOWNLOAD_TYPES: Final[tuple[tuple[str, float, float], ...]] = (
    # (content type, weight, minimum bytes)
    ("image/jpeg", 30, 8_000),
    ("image/webp", 30, 5_000),
    ("image/avif", 10, 4_000),
    ("image/png", 10, 10_000),
    ("video/mp4", 12, 400_000),
    ("application/pdf", 3, 50_000),
    ("application/zip", 5, 2_000_000),
)
# alpha close to 1: a very heavy tail (a few downloads dwarf all others), finite mean.
DOWNLOAD_PARETO_ALPHA: Final = 1.2

# Subscription prices by plan, in USD; other currencies scale by a rough rate.
PLAN_PRICES_USD: Final[tuple[tuple[str, float], ...]] = (
    ("free", 0.0), ("plus", 89.0), ("advanced", 224.0), ("enterprise", 1_500.0),
)  # fmt: skip
# Rough units per USD, enough for plausible amounts; zero-decimal currencies flagged.
CURRENCY_RATES: Final[dict[str, float]] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "BRL": 5.0, "INR": 83.0,
    "AUD": 1.5, "CAD": 1.35, "CHF": 0.88, "SEK": 10.5, "PLN": 4.0, "MXN": 17.0,
}  # fmt: skip
ZERO_DECIMAL_CURRENCIES: Final = frozenset({"JPY", "KRW", "VND", "IDR"})
BILLING_FALLBACK_CURRENCY: Final = "USD"

_ALNUM: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_UPPER_ALNUM: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TEN: Final = range(10)
assert len(_ALNUM) == 62


def short_id(rng: random.Random) -> str:
    """An opaque 10-character asset or folder id.

    The same draws and string as ``"".join(rng.choices(_ALNUM, k=10))`` (what
    ``choices`` does without weights, spelled out): a quarter of the cost, on the path of
    most requests and page views.
    """
    draw = rng.random
    return "".join([_ALNUM[int(draw() * 62.0)] for _ in _TEN])


def provider_reference(rng: random.Random, provider: str) -> str:
    """A reference in the provider's own format (Stripe charge id, PayPal transaction id)."""
    if provider == "stripe":
        return "ch_" + "".join(rng.choices(_ALNUM, k=24))
    return "".join(rng.choices(_UPPER_ALNUM, k=17))


def format_amount(amount: float, currency: str) -> str:
    """A decimal string in the currency's minor units (never a float on the wire)."""
    if currency in ZERO_DECIMAL_CURRENCIES:
        return str(round(amount))
    return f"{amount:.2f}"
