"""IP -> country: the packaged geoip2fast database, a MaxMind .mmdb, client geo first."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from streams.enrich.geo import (
    UNKNOWN_COUNTRY,
    GeoIP2FastLocator,
    GeoLocator,
    MaxMindGeoLocator,
    make_geolocator,
    public_address,
    resolve_countries,
)
from streams.errors import ConfigurationError

REPO = Path(__file__).resolve().parent.parent.parent

# Checked against the packaged database (GeoLite2 country data of 2024-06-18) and stable for
# years: Google Public DNS, MaxMind's own documentation address, RIPE NCC, NIC.br.
KNOWN = [
    ("8.8.8.8", "US"),
    ("81.2.69.142", "GB"),
    ("193.0.6.139", "NL"),
    ("200.160.2.3", "BR"),
    ("2001:4860:4860::8888", "US"),
    ("2001:67c:2e8:22::c100:68b", "NL"),
    ("::ffff:8.8.8.8", "US"),  # IPv4-mapped: looked up as 8.8.8.8
]
NOWHERE = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "100.64.0.1",  # shared address space (carrier-grade NAT)
    "169.254.1.1",
    "192.0.2.1",  # documentation
    "224.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "2001:db8::1",
    "::8.8.8.8",  # deprecated IPv4-compatible form: geoip2fast alone would say US
    "not-an-ip",
    "8.8.8.8.8",
    "",
]


@pytest.fixture(scope="module")
def packaged() -> GeoLocator:
    return make_geolocator(None)


@pytest.mark.parametrize(("ip", "country"), KNOWN)
def test_packaged_database_knows_public_addresses(
    packaged: GeoLocator, ip: str, country: str
) -> None:
    assert packaged.country_of(ip) == country


@pytest.mark.parametrize("ip", NOWHERE)
def test_private_reserved_and_invalid_addresses_have_no_country(
    packaged: GeoLocator, ip: str
) -> None:
    assert packaged.country_of(ip) is None
    assert packaged.countries([ip]) == [UNKNOWN_COUNTRY]


def test_countries_keeps_order_and_maps_none_to_zz(packaged: GeoLocator) -> None:
    ips = [None, "8.8.8.8", "10.0.0.1", "193.0.6.139", None, "8.8.8.8", "::1"]
    assert packaged.countries(ips) == ["ZZ", "US", "ZZ", "NL", "ZZ", "US", "ZZ"]
    assert packaged.countries([]) == []


def test_countries_looks_up_each_distinct_address_once(monkeypatch: pytest.MonkeyPatch) -> None:
    locator = GeoIP2FastLocator()
    seen: list[str] = []
    lookup: Callable[[str], str | None] = locator._lookup

    def counting(address: str) -> str | None:
        seen.append(address)
        return lookup(address)

    monkeypatch.setattr(locator, "_lookup", counting)
    batch = ["8.8.8.8"] * 5_000 + ["193.0.6.139"] * 5_000 + ["10.0.0.1", None]
    assert locator.countries(batch) == ["US"] * 5_000 + ["NL"] * 5_000 + ["ZZ", "ZZ"]
    assert sorted(seen) == ["193.0.6.139", "8.8.8.8"]  # private ones never reach the database


def test_public_address_is_canonical() -> None:
    assert public_address("2001:4860:4860:0:0:0:0:8888") == "2001:4860:4860::8888"
    assert public_address("::ffff:193.0.6.139") == "193.0.6.139"
    assert public_address("192.168.0.1") is None


def test_packaged_database_is_loaded_once_per_process() -> None:
    first, second = GeoIP2FastLocator(), GeoIP2FastLocator()
    assert first._database is second._database


def test_loading_prints_nothing_and_leaves_the_environment_alone() -> None:
    # A fresh interpreter, so the load really happens (and geoip2fast is really imported).
    script = (
        "import json, os\n"
        "from streams.enrich.geo import make_geolocator\n"
        "locator = make_geolocator(None)\n"
        "countries = locator.countries(['8.8.8.8', '2001:4860:4860::8888', 'bad', None])\n"
        "print(json.dumps([countries, os.environ.get('PYTHONWARNINGS'),"
        " os.environ.get('PYTHONIOENCODING')]))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    # The only line on stdout is the script's own.
    assert json.loads(done.stdout) == [["US", "US", "ZZ", "ZZ"], None, None]
    assert done.stderr == ""


# --- client geolocation wins ------------------------------------------------------------------


def test_client_country_wins_over_the_ip(packaged: GeoLocator) -> None:
    client = ["DE", None, "ZZ", None, "FR", None]
    ips = ["8.8.8.8", "8.8.8.8", "193.0.6.139", None, None, "10.0.0.1"]
    assert resolve_countries(client, ips, packaged) == ["DE", "US", "NL", "ZZ", "FR", "ZZ"]


def test_resolve_countries_only_looks_up_events_without_client_country() -> None:
    class Recording:
        def __init__(self) -> None:
            self.asked: list[str | None] = []

        def country_of(self, ip: str) -> str | None:
            return "US"

        def countries(self, ips: Sequence[str | None]) -> list[str]:
            self.asked.extend(ips)
            return ["US"] * len(ips)

    locator = Recording()
    assert resolve_countries(["DE", None, "FR"], ["1.1.1.1", "2.2.2.2", "3.3.3.3"], locator) == [
        "DE",
        "US",
        "FR",
    ]
    assert locator.asked == ["2.2.2.2"]


def test_resolve_countries_rejects_misaligned_columns(packaged: GeoLocator) -> None:
    with pytest.raises(ValueError, match="2 client countries for 1 addresses"):
        resolve_countries(["DE", None], ["8.8.8.8"], packaged)


# --- MaxMind .mmdb ------------------------------------------------------------------------------
# maxminddb reads but cannot write; a minimal writer of the MaxMind DB format (spec:
# https://maxmind.github.io/MaxMind-DB/) gives a real file to read, with 24-bit records.


def _control(kind: int, size: int) -> bytes:
    assert size < 29
    return bytes([kind << 5 | size]) if kind <= 7 else bytes([size, kind - 7])


def _uint(kind: int, value: int) -> bytes:
    payload = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _control(kind, len(payload)) + payload


def _utf8(text: str) -> bytes:
    return _control(2, len(text.encode())) + text.encode()


def _map(entries: Mapping[str, bytes]) -> bytes:
    return _control(7, len(entries)) + b"".join(_utf8(k) + v for k, v in entries.items())


def _array(items: Sequence[bytes]) -> bytes:
    return _control(11, len(items)) + b"".join(items)


def _write_mmdb(path: Path, networks: Mapping[str, bytes], ip_version: int = 6) -> None:
    """Writes ``networks`` (CIDR -> encoded record); IPv4 networks go under ::/96."""
    bits = 128 if ip_version == 6 else 32
    data = b""
    nodes: list[list[tuple[str, int] | None]] = [[None, None]]
    for cidr, record in networks.items():
        network = ipaddress.ip_network(cidr)
        offset, data = len(data), data + record
        value, prefix = int(network.network_address), network.prefixlen
        if network.version == 4 and ip_version == 6:
            prefix += 96
        node = 0
        for depth in range(prefix):
            # ::a.b.c.d has the IPv4 address's integer value: one rule fits both families.
            bit = value >> (bits - 1 - depth) & 1
            if depth == prefix - 1:
                nodes[node][bit] = ("data", offset)
                break
            child = nodes[node][bit]
            if child is None:
                nodes.append([None, None])
                nodes[node][bit] = ("node", len(nodes) - 1)
                node = len(nodes) - 1
            else:
                assert child[0] == "node"
                node = child[1]
    count = len(nodes)

    def record_value(entry: tuple[str, int] | None) -> int:
        if entry is None:
            return count  # no data
        kind, index = entry
        return index if kind == "node" else count + 16 + index

    tree = b"".join(
        record_value(left).to_bytes(3, "big") + record_value(right).to_bytes(3, "big")
        for left, right in nodes
    )
    metadata = _map(
        {
            "node_count": _uint(6, count),
            "record_size": _uint(5, 24),
            "ip_version": _uint(5, ip_version),
            "database_type": _utf8("Sieve-Test-Country"),
            "languages": _array([_utf8("en")]),
            "binary_format_major_version": _uint(5, 2),
            "binary_format_minor_version": _uint(5, 0),
            "build_epoch": _uint(9, 1_700_000_000),
            "description": _map({"en": _utf8("tiny test database")}),
        }
    )
    path.write_bytes(tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + metadata)


def _country(iso_code: str, key: str = "country") -> bytes:
    return _map({key: _map({"iso_code": _utf8(iso_code), "geoname_id": _uint(6, 1)})})


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.mmdb"
    _write_mmdb(
        path,
        {
            "203.0.113.0/24": _country("JP"),  # documentation range: never looked up
            "8.8.8.0/24": _country("CA"),
            "1.2.3.0/24": _country("AU", key="registered_country"),
            "9.9.9.0/24": _map({"city": _map({"geoname_id": _uint(6, 7)})}),  # no country
            "2a00:1450::/32": _country("IE"),
        },
    )
    return path


def test_maxmind_locator_reads_country_and_registered_country(mmdb: Path) -> None:
    locator = make_geolocator(mmdb)
    assert isinstance(locator, MaxMindGeoLocator)
    assert locator.country_of("8.8.8.8") == "CA"  # this file, not the packaged database
    assert locator.country_of("::ffff:8.8.8.8") == "CA"
    assert locator.country_of("1.2.3.4") == "AU"
    assert locator.country_of("2a00:1450:4001::1") == "IE"
    assert locator.country_of("9.9.9.9") is None
    assert locator.country_of("4.4.4.4") is None
    assert locator.country_of("203.0.113.7") is None
    assert locator.countries(["8.8.8.8", None, "10.0.0.1", "1.2.3.4"]) == ["CA", "ZZ", "ZZ", "AU"]
    locator.close()


def test_maxmind_ipv4_only_database_answers_zz_for_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "v4.mmdb"
    _write_mmdb(path, {"8.8.8.0/24": _country("CA")}, ip_version=4)
    locator = MaxMindGeoLocator(path)
    assert locator.countries(["8.8.8.8", "2001:4860:4860::8888"]) == ["CA", "ZZ"]


def test_missing_database_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SIEVE_GEOIP_DATABASE: no such file"):
        make_geolocator(tmp_path / "absent.mmdb")


def test_unreadable_database_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(ConfigurationError, match="is not a readable MaxMind database"):
        make_geolocator(path)
