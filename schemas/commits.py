"""Commit markers: the record that one offset range of one input partition is fully written.

A range's output files count only once its marker exists (docs/architecture.md, "Exactly
once"). Readers of the datasets (aggregations, the retention sweep) list committed files
through :func:`committed_files`, never by globbing data folders, so they never see a range
that a crashed worker left half written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

import msgspec
import pyarrow.fs as pafs

COMMITS_DIR: Final = "_commits"
_MARKER_NAME = re.compile(r"^(\d{20})-(\d{20})\.json$")


class RangeCounts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What became of each raw message of the range: raw = accepted + duplicates + dead-lettered."""

    raw: int
    accepted: int
    duplicates: int
    dead_lettered: dict[str, int]  # by reason code
    identifiable: dict[str, int]  # records by retention class
    facts: int
    bytes_written: int


class CommitMarker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One committed offset range [first_offset, last_offset] of topic/partition."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    files: list[str]  # paths relative to the data root
    counts: RangeCounts
    # Max event hour (ISO 8601, UTC) of accepted events in the partition after this range.
    watermark: str | None
    # Consent state changes of the range: [pseudonymous consent key, "opt_out"|"opt_in"|...].
    consent_changes: list[tuple[str, str]]
    sieve_version: str


def output_stem(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """The file stem every output of a range carries: ``<topic>+<partition>+<first>-<last>``."""
    return f"{topic}+{partition}+{first_offset}-{last_offset}"


def marker_path(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{COMMITS_DIR}/{topic}/{partition}/{first_offset:020d}-{last_offset:020d}.json"


def encode_marker(marker: CommitMarker) -> bytes:
    return msgspec.json.encode(marker)


def decode_marker(data: bytes) -> CommitMarker:
    return msgspec.json.decode(data, type=CommitMarker)


def iter_markers(
    filesystem: pafs.FileSystem, root: str, topic: str | None = None, partition: int | None = None
) -> Iterator[CommitMarker]:
    """Every commit marker under ``root`` (optionally of one topic / partition), in offset order."""
    base = f"{root.rstrip('/')}/{COMMITS_DIR}"
    if topic is not None:
        base += f"/{topic}"
        if partition is not None:
            base += f"/{partition}"
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = [
        info
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File and _MARKER_NAME.match(info.base_name)
    ]
    infos.sort(key=lambda info: (info.path.rsplit("/", 2)[-3:-1], info.base_name))
    for info in infos:
        with filesystem.open_input_stream(info.path) as stream:
            yield decode_marker(stream.read())


def committed_files(
    filesystem: pafs.FileSystem, root: str, dataset: str | None = None
) -> list[str]:
    """Relative paths of every committed output file, optionally of one dataset (first folder)."""
    files = []
    for marker in iter_markers(filesystem, root):
        for path in marker.files:
            if dataset is None or path.split("/", 1)[0] == dataset:
                files.append(path)
    return files
