"""``sieve replay``: combined-log parsing against a real log, JSON lines, the command."""

from __future__ import annotations

import codecs
import gzip
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from schemas.bounds import is_backfill
from schemas.decode import decode_batch
from schemas.events import Event, Request
from schemas.validate import validate_event_bytes
from streams.cli import cli
from streams.replay import (
    NotTextError,
    ReplayReport,
    describe,
    detect_format,
    parse_combined_line,
    replay_command,
    replay_records,
    run_replay,
    text_problem,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "access-log-sample.log"
SAMPLE_LINES = SAMPLE.read_text("utf-8").splitlines()
# Line 8,899 of the upstream file is cut short inside its user agent (no closing quote);
# replay still takes it (a truncated line is a served request), with the rest as its agent.
TRUNCATED_LINE = 8_899


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []
        self.headers: list[list[tuple[str, bytes]]] = []
        self.closed = False

    def send(
        self, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> None:
        self.records.append((key, value))
        self.headers.append(list(headers or ()))

    def close(self) -> None:
        self.closed = True


def fields_by_quotes(line: str) -> dict[str, str]:
    """An independent reading of a combined line: split on its quotes and spaces. A line
    cut inside its user agent has one quote fewer: the agent is everything after the last."""
    prefix, request, middle, referrer, _, agent, *tail = line.split('"')
    rest = tail[0] if tail else ""
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


def test_every_line_of_the_real_log_parses(parsed: list[Request | None]) -> None:
    failed = [n for n, event in enumerate(parsed, 1) if event is None]
    assert failed == []
    assert sum(event is not None for event in parsed) == 10_000


def test_the_truncated_line_keeps_the_rest_of_the_line_as_its_agent(
    parsed: list[Request | None],
) -> None:
    line = SAMPLE_LINES[TRUNCATED_LINE - 1]
    # The only line with a quote missing: the sixth, which would close the user agent.
    assert [n for n, text in enumerate(SAMPLE_LINES, 1) if text.count('"') != 6] == [TRUNCATED_LINE]
    assert line.count('"') == 5
    event = parsed[TRUNCATED_LINE - 1]
    assert event is not None
    after_opening_quote = line[line.rindex('"') + 1 :]
    assert event.user_agent == after_opening_quote
    assert (
        event.user_agent
        == "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html"
    )
    assert event.ip == "46.118.127.106" and event.path == "/scripts/grok-py-test/configlib.py"
    assert event.occurred_at == datetime(2015, 5, 20, 12, 5, 17, tzinfo=UTC)


def test_parsed_fields_match_the_raw_text(parsed: list[Request | None]) -> None:
    for line, event in zip(SAMPLE_LINES, parsed, strict=True):
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
        LINE[: LINE.index("frank") + 14],  # cut short inside the timestamp
        LINE[: LINE.index("a%20b")],  # cut short inside the request
        LINE[: LINE.rindex(' "-" ') + 3],  # cut short inside the referrer
        LINE[: LINE.rindex(' "curl')],  # cut short before the user agent begins
        LINE + " extra",  # text after the closing quote
        LINE[:-1] + 'x"y',  # a cut agent with a bare quote in it: malformed, not cut
        LINE.replace('"-" "curl', '"-"  "curl'),  # two spaces between fields
        LINE.replace("curl/8.5.0", "x" * 3000)[:-1],  # a cut agent over the size limit
        LINE.replace("curl/8.5.0", "x" * 3000),  # user agent over the size limit
        "",
        "not a log line at all",
    ],
)
def test_lines_that_do_not_parse(line: str) -> None:
    assert parse_combined_line(line) is None


@pytest.mark.parametrize(
    ("line", "agent"),
    [
        # The closing quote lost: the escaped quote before it stays part of the agent.
        (LINE[:-1], 'curl/8.5.0 "quoted"'),
        (LINE[: LINE.index(" \\")], "curl/8.5.0"),
        (LINE[: LINE.index("8.5.0")], "curl/"),
        (LINE[: LINE.index("8.5.0")] + "  ", "curl/  "),  # the rest of the line, spaces too
        (LINE[: LINE.index("quoted") - 1], "curl/8.5.0 \\"),  # cut after a backslash
        (LINE[: LINE.rindex('"curl') + 1], None),  # only the opening quote: no agent
    ],
)
def test_a_user_agent_cut_off_at_the_end_of_the_line_is_the_rest_of_it(
    line: str, agent: str | None
) -> None:
    event = parse_combined_line(line, 3)
    assert event is not None
    assert event.user_agent == agent
    # Everything before the agent is read as on a complete line; only the id differs.
    complete = parse_combined_line(LINE, 3)
    assert complete is not None
    assert msgspec.structs.replace(event, user_agent=None, event_id="") == msgspec.structs.replace(
        complete, user_agent=None, event_id=""
    )


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
    assert (report.lines, report.sent, report.unparsed) == (10_000, 10_000, 0)
    assert report.first_unparsed == []
    assert len(sink.records) == 10_000
    assert {key for key, _ in sink.records} == {b"replay"}
    assert describe(report) == ["10,000 lines (combined): 10,000 sent"]
    # Replaying again sends the very same bytes (same ids: the worker dedups them).
    again = ListSink()
    run_replay(SAMPLE, again)
    assert again.records == sink.records


def test_unparsed_lines_are_counted_and_named(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    lines = [SAMPLE_LINES[0], "garbage", "", LINE.replace(" 200 ", " 999 "), SAMPLE_LINES[1]]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    sink = ListSink()
    report = run_replay(path, sink, fmt="combined")
    assert (report.lines, report.sent, report.blank, report.unparsed) == (5, 2, 1, 2)
    assert report.first_unparsed == [2, 4]
    assert describe(report)[1:] == [
        "1 line blank, skipped",
        "2 lines skipped, not a valid combined-format request: line 2, 4",
    ]


def test_replay_command_to_a_file_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "replayed.jsonl"
    result = CliRunner().invoke(replay_command, [str(SAMPLE), "--out", str(out), "--account", "a1"])
    assert result.exit_code == 0, result.output
    assert "10,000 sent" in result.output and "skipped" not in result.output
    values = out.read_bytes().splitlines()
    assert len(values) == 10_000
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


# -- replayed records are backfills ----------------------------------------------------------


def test_every_replayed_record_is_marked_as_a_backfill(tmp_path: Path) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text('{"account_id": "acct-1"}\nnot json\n', encoding="utf-8")
    for path in (SAMPLE, jsonl):
        sink = ListSink()
        report = run_replay(path, sink)
        assert report.sent == len(sink.records) > 0
        assert all(is_backfill(headers) for headers in sink.headers)


def test_the_2015_log_is_accepted_whole_as_a_backfill_and_only_as_one() -> None:
    # The worker judges occurred_at against the record's arrival (now, for a replay run
    # today): eleven years back is far past the 400 days of live traffic, well within the
    # 50 years of a backfill.
    report = ReplayReport("combined")
    records = list(replay_records(SAMPLE_LINES, "combined", report))
    values = [record.value for record in records]
    arrival = int(datetime.now(UTC).timestamp() * 1000)
    arrivals = [arrival] * len(values)

    backfill = decode_batch(values, arrivals, [is_backfill(r.headers) for r in records])
    assert backfill.rejections == []
    assert len(backfill.events) == 10_000

    live = decode_batch(values, arrivals, [False] * len(values))
    assert {r.code for r in live.rejections} == {"too_far_behind"}
    assert len(live.rejections) == 10_000


@pytest.mark.parametrize(
    ("target", "stamp"),
    [
        ("/a\x1bb", "17/May/2015:10:05:03 +0000"),  # an escape character in the path
        ("/a", "31/Dec/9999:23:59:59 -2359"),  # year 10000 in UTC
    ],
)
def test_a_line_the_worker_would_reject_is_not_parsed(target: str, stamp: str) -> None:
    line = f'83.149.9.216 - - [{stamp}] "GET {target} HTTP/1.1" 200 10 "-" "curl/8"'
    assert parse_combined_line(line) is None


# -- what replay refuses, and its exit codes (issue 12.3) -------------------------------------

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"


def test_text_problem_finds_nul_bytes_and_lines_that_are_mostly_not_utf8() -> None:
    text = "\n".join(SAMPLE_LINES[:50]).encode("utf-8")
    assert text_problem(text, whole=True) is None
    assert text_problem(PNG_HEAD, whole=True) == "it holds NUL bytes"
    utf16 = codecs.BOM_UTF16_LE + SAMPLE_LINES[0].encode("utf-16-le")
    assert "iconv -f UTF-16 -t UTF-8" in (text_problem(utf16, whole=True) or "")
    latin1 = [f"{n} caf\xe9".encode("latin-1") for n in range(3)]
    ascii_ = [f"{n} cafe".encode() for n in range(2)]
    assert text_problem(b"\n".join(latin1 + ascii_), whole=True) == (
        "3 of its first 5 lines are not UTF-8"
    )
    # A few damaged lines in a log are replayed (and counted), not a reason to refuse it.
    assert text_problem(b"\n".join(latin1[:2] + ascii_ + ascii_), whole=True) is None
    # Blank lines do not count either way.
    assert text_problem(b"\n\n" + b"\n".join(latin1) + b"\n\n\n\n", whole=True) == (
        "3 of its first 3 lines are not UTF-8"
    )


def test_a_sample_cut_inside_a_character_is_still_text() -> None:
    cut = ("caf\u00e9 " * 20).encode("utf-8")[:-2]  # ends inside the last é
    assert text_problem(cut, whole=False) is None
    assert text_problem(cut, whole=True) == "1 of its first 1 lines are not UTF-8"


def _gzipped_bytes(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as out:
        out.write(data)
    return path


# Each case: a file, the exit code, what the message says.
EXIT_CASES = {
    "a log": (lambda p: p.write_text("\n".join(SAMPLE_LINES[:20]) + "\n", "utf-8"), 0, "20 sent"),
    "JSON lines": (lambda p: p.write_text('{"account_id": "a"}\n', "utf-8"), 0, "1 sent"),
    "empty": (lambda p: p.write_bytes(b""), 1, "is empty: nothing was sent"),
    "blank": (lambda p: p.write_text("\n  \n\n", "utf-8"), 1, "only blank lines"),
    "another format": (
        lambda p: p.write_text("2015-05-17 10:05:03 GET /\n" * 5, "utf-8"),
        1,
        "no line of",
    ),
    "an image": (lambda p: p.write_bytes(PNG_HEAD + bytes(range(256)) * 40), 2, "NUL bytes"),
    "not UTF-8": (
        lambda p: p.write_bytes(b"\n".join(bytes([0x80 + n % 64]) * 30 for n in range(500))),
        2,
        "500 of its first 500 lines are not UTF-8",
    ),
    "gzipped binary": (
        lambda p: _gzipped_bytes(p.with_suffix(".gz"), PNG_HEAD * 100),
        2,
        "NUL bytes",
    ),
}


def _input(tmp_path: Path, case: str) -> Path:
    make, _, _ = EXIT_CASES[case]
    path = tmp_path / "input.log"
    made = make(path)
    return made if isinstance(made, Path) else path


@pytest.mark.parametrize("case", sorted(EXIT_CASES))
def test_replay_exit_codes(tmp_path: Path, case: str) -> None:
    _, code, message = EXIT_CASES[case]
    path = _input(tmp_path, case)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["replay", str(path), "--out", str(out)])
    exit_code = getattr(result.exception, "exit_code", result.exit_code)
    assert exit_code == code, result.output
    assert message in (str(result.exception) if code else result.output)
    if code == 2:  # refused before anything was opened for writing
        assert not out.exists()
    elif code == 1:
        assert out.read_bytes() == b""


@pytest.mark.parametrize(("case", "code"), [("empty", 1), ("an image", 2)])
def test_the_command_line_exits_with_the_code(tmp_path: Path, case: str, code: int) -> None:
    path = _input(tmp_path, case)
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", str(path), "--out", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith("sieve: ")


def test_a_binary_file_is_refused_before_kafka_is_asked(tmp_path: Path) -> None:
    # No broker listens at port 1: the refusal must come before the sink is opened.
    path = _input(tmp_path, "an image")
    result = CliRunner().invoke(
        cli, ["replay", str(path)], env={"SIEVE_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    )
    assert isinstance(result.exception, NotTextError)
    assert result.exception.exit_code == 2
    assert "nothing was sent" in str(result.exception)


def test_run_replay_refuses_binary_too(tmp_path: Path) -> None:
    sink = ListSink()
    with pytest.raises(NotTextError):
        run_replay(_input(tmp_path, "an image"), sink)
    assert sink.records == [] and sink.closed
