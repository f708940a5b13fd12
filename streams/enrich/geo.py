"""IP address -> ISO 3166-1 alpha-2 country, offline.

Two implementations of :class:`GeoLocator`:

* :class:`GeoIP2FastLocator` (default): the database that ships inside the ``geoip2fast``
  package (its IPv4+IPv6 country file), so there is nothing to download or configure.
  Loading it takes ~0.1 s and ~65 MB, so it is loaded once per process
  (:func:`packaged_database`) and shared. The code is MIT, but the data is a snapshot of
  MaxMind's GeoLite2 Country (2024-06-18 in geoip2fast 1.2.2) under the GeoLite2 EULA:
  attribution to MaxMind when shared, and old snapshots are to be replaced by current ones.
* :class:`MaxMindGeoLocator`: any MaxMind-format ``.mmdb`` file (GeoLite2/GeoIP2 Country or
  City, DB-IP...), used when ``SIEVE_GEOIP_DATABASE`` names one.

Only public unicast addresses are looked up: private, loopback, link-local, shared (CGNAT),
multicast and reserved addresses have no country, whatever a database says about them.
IPv4-mapped IPv6 addresses (``::ffff:8.8.8.8``) are looked up as the IPv4 address.
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeGuard

import maxminddb

from streams.errors import ConfigurationError

UNKNOWN_COUNTRY: Final = "ZZ"  # ISO 3166 user-assigned code, the usual "unknown or unspecified"

_COUNTRY_CODE: Final = re.compile(r"[A-Z]{2}")
# geoip2fast's "country with IPv4 and IPv6" file; its default file covers IPv4 only.
_GEOIP2FAST_FILE: Final = "geoip2fast-ipv6.dat.gz"


class GeoLocator(Protocol):
    """Finds the country of an IP address."""

    def country_of(self, ip: str) -> str | None:
        """The ISO country code of ``ip``, or None when unknown, private or not an address."""
        ...

    def countries(self, ips: Sequence[str | None]) -> list[str]:
        """``country_of`` of each element, :data:`UNKNOWN_COUNTRY` for None or unknown.

        Each distinct address is looked up once (a batch repeats few addresses).
        """
        ...


def resolve_countries(
    client_countries: Sequence[str | None],
    ips: Sequence[str | None],
    locator: GeoLocator,
) -> list[str]:
    """The country of each event: the client-supplied one if any, else its IP's, else ZZ.

    A client that states its location (``geo.country``) knows better than a database that
    sees a VPN, a corporate proxy or a roaming phone. ``ZZ`` from the client says nothing,
    so the IP decides then.
    """
    if len(client_countries) != len(ips):
        raise ValueError(f"{len(client_countries)} client countries for {len(ips)} addresses")
    missing = [i for i, c in enumerate(client_countries) if not is_country(c)]
    looked_up = locator.countries([ips[i] for i in missing]) if missing else []
    resolved = [c if is_country(c) else UNKNOWN_COUNTRY for c in client_countries]
    for i, country in zip(missing, looked_up, strict=True):
        resolved[i] = country
    return resolved


def is_country(code: str | None) -> TypeGuard[str]:
    """``code`` is a country code a client may state (two capitals, not ``ZZ``)."""
    return (
        code is not None and code != UNKNOWN_COUNTRY and _COUNTRY_CODE.fullmatch(code) is not None
    )


def public_address(ip: str) -> str | None:
    """``ip`` in canonical form if it is a public unicast address, else None."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif int(address) < 1 << 32:
            # ::/96 ("IPv4-compatible", deprecated by RFC 4291) is not routable, and
            # geoip2fast, which keys both families by integer, would answer for the IPv4
            # address with the same low bits.
            return None
    # is_global excludes RFC 1918, loopback, link-local, 100.64/10, documentation and other
    # special-purpose ranges (IANA registries); multicast is "global" for ipaddress, not here.
    if not address.is_global or address.is_multicast:
        return None
    return str(address)


# Addresses remembered across batches per locator: clients keep their address for hours, and
# a lookup (address parsing, then the database) costs ~30x a dictionary hit. Cleared whole
# when full: answers are pure, so forgetting changes only speed.
_REMEMBERED_ADDRESSES: Final = 1 << 17


class _DistinctLookup(ABC):
    """The shared contract: address checks, code validation, one lookup per distinct value
    (remembered across calls)."""

    def __init__(self) -> None:
        self._known: dict[str | None, str] = {}

    @abstractmethod
    def _lookup(self, address: str) -> str | None:
        """The database's country code for a canonical public address."""

    def country_of(self, ip: str) -> str | None:
        address = public_address(ip)
        if address is None:
            return None
        code = self._lookup(address)
        return code if is_country(code) else None

    def countries(self, ips: Sequence[str | None]) -> list[str]:
        known = self._known
        distinct = dict.fromkeys(ips)
        if len(known) + len(distinct) > _REMEMBERED_ADDRESSES:
            known.clear()
        for ip in distinct:
            if ip not in known:
                known[ip] = (self.country_of(ip) if ip else None) or UNKNOWN_COUNTRY
        return [known[ip] for ip in ips]


class GeoIP2FastLocator(_DistinctLookup):
    """Country lookup on the database packaged with ``geoip2fast`` (IPv4 and IPv6)."""

    def __init__(self) -> None:
        super().__init__()
        self._database = packaged_database()

    def _lookup(self, address: str) -> str | None:
        # "--" (private or not found) and "" (invalid) fail the code check in country_of.
        code = self._database.lookup(address).country_code
        return code if isinstance(code, str) else None


@functools.cache
def packaged_database() -> Any:
    """geoip2fast's IPv4+IPv6 country database, loaded on first use, once per process.

    Once per process for two reasons: loading unpickles ~800k networks (~0.1 s), and
    geoip2fast keeps the loaded tables in module globals, so a second load would only
    replace the first for every instance.
    """
    geoip2fast = _import_geoip2fast()
    path = Path(geoip2fast.__file__).with_name(_GEOIP2FAST_FILE)
    if not path.is_file():
        raise ConfigurationError(
            f"geoip2fast's data file {path} is missing: reinstall geoip2fast (>= 1.2), or set"
            " SIEVE_GEOIP_DATABASE to a MaxMind-format .mmdb file"
        )
    # An absolute path: given a bare name, geoip2fast would look in the working directory first.
    # It prints its load summary when verbose; keep stdout clean whatever it decides.
    with contextlib.redirect_stdout(io.StringIO()):
        return geoip2fast.GeoIP2Fast(verbose=False, geoip2fast_data_file=str(path))


def _import_geoip2fast() -> Any:
    # Importing geoip2fast sets PYTHONWARNINGS=ignore and PYTHONIOENCODING=utf-8 in
    # os.environ, which every child process (the broker, test subprocesses) would inherit:
    # put the environment back as it was.
    saved = {name: os.environ.get(name) for name in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
    try:
        import geoip2fast
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return geoip2fast


class MaxMindGeoLocator(_DistinctLookup):
    """Country lookup in a MaxMind-format database (``.mmdb``): Country or City editions.

    The file is memory-mapped (C extension when available): opening is instant and the
    pages are shared by every process on the machine.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        try:
            self._reader = maxminddb.open_database(str(path))
        except FileNotFoundError as error:
            raise ConfigurationError(
                f"SIEVE_GEOIP_DATABASE: no such file {path}; unset it to use the packaged database"
            ) from error
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
            raise ConfigurationError(
                f"SIEVE_GEOIP_DATABASE: {path} is not a readable MaxMind database ({error})"
            ) from error
        self.path = path

    def _lookup(self, address: str) -> str | None:
        try:
            record = self._reader.get(address)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None
        if not isinstance(record, Mapping):
            return None
        # The country where the address is used; failing that (satellite, anycast ranges),
        # the country where the network is registered.
        for key in ("country", "registered_country"):
            entry = record.get(key)
            if isinstance(entry, Mapping) and isinstance(entry.get("iso_code"), str):
                return str(entry["iso_code"])
        return None

    def close(self) -> None:
        """Release the memory map (lookups after this fail)."""
        self._reader.close()


def make_geolocator(database: Path | None) -> GeoLocator:
    """The locator for ``Settings.geoip_database``: that .mmdb file, or the packaged database.

    Raises :class:`~streams.errors.ConfigurationError` when the file cannot be used.
    """
    if database is not None:
        return MaxMindGeoLocator(database)
    return GeoIP2FastLocator()
