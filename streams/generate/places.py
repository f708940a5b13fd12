"""Countries the synthetic users live in: real address blocks, a time zone, a currency, cities.

The address blocks are real public allocations of large access providers in each country
(for example Comcast 73.0.0.0/8 and 2601::/20 in the US, Deutsche Telekom 91.0.0.0/10 and
2003::/19 in Germany), so an offline GeoIP database maps a generated address to the
intended country and the enrichment step has something true to find. Every block was
checked against the database packaged with geoip2fast (about 65,000 addresses per IPv4
block, 20,000 per IPv6 block, all mapping to the country) and a unit test re-checks a
sample; blocks that straddle territories (Orange France's overseas departments, for
instance) were narrowed until they did not.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Final


@dataclass(frozen=True, slots=True)
class City:
    name: str
    region: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    weight: float
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    utc_offset_minutes: int
    currency: str
    cities: tuple[City, ...]

    @property
    def tz(self) -> timezone:
        return timezone(timedelta(minutes=self.utc_offset_minutes))


def _c(
    code: str,
    weight: float,
    ipv4: tuple[str, ...],
    ipv6: tuple[str, ...],
    offset_h: float,
    currency: str,
    *cities: City,
) -> Country:
    return Country(code, weight, ipv4, ipv6, round(offset_h * 60), currency, cities)


# Weights loosely follow where a SaaS console's customers are; offsets are one
# representative (standard-time) offset per country, enough for a daily rhythm.
COUNTRIES: Final[tuple[Country, ...]] = (
    _c("US", 30, ("73.0.0.0/8", "24.0.0.0/12"), ("2601::/20",), -5, "USD",
       City("New York", "NY", 40.7128, -74.0060), City("San Francisco", "CA", 37.7749, -122.4194),
       City("Chicago", "IL", 41.8781, -87.6298)),
    _c("DE", 8, ("91.0.0.0/10", "79.192.0.0/10"), ("2003::/19",), 1, "EUR",
       City("Berlin", "BE", 52.5200, 13.4050), City("Munich", "BY", 48.1351, 11.5820)),
    _c("GB", 7, ("86.128.0.0/10", "81.144.0.0/12"), ("2a00:23c0::/27",), 0, "GBP",
       City("London", "ENG", 51.5074, -0.1278), City("Manchester", "ENG", 53.4808, -2.2426)),
    _c("FR", 6, ("86.192.0.0/10",), ("2a01:cb08::/29", "2a01:cb10::/28"), 1, "EUR",
       City("Paris", "IDF", 48.8566, 2.3522), City("Lyon", "ARA", 45.7640, 4.8357)),
    _c("IN", 6, ("117.192.0.0/10", "106.192.0.0/11"), ("2409:4000::/22",), 5.5, "INR",
       City("Bengaluru", "KA", 12.9716, 77.5946), City("Mumbai", "MH", 19.0760, 72.8777)),
    _c("JP", 5, ("126.0.0.0/9", "153.128.0.0/10"), ("240b:10::/28",), 9, "JPY",
       City("Tokyo", "13", 35.6762, 139.6503), City("Osaka", "27", 34.6937, 135.5023)),
    _c("BR", 5, ("177.0.0.0/13", "187.8.0.0/13"), ("2804:14c::/31",), -3, "BRL",
       City("São Paulo", "SP", -23.5505, -46.6333)),
    _c("CA", 3, ("142.112.0.0/13", "70.24.0.0/13"), ("2607:fea8::/32",), -5, "CAD",
       City("Toronto", "ON", 43.6532, -79.3832), City("Montréal", "QC", 45.5019, -73.5674)),
    _c("AU", 3, ("1.120.0.0/13", "101.176.0.0/12"), ("2001:8000::/20",), 10, "AUD",
       City("Sydney", "NSW", -33.8688, 151.2093)),
    _c("CN", 3, ("36.96.0.0/11", "183.0.0.0/10"), ("240e::/20",), 8, "CNY",
       City("Shanghai", "SH", 31.2304, 121.4737)),
    _c("NL", 2, ("77.160.0.0/12", "84.24.0.0/13"), ("2a02:a400::/26",), 1, "EUR",
       City("Amsterdam", "NH", 52.3676, 4.9041)),
    _c("ES", 2, ("83.32.0.0/11", "88.0.0.0/11"), ("2a0c:5a80::/29",), 1, "EUR",
       City("Madrid", "MD", 40.4168, -3.7038)),
    _c("IT", 2, ("79.0.0.0/10", "87.0.0.0/12"), ("2001:b07::/32",), 1, "EUR",
       City("Milan", "MI", 45.4642, 9.1900)),
    _c("KR", 2, ("211.224.0.0/11", "175.192.0.0/10"), ("2001:2d8::/32",), 9, "KRW",
       City("Seoul", "11", 37.5665, 126.9780)),
    _c("MX", 2, ("189.128.0.0/11", "201.96.0.0/12"), ("2806:2f0::/32",), -6, "MXN",
       City("Mexico City", "CMX", 19.4326, -99.1332)),
    _c("ID", 2, ("36.64.0.0/11", "114.120.0.0/13"), ("2001:448a::/32",), 7, "IDR",
       City("Jakarta", "JK", -6.2088, 106.8456)),
    _c("RU", 1, ("83.149.0.0/18", "95.24.0.0/13"), ("2a00:1fa0::/29",), 3, "RUB",
       City("Moscow", "MOW", 55.7558, 37.6173)),
    _c("ZA", 1, ("41.16.0.0/12", "105.0.0.0/12"), ("2c0f:f4c0::/32",), 2, "ZAR",
       City("Johannesburg", "GP", -26.2041, 28.0473)),
    _c("PL", 1, ("83.0.0.0/11", "89.64.0.0/12"), ("2a01:110f::/32",), 1, "PLN",
       City("Warsaw", "14", 52.2297, 21.0122)),
    _c("SE", 1, ("78.64.0.0/12", "90.224.0.0/12"), ("2001:2002::/32",), 1, "SEK",
       City("Stockholm", "AB", 59.3293, 18.0686)),
    _c("TR", 1, ("78.160.0.0/11", "88.224.0.0/11"), ("2a02:ff0::/32",), 3, "TRY",
       City("Istanbul", "34", 41.0082, 28.9784)),
    _c("AR", 1, ("181.4.0.0/14",), ("2800:810::/28",), -3, "ARS",
       City("Buenos Aires", "C", -34.6037, -58.3816)),
    _c("SG", 1, ("116.86.0.0/15",), ("2406:3003::/32",), 8, "SGD",
       City("Singapore", "01", 1.3521, 103.8198)),
    _c("VN", 1, ("113.160.0.0/11",), ("2405:4800::/32",), 7, "VND",
       City("Hanoi", "HN", 21.0278, 105.8342)),
    _c("PH", 1, ("49.144.0.0/13",), ("2001:4452::/32",), 8, "PHP",
       City("Manila", "NCR", 14.5995, 120.9842)),
    _c("CH", 1, ("85.0.0.0/13",), ("2a02:1200::/27",), 1, "CHF",
       City("Zurich", "ZH", 47.3769, 8.5417)),
    _c("IE", 1, ("86.40.0.0/13",), ("2001:bb6::/32",), 0, "EUR",
       City("Dublin", "D", 53.3498, -6.2603)),
    _c("NZ", 1, ("125.236.0.0/14",), ("2407:7000::/32",), 12, "NZD",
       City("Auckland", "AUK", -36.8485, 174.7633)),
    _c("NG", 1, ("105.112.0.0/12", "102.88.0.0/13"), (), 1, "NGN",
       City("Lagos", "LA", 6.5244, 3.3792)),
    _c("EG", 1, ("41.32.0.0/12", "156.192.0.0/11"), (), 2, "EGP",
       City("Cairo", "C", 30.0444, 31.2357)),
    # IPv6-only here: no IPv4 block of theirs we tried mapped cleanly to the country.
    _c("KE", 0.5, (), ("2c0f:fe38::/32",), 3, "KES",
       City("Nairobi", "30", -1.2921, 36.8219)),
    _c("UA", 0.5, (), ("2a02:2378::/32",), 2, "UAH",
       City("Kyiv", "30", 50.4501, 30.5234)),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AddressPool:
    """A country's blocks as (first address, size) pairs, for fast uniform picks."""

    ipv4: tuple[tuple[int, int], ...]
    ipv6: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, country: Country) -> AddressPool:
        def blocks(nets: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
            parsed = [ipaddress.ip_network(n) for n in nets]
            return tuple((int(n.network_address), n.num_addresses) for n in parsed)

        return cls(blocks(country.ipv4), blocks(country.ipv6))

    def pick(self, rng: random.Random, *, ipv6: bool) -> str:
        """A random address of the country; IPv6 when asked and the country has some."""
        if (ipv6 and self.ipv6) or not self.ipv4:
            base, size = self.ipv6[rng.randrange(len(self.ipv6))]
            return str(ipaddress.IPv6Address(base + 1 + rng.randrange(size - 2)))
        base, size = self.ipv4[rng.randrange(len(self.ipv4))]
        # Hosts only: skip the block's network and broadcast addresses.
        a = base + 1 + rng.randrange(size - 2)
        return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"
