"""Access requests: everything Sieve holds about one person, decrypted, as JSON lines.

"Everything held" is every identifiable record whose account (and user, when one is named)
matches, in every class, region and date, including files of ranges a worker has not
committed yet; and, when asked (it reads the whole dead-letter topic), the dead letters
whose content names the person. Anonymized facts and published aggregates are not part of
an export: they hold no user id, and the per-day subject keys in the facts cannot be
matched to a person without the pseudonymization key (see :mod:`streams.subject.erasure`).

Dead letters are raw bytes. One is about a person when it names both the person's account
id and user id (only the account id for a whole account): as exact string values when the
value is JSON (header values count too), as whole tokens in the raw bytes and headers when
it is not (a cut or garbled message). Both ids are required because user ids are only
unique within an account, and an export must never hand one person another's data; an
erasure searches more broadly (:func:`mentions`).

Temporary files (:mod:`streams.subject.identifiable_store`): a worker's are read too (an
uncommitted range is still data held) and the ones that cannot be read yet are named in the
summary; the leftovers of killed sweeps and erasures are copies of rows that are still in
the files they copy, so they are counted, not exported twice (the next sweep or erasure
deletes them).

Dead letters are any bytes a producer sent: every function here takes any value, key and
headers without raising (nesting deeper than the interpreter's recursion limit included).

Nothing is written or changed; the functions are safe to run at any time and repeat.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Final

import pyarrow as pa
import pyarrow.fs as pafs

from schemas.arrow import IDENTIFIABLE
from streams.encryption import ParquetEncryption
from streams.errors import ConfigurationError, TransientError
from streams.kafka_clients import kafka_consumer
from streams.subject.identifiable_store import (
    IdentifiableFile,
    Subject,
    list_files,
    read_in_flight,
    read_rows,
    subject_mask,
)

# Characters that continue an id in raw text: a match must not be part of a longer token
# ("acct-1" is not "acct-10").
_TOKEN_CHARS: Final = rb"A-Za-z0-9_\-"
_POLL_MS: Final = 500


@dataclass(frozen=True, slots=True)
class DeadLetterTopic:
    """Where the dead letters are: bootstrap servers and topic name."""

    bootstrap_servers: str
    topic: str
    timeout_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """The latest version of one dead letter (one key) on the topic."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class ExportSummary:
    """What an export held: identifiable rows by retention class, and dead letters."""

    subject: Subject
    rows_by_class: dict[str, int]
    dead_letters: int | None  # None: the dead-letter topic was not searched

    @property
    def rows(self) -> int:
        return sum(self.rows_by_class.values())


class SubjectTables:
    """The subject's rows, one table per file that holds any (the path gives no account, so
    every file is read); after iterating, what could not be read is in the attributes."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        root: str,
        encryption: ParquetEncryption,
        subject: Subject,
    ) -> None:
        self._filesystem, self._root = filesystem, root
        self._encryption, self._subject = encryption, subject
        # Worker temporary files not readable yet (relative paths): a write in progress.
        self.in_flight_unreadable: list[str] = []
        # Copies left by killed sweeps and erasures (their rows are in the originals).
        self.leftover_copies = 0

    def __iter__(self) -> Iterator[pa.Table]:
        listing = list_files(self._filesystem, self._root)
        self.leftover_copies = len(listing.leftovers)
        self.in_flight_unreadable = []
        for file in listing.files:
            try:
                rows = read_rows(self._filesystem, file, self._encryption)
            except FileNotFoundError:
                continue  # deleted since it was listed (a sweep, or a worker's recovery)
            yield from self._matching(rows, file)
        for file in listing.in_flight:
            in_flight = read_in_flight(self._filesystem, file, self._encryption)
            if in_flight is None:
                self.in_flight_unreadable.append(file.relative_path)
            else:
                yield from self._matching(in_flight, file)

    def _matching(self, rows: pa.Table, file: IdentifiableFile) -> Iterator[pa.Table]:
        matching = rows.filter(subject_mask(rows, self._subject, file.dataset))
        if matching.num_rows:
            yield matching


def iter_subject_tables(
    filesystem: pafs.FileSystem, root: str, encryption: ParquetEncryption, subject: Subject
) -> SubjectTables:
    """The subject's rows, one table per file that holds any: see :class:`SubjectTables`."""
    return SubjectTables(filesystem, root, encryption, subject)


@dataclass(frozen=True)
class SubjectExport:
    """Everything held about one person: identifiable rows and (if searched) dead letters."""

    subject: Subject
    rows: pa.Table  # IDENTIFIABLE schema, ordered by event time then event id
    dead_letters: list[DeadLetterRecord] | None  # None: the topic was not searched

    @property
    def rows_by_class(self) -> dict[str, int]:
        return dict(sorted(Counter(self.rows["retention_class"].to_pylist()).items()))


def export_subject(
    filesystem: pafs.FileSystem,
    root: str,
    encryption: ParquetEncryption,
    account_id: str,
    user_id: str | None = None,
    *,
    dead_letters: DeadLetterTopic | None = None,
) -> SubjectExport:
    """Every identifiable row about the person, plus their dead letters when ``dead_letters``
    names the topic. ``user_id`` None exports the whole account (all its users' rows)."""
    subject = Subject(account_id, user_id)
    tables = list(iter_subject_tables(filesystem, root, encryption, subject))
    rows = (
        pa.concat_tables(tables).sort_by([("occurred_at", "ascending"), ("event_id", "ascending")])
        if tables
        else IDENTIFIABLE.empty_table()
    )
    letters = None if dead_letters is None else find_dead_letters(dead_letters, subject)
    return SubjectExport(subject=subject, rows=rows, dead_letters=letters)


def write_export(
    tables: Iterable[pa.Table],
    dead_letters: Sequence[DeadLetterRecord] | None,
    subject: Subject,
    out: IO[str],
) -> ExportSummary:
    """Write the export as JSON lines: one line per record, then one summary line.

    Record lines carry ``"kind": "identifiable"`` (the row, with ``properties`` parsed) or
    ``"kind": "dead_letter"`` (the value as text, or base64 when it is not UTF-8). When
    ``tables`` is a :class:`SubjectTables`, the summary also names what was not read.
    """
    by_class: Counter[str] = Counter()
    for table in tables:
        for row in table.to_pylist():
            by_class[row["retention_class"]] += 1
            out.write(_row_line(row))
    for letter in dead_letters or ():
        out.write(_json_line({"kind": "dead_letter", **dead_letter_document(letter)}))
    summary = ExportSummary(
        subject=subject,
        rows_by_class=dict(sorted(by_class.items())),
        dead_letters=None if dead_letters is None else len(dead_letters),
    )
    out.write(
        _json_line(
            {
                "kind": "summary",
                "account_id": subject.account_id,
                "user_id": subject.user_id,
                "identifiable_rows_by_class": summary.rows_by_class,
                "dead_letters": summary.dead_letters,
                **(
                    {
                        "in_flight_unreadable": tables.in_flight_unreadable,
                        "leftover_copies": tables.leftover_copies,
                    }
                    if isinstance(tables, SubjectTables)
                    else {}
                ),
            }
        )
    )
    return summary


# --- dead letters ---------------------------------------------------------------------------


def mentions(
    value: bytes, headers: Sequence[tuple[str, bytes]], subject: Subject, *, broad: bool = False
) -> bool:
    """Whether a dead letter names ``subject`` (see the module docstring for the rule).

    ``broad`` (erasure) also accepts the ids as tokens inside a JSON value's longer strings
    (``"/users/user-1"``): erasing one letter too many is harmless, exporting one is not.
    """
    ids = [subject.account_id] if subject.user_id is None else [subject.account_id, subject.user_id]
    strings = _json_strings(value)
    header_values = [data for _, data in headers]
    if strings is not None:
        strings.update(data.decode("utf-8", "replace") for data in header_values)
        if all(i in strings for i in ids):
            return True
        if not broad:
            return False
    # Not JSON (cut, or not text at all), or a broad search: the ids as whole tokens in the
    # raw bytes and the header values.
    haystack = b"\n".join([value, *header_values])
    return all(_token(i).search(haystack) is not None for i in ids)


def read_dead_letters(source: DeadLetterTopic) -> list[DeadLetterRecord]:
    """The latest version of every key on the topic, read to its end at the time of the call.

    This is what compaction converges to: a key whose latest version is a tombstone is gone.
    Raises :class:`ConfigurationError` if the topic does not exist, :class:`TransientError`
    if the broker cannot be reached or the read does not finish within the timeout.
    """
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = kafka_consumer(
            bootstrap_servers=source.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=int(source.timeout_seconds * 1000),
        )
    except KafkaError as error:
        raise TransientError(f"cannot reach Kafka at {source.bootstrap_servers}: {error}") from None
    try:
        partitions = consumer.partitions_for_topic(source.topic)
        if not partitions:
            raise ConfigurationError(f"dead-letter topic {source.topic!r} does not exist")
        assigned = [TopicPartition(source.topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        ends = consumer.end_offsets(assigned)
        latest: dict[bytes, DeadLetterRecord | None] = {}
        # A timeout, not a decision about data: the one clock read allowed below the CLI.
        deadline = time.monotonic() + source.timeout_seconds
        pending = {tp for tp in assigned if ends[tp] > 0}
        while pending:
            if time.monotonic() > deadline:
                raise TransientError(
                    f"reading dead-letter topic {source.topic!r} did not finish in"
                    f" {source.timeout_seconds:g} s"
                )
            for tp, records in consumer.poll(timeout_ms=_POLL_MS).items():
                for record in records:
                    if record.offset >= ends[tp] or record.key is None:
                        # Past the snapshot; or keyless (a compacted topic rejects those).
                        continue
                    latest[record.key] = dead_letter_of(
                        record.partition,
                        record.offset,
                        record.timestamp,
                        record.key,
                        record.value,
                        record.headers,
                    )
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        return sorted(
            (letter for letter in latest.values() if letter is not None),
            key=lambda letter: (letter.partition, letter.offset),
        )
    except KafkaError as error:
        raise TransientError(
            f"reading dead-letter topic {source.topic!r} failed: {error}"
        ) from None
    finally:
        consumer.close()


def dead_letter_of(
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
) -> DeadLetterRecord | None:
    """One consumed record as a dead letter (pure); None for a tombstone (a null value)."""
    if value is None:
        return None
    return DeadLetterRecord(
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        key=key,
        value=value,
        headers=tuple((name, data or b"") for name, data in headers or ()),
    )


def find_dead_letters(
    source: DeadLetterTopic, subject: Subject, *, broad: bool = False
) -> list[DeadLetterRecord]:
    """The current dead letters that name ``subject`` (``broad``: see :func:`mentions`)."""
    return [
        letter
        for letter in read_dead_letters(source)
        if mentions(letter.value, letter.headers, subject, broad=broad)
    ]


# --- helpers --------------------------------------------------------------------------------


def _json_strings(value: bytes) -> set[str] | None:
    try:
        document = json.loads(value)
    except (ValueError, RecursionError):
        # RecursionError: nested deeper than the interpreter's limit (a hostile producer can
        # send that in a few KB). Searched as raw bytes then, like a cut message.
        return None
    strings: set[str] = set()
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings.add(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return strings


def _token(identifier: str) -> re.Pattern[bytes]:
    escaped = re.escape(identifier.encode())
    return re.compile(
        rb"(?<![" + _TOKEN_CHARS + rb"])" + escaped + rb"(?![" + _TOKEN_CHARS + rb"])"
    )


def _row_line(row: dict[str, Any]) -> str:
    document = {"kind": "identifiable", **{name: _plain(value) for name, value in row.items()}}
    # Unparseable properties are exported as the stored text.
    with contextlib.suppress(TypeError, ValueError, RecursionError):
        document["properties"] = json.loads(row["properties"])
    try:
        return _json_line(document)
    except RecursionError:  # parsed, but too deep to write back: the stored text
        return _json_line({**document, "properties": row["properties"]})


def dead_letter_document(letter: DeadLetterRecord) -> dict[str, Any]:
    """A dead letter as an export line shows it (pure; any bytes and headers)."""
    return {
        "key": _text(letter.key),
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp": _instant(letter.timestamp_ms),
        # A list, not an object: a header name may repeat, and an export omits nothing.
        "headers": [[name, _text(data)] for name, data in letter.headers],
        "value": _text(letter.value),
    }


def _instant(timestamp_ms: int) -> str | int:
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return timestamp_ms  # outside what a datetime holds (-1: no timestamp): as sent


def _text(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


# Characters JSON leaves unescaped that line readers (``str.splitlines``, JavaScript) take
# for line breaks: escaped, so one record is always one line.
_LINE_BREAKS: Final = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _json_line(document: dict[str, Any]) -> str:
    text = json.dumps(document, ensure_ascii=False, sort_keys=False)
    return text.translate(_LINE_BREAKS) + "\n"
