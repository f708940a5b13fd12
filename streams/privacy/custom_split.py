"""The custom-event part of the split (streams.privacy.split): what the policy's declarations
(streams.privacy.custom_events) let each custom event of a batch keep, as columns.

The facts get the declared name, dimensions and metrics (map columns, null for the other
types: a new property is no new column); the identifiable record the declared identifiable
properties, with the declaration's retention class. Everything else is dropped and counted.
Most batches hold no custom event: then nothing here walks the events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from schemas.columnar_decode import TYPE_CODES
from schemas.events import Custom, Event
from streams.privacy.custom_events import CustomEvents, CustomParts, parts_of

CUSTOM: Final = TYPE_CODES[Custom]
_DIMENSIONS: Final = pa.map_(pa.string(), pa.string())
_METRICS: Final = pa.map_(pa.string(), pa.float64())


@dataclass(frozen=True, slots=True)
class CustomSplit:
    """The custom events of a batch (by event index) and where their properties go."""

    parts: Mapping[int, CustomParts]

    @staticmethod
    def of(events: Sequence[Event], type_codes: pa.Array, custom: CustomEvents) -> CustomSplit:
        is_custom = pc.equal(type_codes, CUSTOM)
        if not pc.any(is_custom).as_py():
            return _NONE
        rows = pc.indices_nonzero(is_custom).to_pylist()
        customs: list[Custom] = [events[i] for i in rows]
        return CustomSplit(
            {
                index: parts_of(custom, event.name, event.properties)
                for index, event in zip(rows, customs, strict=True)
            }
        )

    @property
    def dropped(self) -> int:
        """Properties kept nowhere: undeclared, declared dropped, or not of their kind."""
        return sum(parts.dropped for parts in self.parts.values())

    def facts_columns(self, count: int) -> dict[str, pa.Array]:
        """``event_name``, ``dimensions`` and ``metrics`` of the ``count`` events."""
        if not self.parts:
            return {
                "event_name": pa.nulls(count, pa.string()),
                "dimensions": pa.nulls(count, _DIMENSIONS),
                "metrics": pa.nulls(count, _METRICS),
            }
        names: list[str | None] = [None] * count
        dimensions: list[list[tuple[str, str]] | None] = [None] * count
        metrics: list[list[tuple[str, float]] | None] = [None] * count
        for index, parts in self.parts.items():
            names[index] = parts.declared_name
            dimensions[index] = parts.dimensions
            metrics[index] = parts.metrics
        return {
            "event_name": pa.array(names, pa.string()),
            "dimensions": pa.array(dimensions, _DIMENSIONS),
            "metrics": pa.array(metrics, _METRICS),
        }

    def classes(self, event_class: pa.Array, class_names: Sequence[str]) -> pa.Array:
        """The class code of each event: its type's (``event_class``), or for a custom
        event its declaration's retention class where it names one."""
        declared = {i: p.retention_class for i, p in self.parts.items() if p.retention_class}
        if not declared:
            return event_class
        code = {name: i for i, name in enumerate(class_names)}
        patched = event_class.to_pylist()
        for index, class_name in declared.items():
            patched[index] = code[class_name]
        return pa.array(patched, pa.int8())

    def record_properties(self, index: int, event: Event) -> dict[str, object]:
        """What a custom event's identifiable record holds: its name and its declared
        identifiable properties only."""
        return {"name": event.name, "properties": self.parts[index].identifiable}  # type: ignore[union-attr]


_NONE: Final = CustomSplit({})
