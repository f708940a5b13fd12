"""One batch of a partition as the worker's stages see it: its records, their events and the
events' fields as Arrow columns, all aligned.

Stages read columns by name and add theirs (:meth:`Batch.with_columns`); a stage that drops
events (dedup) narrows everything at once (:meth:`Batch.select`), so no column can fall out
of step with the events or the records they came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING

import pyarrow as pa

from schemas.events import Event

if TYPE_CHECKING:
    from streams.worker.pipeline import KafkaRecord


@dataclass(frozen=True, slots=True)
class Batch:
    """Aligned records, events and columns (by name: the decoder's envelope columns, then
    what each stage added). Immutable: stages return a new one."""

    records: Sequence[KafkaRecord]
    events: Sequence[Event]
    type_codes: pa.Array  # int8: the position of each event's type in EVENT_TYPES
    columns: Mapping[str, pa.Array]

    def __post_init__(self) -> None:
        count = len(self.events)
        lengths = {"records": len(self.records), "type_codes": len(self.type_codes)}
        lengths.update({name: len(column) for name, column in self.columns.items()})
        misaligned = {name: length for name, length in lengths.items() if length != count}
        if misaligned:
            raise ValueError(f"batch columns not aligned with its {count} events: {misaligned}")

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, name: str) -> pa.Array:
        return self.columns[name]

    def select(self, mask: Sequence[bool]) -> Batch:
        """The events where ``mask`` is True, with their records and columns."""
        if all(mask):
            return self
        flags = pa.array(mask, pa.bool_())
        return Batch(
            records=list(compress(self.records, mask)),
            events=list(compress(self.events, mask)),
            type_codes=self.type_codes.filter(flags),
            columns={name: column.filter(flags) for name, column in self.columns.items()},
        )

    def with_columns(self, **columns: pa.Array) -> Batch:
        """This batch with ``columns`` added (or replaced)."""
        return Batch(self.records, self.events, self.type_codes, {**self.columns, **columns})
