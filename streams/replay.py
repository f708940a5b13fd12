"""``sieve replay FILE``: feed an Apache access log or JSON lines to the raw topic.

Combined log format (Apache/nginx ``combined``)::

    host ident user [dd/Mon/yyyy:HH:MM:SS +zzzz] "METHOD target PROTO" status bytes "ref" "agent"

Each line becomes one ``request`` event of account ``--account`` (no user, no session).
A line cut off inside its last field, the user agent, still counts (the rest of the line is
the agent); any other malformation skips the line.
Its ``event_id`` is a UUID5 of the line number and the line's text, so replaying the same
file again produces the same ids and the worker's dedup drops the second copy.
A line that does not parse into a valid event is counted and skipped; the summary shows
how many and the first line numbers.

JSON lines are forwarded as they are (one value per line, as ``sieve generate --out``
writes): checking them is the worker's job, and a line the contract rejects ends up in
the dead-letter topic with its reason rather than vanishing here. The key is the line's
``account_id`` when it has one, else ``--account``.

A file that is not text (NUL bytes, or most of its first lines not UTF-8: an image, an
archive, UTF-16) is refused before anything is sent, and a replay that sends nothing (an
empty file, a log in another format) exits with a non-zero code: either would otherwise
look like a replay that worked.

Every record carries the Kafka header ``sieve.backfill: 1`` (``schemas.events.
BACKFILL_HEADER``): a replayed log is old by nature (the sample in ``tests/data`` is from
2015), and the worker then allows ``occurred_at`` up to SIEVE_BACKFILL_MAX_BEHIND (50 years)
before the record's arrival instead of SIEVE_EVENT_MAX_BEHIND (400 days).
"""

from __future__ import annotations

import codecs
import gzip
import ipaddress
import re
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Final, Literal, cast

import click
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from schemas.events import BACKFILL_HEADER, MAX_USER_AGENT_BYTES, Identifier, Request, encode
from schemas.validate import passes_post_decode_checks
from streams.errors import ConfigurationError, SieveError
from streams.generate.sinks import CREATE_TOPIC_HELP, RawSink, open_sink
from streams.settings import Settings, reads_settings

Format = Literal["combined", "jsonl"]
DEFAULT_ACCOUNT: Final = "replay"
CLIENT_ID: Final = "sieve-replay"
# Fixed forever: changing it would change every replayed event id.
REPLAY_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:sieve:replay")
# How many unparsed line numbers the summary lists.
SHOWN_BAD_LINES: Final = 10
# How much of a file (decompressed) is read to tell text from binary (git decides on 8,000
# bytes; a few hundred log lines are a fairer sample of "most lines").
SNIFF_BYTES: Final = 65_536
_UTF16_BOMS: Final = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class NotTextError(ConfigurationError):
    """The file is not text replay can read; nothing was sent (exit code 2)."""


class NothingSentError(SieveError):
    """The replay sent no record: the file is empty, blank, or no line parsed (exit code 1)."""


def _quoted(name: str) -> str:
    # A quoted field may contain \" and \\ (Apache escapes them). Written as an unrolled
    # loop, several times faster than the obvious (?:[^"\\]|\\.)*.
    return rf'"(?P<{name}>[^"\\]*(?:\\.[^"\\]*)*)"'


_COMBINED: Final = re.compile(
    r"^(?P<host>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "
    + _quoted("request")
    + r" (?P<status>\d{3}) (?P<bytes>\d+|-) "
    + _quoted("referrer")
    # The user agent, the last field, may be cut off at the end of the line (no closing
    # quote): a server that died mid-write or a log shipper's line limit truncates the line,
    # but the request it records was still served, and dropping it would undercount traffic
    # (issue: the 10,000-line sample must replay to 10,000 requests). Only the final field
    # gets this leniency, so a stray quote anywhere else still rejects the line; the cut
    # agent holds no unescaped quote (that would be a malformed line, not a truncated one),
    # and a cut right after a backslash keeps that backslash. A backslash before a final
    # quote is read as Apache's escape (it writes a literal backslash as two), so that line
    # is a cut one whose agent ends in a quote.
    + r' "(?P<agent>[^"\\]*(?:\\.[^"\\]*)*\\?)(?:"\s*)?$'
)
_REQUEST_LINE: Final = re.compile(
    r"^(?P<method>[A-Z]{3,10}) (?P<target>\S+)(?: HTTP/\d(?:\.\d)?)?$"
)
_TIME: Final = re.compile(
    r"^(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})$"
)
# Month names are English whatever the locale (strptime's %b would follow the locale).
_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}
_UNESCAPE: Final = re.compile(r"\\([\\\"])")


def _unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


def _parse_time(text: str) -> datetime | None:
    match = _TIME.match(text)
    if match is None:
        return None
    day, month_name, year, hour, minute, second, sign, off_h, off_m = match.groups()
    month = _MONTHS.get(month_name)
    if month is None:
        return None
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(
            int(year), month, int(day), int(hour), int(minute), int(second),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )  # fmt: skip
    except ValueError:  # 31/Feb, an offset of 24 hours or more
        return None


def replay_event_id(line_number: int, line: str) -> str:
    """The id of the event of ``line`` (1-based ``line_number``): same line, same id."""
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{line_number}\n{line}"))


def parse_combined_line(
    line: str, line_number: int = 1, account_id: str = DEFAULT_ACCOUNT
) -> Request | None:
    """The ``request`` event of one combined-format line, or None if it does not parse.

    None also when a field breaks the contract (the host is not an IP address, a field is
    over its length limit), so every event returned passes the worker's validation.
    ``response_bytes`` "-" is 0; referrer and user agent "-" (or empty) are absent. A user
    agent cut off at the end of the line (no closing quote) is the rest of the line: the
    truncated line still records a served request.
    """
    line = line.rstrip("\r\n")
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no event can carry it
            return None
    match = _COMBINED.match(line)
    if match is None:
        return None
    request = _REQUEST_LINE.match(_unescape(match["request"]))
    occurred_at = _parse_time(match["time"])
    host = match["host"]
    if request is None or occurred_at is None or not _is_ip(host):
        return None
    referrer = _unescape(match["referrer"])
    agent = _unescape(match["agent"])
    if agent and len(agent.encode("utf-8")) > MAX_USER_AGENT_BYTES:
        return None
    doc: dict[str, Any] = {
        "type": "request",
        "schema_version": 1,
        "event_id": replay_event_id(line_number, line),
        "occurred_at": occurred_at,
        "account_id": account_id,
        "ip": host,
        "method": request["method"],
        "path": request["target"],
        "status": int(match["status"]),
        "response_bytes": 0 if match["bytes"] == "-" else int(match["bytes"]),
    }
    if referrer not in ("", "-"):
        doc["referrer"] = referrer
    if agent not in ("", "-"):
        doc["user_agent"] = agent
    try:
        # convert() checks every constraint msgspec knows; the constructor checks none.
        event = msgspec.convert(doc, Request)
    except msgspec.ValidationError:
        return None
    # And the contract's checks beyond msgspec (control characters, an instant that exists
    # in UTC), so that the worker never dead-letters what replay sent as parsed.
    return event if passes_post_decode_checks(event) else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def detect_format(first_line: str) -> Format:
    """JSON lines start with an object; anything else is taken for a combined log."""
    return "jsonl" if first_line.lstrip().startswith("{") else "combined"


@dataclass
class ReplayReport:
    """What a replay did with each line of the file."""

    format: Format
    lines: int = 0
    sent: int = 0
    blank: int = 0
    unparsed: int = 0
    first_unparsed: list[int] = field(default_factory=list)
    # JSON lines only: lines forwarded although they are not a JSON object with an
    # account_id (keyed by --account; the worker dead-letters what is invalid).
    unkeyed: int = 0


# The headers of every replayed record: each is a backfill.
BACKFILL_HEADERS: Final = ((BACKFILL_HEADER, b"1"),)


@dataclass(frozen=True, slots=True)
class RawRecord:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = BACKFILL_HEADERS


_JSON_DECODER: Final = msgspec.json.Decoder()


def _jsonl_key(line: bytes) -> bytes | None:
    """The line's account_id as a key, or None if it is not a JSON object with one."""
    try:
        doc = _JSON_DECODER.decode(line)
    except msgspec.DecodeError:
        return None
    account = doc.get("account_id") if isinstance(doc, dict) else None
    return account.encode("utf-8") if isinstance(account, str) and account else None


def replay_records(
    lines: Iterable[str], fmt: Format, report: ReplayReport, account_id: str = DEFAULT_ACCOUNT
) -> Iterator[RawRecord]:
    """The records of ``lines`` (1-based numbering), counting into ``report``. Pure."""
    default_key = account_id.encode("utf-8")
    for number, line in enumerate(lines, 1):
        report.lines += 1
        text = line.rstrip("\r\n")
        if not text.strip():
            report.blank += 1
            continue
        if fmt == "jsonl":
            # surrogatepass: a lone surrogate goes on as the bytes it stands for (invalid
            # UTF-8), for the worker to dead-letter; the files replay reads never hold one.
            value = text.encode("utf-8", "surrogatepass")
            key = _jsonl_key(value)
            if key is None:
                report.unkeyed += 1
                key = default_key
            report.sent += 1
            yield RawRecord(key, value)
            continue
        event = parse_combined_line(text, number, account_id)
        if event is None:
            report.unparsed += 1
            if len(report.first_unparsed) < SHOWN_BAD_LINES:
                report.first_unparsed.append(number)
            continue
        report.sent += 1
        yield RawRecord(default_key, encode(event))


def _open_text(path: Path) -> IO[str]:
    # Rotated logs are usually gzipped. Undecodable bytes become U+FFFD instead of
    # aborting the replay: a combined line then usually fails to parse and is counted;
    # a JSON line is forwarded with the replacement characters (valid UTF-8 from then on).
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("r", encoding="utf-8", errors="replace", newline="")


def _first_content_line(path: Path) -> str:
    with _open_text(path) as text:
        for line in text:
            if line.strip():
                return line
    return ""


def text_problem(head: bytes, whole: bool) -> str | None:
    """Why ``head``, the first bytes of a file (``whole``: all of it), is not text replay
    can read, or None if it is. Pure.

    Not text: a NUL byte (no log or JSON line holds one; UTF-16 text is full of them), or
    more than half of the non-blank lines not UTF-8. A few bad lines are a log's ordinary
    damage: they are replayed (and counted) as the rest.
    """
    if b"\0" in head:
        if head.startswith(_UTF16_BOMS):
            return "it is UTF-16 text; convert it first: iconv -f UTF-16 -t UTF-8"
        return "it holds NUL bytes"
    lines = head.split(b"\n")
    # The sample may end inside a line, even inside a character: that line is checked only
    # as far as it goes (an incremental decoder accepts a character cut at the end).
    last = None if whole else lines.pop()
    content = [line for line in lines if line.strip()]
    bad = sum(not _is_utf8(line) for line in content)
    if last is not None and last.strip():
        content.append(last)
        bad += not _is_utf8(last, complete=False)
    if content and bad * 2 > len(content):
        return f"{bad:,} of its first {len(content):,} lines are not UTF-8"
    return None


def _is_utf8(line: bytes, *, complete: bool = True) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(line, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def refuse_binary(path: Path) -> None:
    """Raise :class:`NotTextError` if ``path`` (decompressed if it ends in .gz) is not text,
    ``ConfigurationError`` if it cannot be read."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as raw:
            head = raw.read(SNIFF_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ConfigurationError(f"cannot read {path}: {error}") from error
    problem = text_problem(head[:SNIFF_BYTES], whole=len(head) <= SNIFF_BYTES)
    if problem is not None:
        raise NotTextError(
            f"{path} is not text ({problem}); replay reads an Apache/nginx combined access"
            " log or JSON lines, in UTF-8 (gzipped if the name ends in .gz): nothing was sent"
        )


def nothing_sent(path: Path, report: ReplayReport) -> NothingSentError:
    """The error of a replay of ``path`` that sent nothing, saying why."""
    if report.lines == 0:
        why = f"{path} is empty"
    elif report.blank == report.lines:
        why = f"{path} holds only blank lines"
    else:
        why = (
            f"no line of {path} is a valid combined-format request (another log format? JSON"
            " lines start with '{')"
        )
    return NothingSentError(f"{why}: nothing was sent")


def run_replay(
    path: Path,
    sink: RawSink,
    *,
    fmt: Format | None = None,
    account_id: str = DEFAULT_ACCOUNT,
    console: Console | None = None,
) -> ReplayReport:
    """Replay ``path`` into ``sink`` (closed at the end, even on error); ``fmt`` None
    detects the format from the first non-blank line. A file that is not text raises
    :class:`NotTextError` before anything is sent."""
    with ExitStack() as stack:
        stack.callback(sink.close)
        refuse_binary(path)
        try:
            chosen = fmt or detect_format(_first_content_line(path))
            text = stack.enter_context(_open_text(path))
        except OSError as error:
            raise ConfigurationError(f"cannot read {path}: {error}") from error
        report = ReplayReport(chosen)
        lines: Iterable[str] = text
        if console is not None:
            progress = stack.enter_context(
                Progress(
                    TextColumn(f"[bold]replay {path.name}"),
                    BarColumn(),
                    DownloadColumn(),
                    TaskProgressColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                )
            )
            # Progress in characters read, against the file size: exact for ASCII logs,
            # indeterminate for gzipped ones (the size on disk is not the text's).
            total = None if path.suffix == ".gz" else path.stat().st_size
            lines = _tracked(text, progress, total)
        send = sink.send
        for record in replay_records(lines, chosen, report, account_id):
            send(record.key, record.value, record.headers)
    return report


def _tracked(lines: Iterable[str], progress: Progress, total: int | None) -> Iterator[str]:
    task = progress.add_task("replay", total=total)
    done = 0
    for number, line in enumerate(lines, 1):
        done += len(line)
        # Redrawing per line would cost more than parsing it.
        if number % 2_000 == 0:
            progress.update(task, completed=done)
        yield line
    progress.update(task, completed=done, total=total or done)


def _lines(n: int) -> str:
    return f"{n:,} line" if n == 1 else f"{n:,} lines"


def describe(report: ReplayReport) -> list[str]:
    """The summary lines a person reads after a replay."""
    lines = [f"{report.lines:,} lines ({report.format}): {report.sent:,} sent"]
    if report.blank:
        lines.append(f"{_lines(report.blank)} blank, skipped")
    if report.unparsed:
        shown = ", ".join(str(n) for n in report.first_unparsed)
        more = ", ..." if report.unparsed > len(report.first_unparsed) else ""
        lines.append(
            f"{_lines(report.unparsed)} skipped, not a valid combined-format request: "
            f"line {shown}{more}"
        )
    if report.unkeyed:
        lines.append(
            f"{_lines(report.unkeyed)} had no account_id (not a JSON object, or none in it): "
            "sent keyed by --account; the worker will dead-letter the invalid ones"
        )
    return lines


@reads_settings("bootstrap_servers", "raw_topic", "raw_partitions", "raw_retention_hours")
@click.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "combined", "jsonl"]),
    default="auto",
    show_default=True,
    help="Input format; auto looks at the first non-blank line ('{' means JSON lines).",
)
@click.option(
    "--account",
    default=DEFAULT_ACCOUNT,
    show_default=True,
    help="Account id of the replayed requests (and key of JSON lines without one).",
)
@click.option("--topic", help="Topic to produce to (it must exist); default: SIEVE_RAW_TOPIC.")
@click.option("--create-topic", is_flag=True, help=CREATE_TOPIC_HELP)
@click.option(
    "--out",
    "out_path",
    metavar="FILE",
    help="Write the records as JSON lines instead of producing; '-': stdout.",
)
def replay_command(
    file: Path,
    fmt: str,
    account: str,
    topic: str | None,
    create_topic: bool,
    out_path: str | None,
) -> None:
    """Send each line of FILE to the raw topic: an Apache/nginx combined access log
    (each line a `request` event) or JSON lines (forwarded as they are).

    Event ids derive from the line number and text, so replaying a file twice yields the
    same ids. Exit codes: 1 when nothing was sent (an empty file, no line parsed), 2 when
    FILE is not text (NUL bytes, most lines not UTF-8: nothing is sent).
    """
    try:
        msgspec.convert(account, Identifier)
    except msgspec.ValidationError as bad:
        # Caught here: otherwise every line would fail to parse, for a reason not in it.
        raise click.BadParameter(f"not a valid account id: {bad}", param_hint="--account") from bad
    console = Console(stderr=out_path == "-")
    settings = cast(Callable[[], Settings], Settings)()
    topic = topic or settings.raw_topic
    refuse_binary(file)  # before the sink: no topic is created, no output file written
    sink, where = open_sink(out_path, settings, topic, CLIENT_ID, create_topic=create_topic)
    console.print(f"replaying {file} -> {where}")
    chosen: Format | None = None if fmt == "auto" else cast(Format, fmt)
    report = run_replay(file, sink, fmt=chosen, account_id=account, console=console)
    for line in describe(report):
        console.print(line)
    if report.sent == 0:
        raise nothing_sent(file, report)
