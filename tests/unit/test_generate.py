"""The traffic model: determinism, exact truth, shares, and the realism rules it promises."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import statistics
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from schemas.decode import decode_batch
from schemas.events import (
    AccountLifecycle,
    Event,
    Login,
    Logout,
    Payment,
    Upload,
)
from schemas.validate import validate_event_bytes
from streams.errors import ConfigurationError
from streams.generate import (
    MALFORMED_REASONS,
    MIN_LATENESS,
    GeneratedRecord,
    TrafficConfig,
    TrafficModel,
    load_user_agents,
    tally,
    write_jsonl,
)
from streams.generate.commands import generate, resolve_period
from streams.generate.model import MAX_DUPLICATE_DISTANCE
from streams.generate.places import COUNTRIES, AddressPool
from streams.generate.sinks import TokenBucket

START = datetime(2025, 3, 1, tzinfo=UTC)
END = START + timedelta(days=30)
COUNT = 20_000
AGENTS = load_user_agents()
DECODER = msgspec.json.Decoder(Event)


def config(**overrides: object) -> TrafficConfig:
    values: dict[str, object] = {
        "count": COUNT,
        "start": START,
        "end": END,
        "user_agents": AGENTS,
        "seed": 1,
    }
    values.update(overrides)
    return TrafficConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> TrafficModel:
    return TrafficModel(config())


@pytest.fixture(scope="module")
def records(model: TrafficModel) -> list[GeneratedRecord]:
    return list(model)


def valid(records: list[GeneratedRecord]) -> list[GeneratedRecord]:
    return [r for r in records if r.kind == "event"]


def type_of(event: Event) -> str:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(records: list[GeneratedRecord]) -> None:
    again = list(TrafficModel(config()))
    assert [(r.key, r.value, r.kind) for r in again] == [(r.key, r.value, r.kind) for r in records]


def test_iterating_a_model_twice_restarts_from_the_seed() -> None:
    model = TrafficModel(config(count=2_000))
    first = [r.value for r in model]
    truth = model.truth.as_dict()
    assert [r.value for r in model] == first
    assert model.truth.as_dict() == truth  # counted afresh, not accumulated


def test_another_seed_gives_other_traffic(records: list[GeneratedRecord]) -> None:
    other = list(TrafficModel(config(seed=2)))
    assert len(other) == len(records)
    assert not {r.value for r in other} & {r.value for r in records}
    assert {r.key for r in other}.isdisjoint({r.key for r in records})  # other account ids


# --- exact ground truth ----------------------------------------------------------------------


def test_truth_counts_every_record_exactly(
    model: TrafficModel, records: list[GeneratedRecord]
) -> None:
    truth = model.truth
    assert truth.records == len(records) == COUNT
    # The kinds' sizes are exact, not sampled.
    assert truth.by_kind == {"event": 19_700, "duplicate": 200, "malformed": 100}
    # Recount independently: from the decoded bytes, not from the generator's labels.
    decoded = decode_batch([r.value for r in records])
    seen: set[str] = set()
    events: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    for event in decoded.events:
        if event is None:
            continue
        (duplicates if event.event_id in seen else events)[type_of(event)] += 1
        seen.add(event.event_id)
    assert {k: v for k, v in truth.events_by_type.items() if v} == dict(events)
    assert {k: v for k, v in truth.duplicates_by_type.items() if v} == dict(duplicates)
    reasons = Counter(rejection.code for rejection in decoded.rejections)
    assert {k: v for k, v in truth.malformed_by_reason.items() if v} == dict(reasons)
    assert tally(records).as_dict() == {
        **truth.as_dict(),
        "accounts": 0,
        "users": 0,
        "sessions": 0,
    }


def test_population_counts(model: TrafficModel, records: list[GeneratedRecord]) -> None:
    events = [r.event for r in valid(records)]
    assert model.truth.sessions == sum(isinstance(e, Login) for e in events)
    assert model.truth.accounts == len({e.account_id for e in events if e is not None})
    assert model.truth.users == len({e.user_id for e in events if e and e.user_id})


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 31, 150])
def test_tiny_counts_are_exact(count: int) -> None:
    model = TrafficModel(config(count=count, duplicate_share=0.2, malformed_share=0.3))
    out = list(model)
    assert len(out) == count == model.truth.records
    for record in out:
        if record.kind != "malformed":
            DECODER.decode(record.value)


# --- shares --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duplicates", "late", "malformed"), [(0.01, 0.01, 0.005), (0.05, 0.1, 0.02), (0, 0, 0)]
)
def test_shares_are_respected(duplicates: float, late: float, malformed: float) -> None:
    model = TrafficModel(
        config(duplicate_share=duplicates, late_share=late, malformed_share=malformed)
    )
    out = list(model)
    kinds = Counter(r.kind for r in out)
    assert kinds["duplicate"] == round(COUNT * duplicates)
    assert kinds["malformed"] == round(COUNT * malformed)
    late_events = sum(r.late for r in out if r.kind == "event")
    assert late_events == model.truth.late_events
    # Late is a per-event coin (minus the stream's last hours, which cannot be late).
    assert late * 0.8 * kinds["event"] <= late_events <= late * 1.2 * kinds["event"]
    reasons = Counter(r.malformed_reason for r in out if r.kind == "malformed")
    if malformed:
        # Each reason has a fair share (1/7 of 400 ~ 57).
        assert set(reasons) == set(MALFORMED_REASONS)
        assert min(reasons.values()) > 0.5 * kinds["malformed"] / len(MALFORMED_REASONS)


def test_malformed_records_are_spread_over_the_stream(records: list[GeneratedRecord]) -> None:
    positions = [i for i, r in enumerate(records) if r.kind == "malformed"]
    quarters = Counter(4 * p // len(records) for p in positions)
    assert all(15 <= quarters[q] <= 35 for q in range(4)), quarters


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        config(end=START)
    with pytest.raises(ConfigurationError):
        config(start=START.replace(tzinfo=None))
    with pytest.raises(ConfigurationError):
        config(malformed_share=0.6)
    with pytest.raises(ConfigurationError):
        config(user_agents=())


# --- contract ------------------------------------------------------------------------------


def test_every_valid_event_decodes_to_itself(records: list[GeneratedRecord]) -> None:
    for record in records:
        if record.kind == "malformed":
            continue
        decoded = DECODER.decode(record.value)
        assert decoded == record.event
        assert record.key == decoded.account_id.encode()
        if decoded.ip is not None:
            ipaddress.ip_address(decoded.ip)


def test_valid_events_pass_the_full_validator(records: list[GeneratedRecord]) -> None:
    # The JSON Schema validator is slow: every type, every 10th event.
    sample = valid(records)[::10]
    assert {type_of(r.event) for r in sample if r.event} >= {"request", "login", "upload"}
    for record in sample:
        assert validate_event_bytes(record.value) == [], record.value


def test_every_malformed_record_breaks_exactly_its_rule(records: list[GeneratedRecord]) -> None:
    malformed = [r for r in records if r.kind == "malformed"]
    assert malformed
    for record in malformed:
        problems = validate_event_bytes(record.value)
        assert [p.code for p in problems] == [record.malformed_reason], record.value
        if record.malformed_reason == "invalid_ip":
            # msgspec cannot see a bad address (checked after decoding): the IP must.
            ip = DECODER.decode(record.value).ip
            with pytest.raises(ValueError):
                ipaddress.ip_address(ip or "")
        else:
            with pytest.raises(msgspec.DecodeError):
                DECODER.decode(record.value)


def test_malformed_records_never_reuse_a_valid_event_id(records: list[GeneratedRecord]) -> None:
    ids = {r.event.event_id for r in records if r.event is not None}
    for record in records:
        if record.kind == "malformed":
            found = re.search(rb'"event_id":"([0-9a-f-]{36})"', record.value)
            assert found is None or found[1].decode() not in ids


# --- time ----------------------------------------------------------------------------------


def test_events_stay_in_the_period(records: list[GeneratedRecord]) -> None:
    for record in valid(records):
        assert record.event is not None
        assert START <= record.event.occurred_at < END


def test_stream_is_in_event_time_order_except_late_events(
    records: list[GeneratedRecord],
) -> None:
    position: datetime | None = None
    late = 0
    for record in valid(records):
        assert record.event is not None
        at = record.event.occurred_at
        if record.late:
            # The rule: a late event arrives when the stream is >= MIN_LATENESS past it.
            assert position is not None and position - at >= MIN_LATENESS
            late += 1
        else:
            assert position is None or at >= position
            position = at
    assert late > 100


def test_duplicates_repeat_a_recent_original_byte_for_byte(
    records: list[GeneratedRecord],
) -> None:
    last_seen: dict[bytes, int] = {}
    for i, record in enumerate(records):
        if record.kind == "duplicate":
            assert record.value in last_seen
            # Within MAX_DUPLICATE_DISTANCE records, plus any duplicates queued meanwhile.
            assert i - last_seen[record.value] <= MAX_DUPLICATE_DISTANCE + 3
        elif record.kind == "event":
            assert record.value not in last_seen  # an original is sent once
            last_seen[record.value] = i
    ids = [r.event.event_id for r in valid(records) if r.event]
    assert len(ids) == len(set(ids))


def test_diurnal_rhythm_in_local_time(records: list[GeneratedRecord]) -> None:
    # The country of a login's address gives its local time (a user travelling abroad
    # keeps the rhythm of the account's country, so this is slightly blurred).
    blocks = [
        (ipaddress.ip_network(net), country.utc_offset_minutes)
        for country in COUNTRIES
        for net in country.ipv4 + country.ipv6
    ]

    def offset_of(ip: str) -> int:
        address = ipaddress.ip_address(ip)
        return next(off for net, off in blocks if address in net)

    by_local_hour: Counter[int] = Counter()
    for record in valid(records):
        if isinstance(record.event, Login) and record.event.ip:
            utc = record.event.occurred_at.astimezone(UTC)
            local = utc + timedelta(minutes=offset_of(record.event.ip))
            by_local_hour[local.hour] += 1
    afternoon = sum(by_local_hour[h] for h in range(12, 18))
    night = sum(by_local_hour[h] for h in range(0, 6))
    assert afternoon > 2.5 * night, sorted(by_local_hour.items())


# --- shape of the traffic ------------------------------------------------------------------


def test_account_sizes_are_zipf_skewed(records: list[GeneratedRecord]) -> None:
    per_account = Counter(r.key for r in valid(records))
    sizes = sorted(per_account.values())
    assert max(sizes) >= 20 * statistics.median(sizes)
    # And the head is not a single whale: the second-largest is big too.
    assert sizes[-2] >= 5 * statistics.median(sizes)


def test_sessions_are_consistent(records: list[GeneratedRecord]) -> None:
    sessions: dict[str, list[Event]] = defaultdict(list)
    for record in valid(records):
        if record.event is not None and record.event.session_id is not None:
            sessions[record.event.session_id].append(record.event)
    with_logout = 0
    for events in sessions.values():
        logins = [e for e in events if isinstance(e, Login)]
        logouts = [e for e in events if isinstance(e, Logout)]
        assert len(logins) == 1 and len(logouts) <= 1
        login = logins[0]
        # One person, one browser, one address for the whole session.
        assert {(e.user_id, e.account_id, e.ip, e.user_agent) for e in events} == {
            (login.user_id, login.account_id, login.ip, login.user_agent)
        }
        for event in events:
            assert event.occurred_at >= login.occurred_at
        if logouts:
            with_logout += 1
            logout = logouts[0]
            assert logout.occurred_at >= max(e.occurred_at for e in events)
            # Exact, not approximate: both stamps are whole microseconds.
            assert logout.session_duration_s == (
                (logout.occurred_at - login.occurred_at).total_seconds()
            )
    assert 0.7 * len(sessions) < with_logout < len(sessions)


def test_account_lifecycle(records: list[GeneratedRecord]) -> None:
    by_account: dict[str, list[Event]] = defaultdict(list)
    for record in valid(records):
        assert record.event is not None
        by_account[record.event.account_id].append(record.event)
    ended = 0
    for events in by_account.values():
        events.sort(key=lambda e: e.occurred_at)
        first = events[0]
        assert isinstance(first, AccountLifecycle) and first.action == "registered"
        assert first.user_id is None
        actions = [e.action for e in events if isinstance(e, AccountLifecycle)]
        assert actions.count("registered") == 1
        if "disabled" in actions or "terminated" in actions:
            ended += 1
            # Nothing but lifecycle after the account ends.
            end_index = next(
                i
                for i, e in enumerate(events)
                if isinstance(e, AccountLifecycle) and e.action != "registered"
            )
            assert all(isinstance(e, AccountLifecycle) for e in events[end_index:])
        if "terminated" in actions:
            assert actions[-1] == "terminated"
    assert ended >= 1


def test_payments_carry_no_card_data(records: list[GeneratedRecord]) -> None:
    payments = [r for r in valid(records) if isinstance(r.event, Payment)]
    assert payments
    for record in payments:
        event = record.event
        assert isinstance(event, Payment)
        assert event.provider in ("stripe", "paypal")
        assert re.fullmatch(r"-?\d+(\.\d\d)?", event.amount)
        assert event.ip is None and event.user_agent is None and event.user_id is None
        assert not re.search(rb"\d{13,19}", record.value)  # nothing shaped like a card number
    assert len({p.event.currency for p in payments if isinstance(p.event, Payment)}) >= 3


def test_upload_sizes_are_heavy_tailed(records: list[GeneratedRecord]) -> None:
    uploads = [r.event for r in valid(records) if isinstance(r.event, Upload)]
    sizes = [u.bytes for u in uploads]
    assert max(sizes) > 100 * statistics.median(sizes)
    assert statistics.mean(sizes) > 3 * statistics.median(sizes)
    types = Counter(u.content_type for u in uploads)
    assert types.most_common(1)[0][0] == "image/jpeg" and "video/mp4" in types


def test_addresses_user_agents_and_privacy_signals(records: list[GeneratedRecord]) -> None:
    events = [r.event for r in valid(records) if r.event is not None]
    ips = {e.ip for e in events if e.ip}
    v6 = sum(ipaddress.ip_address(ip).version == 6 for ip in ips)
    assert 0.15 < v6 / len(ips) < 0.5
    assert all(ipaddress.ip_address(ip).is_global for ip in ips)
    agents = {e.user_agent for e in events if e.user_agent}
    assert agents <= set(AGENTS) and len(agents) > 100
    with_user = [e for e in events if e.user_id]
    dnt = sum(e.dnt for e in with_user) / len(with_user)
    gpc = sum(e.gpc for e in with_user) / len(with_user)
    assert 0.005 < dnt < 0.25 and 0.002 < gpc < 0.15
    geo = [e.geo for e in events if e.geo is not None]
    assert 0.03 * len(with_user) < len(geo) < 0.2 * len(with_user)
    offsets = {e.occurred_at.utcoffset() for e in events}
    assert len(offsets) > 3  # some clients stamp their local offset


def test_country_blocks_map_to_their_country_offline() -> None:
    from geoip2fast import GeoIP2Fast

    geoip = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz")
    rng = random.Random(0)
    wrong = []
    for country in COUNTRIES:
        pool = AddressPool.of(country)
        for ipv6 in (False, True):
            for _ in range(40):
                ip = pool.pick(rng, ipv6=ipv6)
                found = geoip.lookup(ip).country_code
                if found != country.code:
                    wrong.append((country.code, ip, found))
    assert wrong == []
    assert len(COUNTRIES) >= 25


def test_generated_addresses_span_many_countries(records: list[GeneratedRecord]) -> None:
    from geoip2fast import GeoIP2Fast

    geoip = GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz")
    ips = sorted({r.event.ip for r in valid(records) if r.event and r.event.ip})
    countries = Counter(geoip.lookup(ip).country_code for ip in ips)
    assert "--" not in countries
    assert len(countries) >= 20
    assert countries.most_common(1)[0][0] == "US"


# --- adapters ------------------------------------------------------------------------------


def test_jsonl_writer_writes_one_value_per_line(
    records: list[GeneratedRecord], tmp_path: Path
) -> None:
    path = tmp_path / "out.jsonl"
    with path.open("wb") as out:
        assert write_jsonl(records[:500], out) == 500
    assert path.read_bytes().split(b"\n") == [r.value for r in records[:500]] + [b""]


def test_generate_command_writes_the_model_and_its_truth(tmp_path: Path) -> None:
    out, truth = tmp_path / "traffic.jsonl", tmp_path / "truth.json"
    result = CliRunner().invoke(
        generate,
        ["--count", "3000", "--seed", "7", "--start", "2025-03-01", "--days", "30",
         "--out", str(out), "--truth-json", str(truth)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = TrafficModel(config(count=3_000, seed=7))
    expected = list(model)
    assert out.read_bytes() == b"".join(r.value + b"\n" for r in expected)
    written = json.loads(truth.read_text())
    assert {k: written[k] for k in model.truth.as_dict()} == model.truth.as_dict()
    assert written["records_per_s"] > 0
    assert "malformed" in result.output and "3,000 records" in result.output


def test_default_period_is_the_last_30_days_to_the_current_hour() -> None:
    now = datetime(2025, 6, 10, 14, 37, 12, 5, tzinfo=UTC)
    start, end = resolve_period(None, None, None, now)
    assert end == datetime(2025, 6, 10, 14, tzinfo=UTC)
    assert end - start == timedelta(days=30)
    start, end = resolve_period(START, None, 2, now)
    assert (start, end) == (START, START + timedelta(days=2))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def test_token_bucket_paces_to_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000, clock=clock.time, sleep=clock.sleep)
    for _ in range(5_100):
        bucket.take()
    # 5,100 calls at 1,000/s after a 100-call burst allowance: 5 seconds of waiting.
    assert clock.now == pytest.approx(5.0, rel=1e-6)


def test_event_ids_are_the_seeded_uuid4s() -> None:
    from streams.generate.activity import new_event_id

    ours, reference = random.Random(3), random.Random(3)
    for _ in range(1_000):
        expected = uuid.UUID(int=reference.getrandbits(128), version=4)
        assert new_event_id(ours) == str(expected)


def test_short_ids_are_the_draws_of_random_choices() -> None:
    from streams.generate.catalog import _ALNUM, short_id

    ours, reference = random.Random(5), random.Random(5)
    for _ in range(1_000):
        assert short_id(ours) == "".join(reference.choices(_ALNUM, k=10))


@pytest.mark.parametrize("offset_minutes", [0, 330, -300, 600, 765])
def test_event_times_are_the_instant_in_the_clients_offset(offset_minutes: int) -> None:
    from datetime import timezone

    from streams.generate.activity import to_datetime

    tz = timezone(timedelta(minutes=offset_minutes))
    rng = random.Random(offset_minutes)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(1_000):
        t_us = rng.randrange(1 << 51)
        at = to_datetime(t_us, tz)
        expected = (epoch + timedelta(microseconds=t_us)).astimezone(tz)
        assert at == expected and at.utcoffset() == expected.utcoffset()
        assert at.isoformat() == expected.isoformat()


def test_events_carry_no_placeholder_of_their_templates(records: list[GeneratedRecord]) -> None:
    # Every event is a copy of a per-type prototype with all its fields replaced.
    for record in valid(records):
        doc = msgspec.to_builtins(record.event)
        assert doc["event_id"] != "-" and doc["account_id"] != "-"
        assert doc["occurred_at"] != "1970-01-01T00:00:00Z"


def test_a_failing_check_stops_generation_and_closes_the_sink() -> None:
    from streams.generate.commands import PROGRESS_EVERY, run_generate

    class Stop(Exception):
        pass

    class ListSink:
        def __init__(self) -> None:
            self.values: list[bytes] = []
            self.closed = False

        def send(self, key: bytes | None, value: bytes, headers: object = None) -> None:
            self.values.append(value)

        def close(self) -> None:
            self.closed = True

    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Stop

    sink = ListSink()
    with pytest.raises(Stop):
        run_generate(config(count=5 * PROGRESS_EVERY), sink, check=check)
    assert calls == 2 and sink.closed
    # Checked every PROGRESS_EVERY records: nothing was sent after the failed check.
    assert len(sink.values) == 2 * PROGRESS_EVERY
