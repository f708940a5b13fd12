"""``sieve replay``: combined-log parsing against a real log, JSON lines, the command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from schemas.events import Event, Request
from schemas.validate import validate_event_bytes
from streams.replay import (
    ReplayReport,
    describe,
    detect_format,
    parse_combined_line,
    replay_command,
    replay_records,
    run_replay,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "access-log-sample.log"
SAMPLE_LINES = SAMPLE.read_text("utf-8").splitlines()
# Line 8,899 of the upstream file is cut short inside its user agent (no closing quote).
TRUNCATED_LINE = 8_899


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []
        self.closed = False

    def send(self, key: bytes | None, value: bytes) -> None:
        self.records.append((key, value))

    def close(self) -> None:
        self.closed = True


def fields_by_quotes(line: str) -> dict[str, str]:
    """An independent reading of a combined line: split on its quotes and spaces."""
    prefix, request, middle, referrer, _, agent, rest = line.split('"')
    host, ident, user, stamp, offset = prefix.split()
    status, size = middle.split()
    method, target, protocol = request.split(" ")
    assert (ident, user, rest) == ("-", "-", "")
    return {
        "host": host,
        "stamp": f"{stamp[1:]} {offset[:-1]}",
        "method": method,
        "target": target,
        "protocol": protocol,
        "status": status,
        "size": size,
        "referrer": referrer,
        "agent": agent,
    }


@pytest.fixture(scope="module")
def parsed() -> list[Request | None]:
    return [parse_combined_line(line, n) for n, line in enumerate(SAMPLE_LINES, 1)]


def test_the_sample_has_ten_thousand_lines() -> None:
    assert len(SAMPLE_LINES) == 10_000


def test_every_well_formed_line_of_the_real_log_parses(parsed: list[Request | None]) -> None:
    failed = [n for n, event in enumerate(parsed, 1) if event is None]
    assert failed == [TRUNCATED_LINE]
    assert sum(event is not None for event in parsed) == 9_999
    assert SAMPLE_LINES[TRUNCATED_LINE - 1].count('"') == 5  # the sixth quote is missing


def test_parsed_fields_match_the_raw_text(parsed: list[Request | None]) -> None:
    for number, (line, event) in enumerate(zip(SAMPLE_LINES, parsed, strict=True), 1):
        if number == TRUNCATED_LINE:
            continue
        assert event is not None
        raw = fields_by_quotes(line)
        assert event.ip == raw["host"]
        assert event.method == raw["method"]
        assert event.path == raw["target"]
        assert event.status == int(raw["status"])
        assert event.response_bytes == (0 if raw["size"] == "-" else int(raw["size"]))
        assert event.referrer == (None if raw["referrer"] == "-" else raw["referrer"])
        assert event.user_agent == (None if raw["agent"] == "-" else raw["agent"])
        assert event.occurred_at == datetime.strptime(raw["stamp"], "%d/%b/%Y:%H:%M:%S %z")
        assert event.account_id == "replay" and event.user_id is None


def test_spot_checks_against_the_sample(parsed: list[Request | None]) -> None:
    first = parsed[0]
    assert first is not None
    assert first.ip == "83.149.9.216"
    assert first.occurred_at == datetime(2015, 5, 17, 10, 5, 3, tzinfo=UTC)
    assert first.path == "/presentations/logstash-monitorama-2013/images/kibana-search.png"
    assert first.response_bytes == 203_023
    methods = {event.method for event in parsed if event is not None}
    assert methods == {"GET", "HEAD", "POST", "OPTIONS"}
    assert any(event is not None and event.response_bytes == 0 for event in parsed)
    assert any(event is not None and event.user_agent is None for event in parsed)


def test_every_parsed_event_satisfies_the_contract(parsed: list[Request | None]) -> None:
    decoder = msgspec.json.Decoder(Event)
    for event in parsed[::20]:
        if event is None:
            continue
        data = msgspec.json.encode(event)
        assert decoder.decode(data) == event
        assert validate_event_bytes(data) == []


def test_event_ids_are_stable_and_distinct(parsed: list[Request | None]) -> None:
    ids = [event.event_id for event in parsed if event is not None]
    assert len(set(ids)) == len(ids)
    again = parse_combined_line(SAMPLE_LINES[0], 1)
    assert again is not None and again.event_id == ids[0]
    # The same text on another line is another event (a log may repeat a line).
    other = parse_combined_line(SAMPLE_LINES[0], 2)
    assert other is not None and other.event_id != ids[0]


LINE = (
    '2001:db8::1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a%20b?x=1 HTTP/1.0" 200 - '
    '"-" "curl/8.5.0 \\"quoted\\""'
)


def test_offsets_escapes_and_dashes() -> None:
    event = parse_combined_line(LINE, 3, "acc_1")
    assert event is not None
    assert event.occurred_at == datetime(
        2000, 10, 10, 13, 55, 36, tzinfo=timezone(-timedelta(hours=7))
    )
    assert event.occurred_at == datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC)
    assert event.ip == "2001:db8::1"
    assert event.path == "/a%20b?x=1"
    assert event.response_bytes == 0 and event.referrer is None
    assert event.user_agent == 'curl/8.5.0 "quoted"'
    assert event.account_id == "acc_1"


@pytest.mark.parametrize(
    "line",
    [
        LINE.replace("2001:db8::1", "host.example.com"),  # a host name, not an address
        LINE.replace("10/Oct/2000", "10/Okt/2000"),  # not an English month
        LINE.replace("10/Oct/2000", "31/Feb/2000"),  # no such day
        LINE.replace('"GET /a%20b?x=1 HTTP/1.0"', '"-"'),  # a request Apache could not read
        LINE.replace("GET", "get"),
        LINE.replace(" 200 ", " 999 "),  # out of the status range
        LINE[:-1],  # cut short
        LINE.replace("curl/8.5.0", "x" * 3000),  # user agent over the size limit
        "",
        "not a log line at all",
    ],
)
def test_lines_that_do_not_parse(line: str) -> None:
    assert parse_combined_line(line) is None


def test_detect_format() -> None:
    assert detect_format(SAMPLE_LINES[0]) == "combined"
    assert detect_format('  {"type": "request"}') == "jsonl"


def test_json_lines_are_forwarded_as_they_are() -> None:
    lines = [
        '{"type":"login","account_id":"acc_9","schema_version":1}\n',
        "\n",
        '{"type":"login","schema_versi',
        '["not", "an", "object"]\r\n',
    ]
    report = ReplayReport("jsonl")
    out = list(replay_records(lines, "jsonl", report, account_id="fallback"))
    assert [(r.key, r.value) for r in out] == [
        (b"acc_9", b'{"type":"login","account_id":"acc_9","schema_version":1}'),
        (b"fallback", b'{"type":"login","schema_versi'),
        (b"fallback", b'["not", "an", "object"]'),
    ]
    assert (report.lines, report.sent, report.blank, report.unkeyed) == (4, 3, 1, 2)


def test_run_replay_reports_and_closes_the_sink() -> None:
    sink = ListSink()
    report = run_replay(SAMPLE, sink)
    assert sink.closed
    assert report.format == "combined"
    assert (report.lines, report.sent, report.unparsed) == (10_000, 9_999, 1)
    assert report.first_unparsed == [TRUNCATED_LINE]
    assert len(sink.records) == 9_999
    assert {key for key, _ in sink.records} == {b"replay"}
    assert "1 line skipped" in " ".join(describe(report)) and "8899" in " ".join(describe(report))
    # Replaying again sends the very same bytes (same ids: the worker dedups them).
    again = ListSink()
    run_replay(SAMPLE, again)
    assert again.records == sink.records


def test_replay_command_to_a_file_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "replayed.jsonl"
    result = CliRunner().invoke(replay_command, [str(SAMPLE), "--out", str(out), "--account", "a1"])
    assert result.exit_code == 0, result.output
    assert "9,999 sent" in result.output and "8899" in result.output
    values = out.read_bytes().splitlines()
    assert len(values) == 9_999
    decoder = msgspec.json.Decoder(Request)
    assert all(decoder.decode(v).account_id == "a1" for v in values)
    # The JSON-lines output replays to identical values.
    again = tmp_path / "again.jsonl"
    result = CliRunner().invoke(replay_command, [str(out), "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()


def test_gzipped_logs_are_read(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "access.log.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write("\n".join(SAMPLE_LINES[:100]) + "\n")
    sink = ListSink()
    report = run_replay(path, sink)
    assert report.sent == 100 and report.format == "combined"
    plain = ListSink()
    run_replay(SAMPLE, plain)
    assert sink.records == plain.records[:100]


def test_an_invalid_account_is_refused_before_reading(tmp_path: Path) -> None:
    out = tmp_path / "never.jsonl"
    result = CliRunner().invoke(
        replay_command, [str(SAMPLE), "--account", "has space", "--out", str(out)]
    )
    assert result.exit_code == 2 and "--account" in result.output
    assert not out.exists()
