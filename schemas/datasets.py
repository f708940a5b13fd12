"""Every file dataset the worker writes, declared once: name, folder, schema (with its
version), partitioning, encryption and retention handling. The published datasets are
declared with the same type where they are written (aggregations.schemas).

The code that handles the worker's outputs iterates over :data:`WORKER_DATASETS` instead of
naming them: the sink plans a range's files and conforms its tables, recovery walks their
folders, compaction merges them (encrypting again where the declaration says so), and the
subject tools reach every dataset whose retention is per person (:data:`PERSONAL_DATASETS`).

A dataset's files live at ``<folder>/<key>=<value>/.../<stem>.parquet`` (hive partitioning,
:attr:`Dataset.partition_keys` in folder order). The key ``date`` is the UTC date of the
dataset's :attr:`Dataset.date_column`; every other key is a column of the same name.

The dead letters are a topic, not files: :data:`DEAD_LETTERS` (schemas.topic_datasets).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Final

import pyarrow as pa

from schemas.arrow import FACTS, IDENTIFIABLE
from schemas.topic_datasets import DEAD_LETTERS, TopicDataset

__all__ = [  # the topic dataset is declared apart: settings read it without pyarrow
    "DATE_KEY",
    "DEAD_LETTERS",
    "FACTS_DATASET",
    "IDENTIFIABLE_DATASET",
    "PERSONAL_DATASETS",
    "WORKER_DATASETS",
    "Dataset",
    "Retention",
    "TopicDataset",
    "dataset_of",
]

DATE_KEY: Final = "date"


class Retention(enum.Enum):
    """What happens to a dataset's rows over time."""

    # Rows about a person: each carries its expiry (``expires_at``, or its account's end);
    # the retention sweep deletes them when it passes, and access and erasure requests
    # reach every file, committed or not (streams.subject).
    PER_PERSON = "per_person"
    # Anonymous rows, nothing about a person to expire: kept (facts feed the published
    # aggregates and invoices; those are published to stay).
    KEPT = "kept"


@dataclass(frozen=True)
class Dataset:
    """One dataset Sieve writes (module docstring)."""

    name: str
    folder: str  # under the data root
    schema: pa.Schema  # carries ``sieve.dataset`` and ``sieve.schema_version``
    partition_keys: tuple[str, ...]
    date_column: str  # the column whose UTC date is the ``date`` key
    encrypted: bool  # Parquet modular encryption with the keyring's active key
    retention: Retention
    # The column whose values break the dataset's rows down in a range's commit marker
    # (schemas.commits.OutputCounts.by); None: the marker counts its rows only.
    count_by: str | None = None
    # What the subject tools (streams.subject) read of a personal dataset: the columns that
    # name the person a row is about (account, then user: a null user is the account's
    # own row), and the column of each row's expiry (null: until its account ends).
    subject_columns: tuple[str, str] | None = None
    expiry_column: str | None = None

    def __post_init__(self) -> None:
        if self.personal and (self.subject_columns is None or self.expiry_column is None):
            raise ValueError(
                f"dataset {self.name!r}: a per-person dataset declares its subject and expiry"
                " columns (the subject tools find and expire a person's rows by them)"
            )

    @property
    def version(self) -> str:
        return (self.schema.metadata or {})[b"sieve.schema_version"].decode()

    @property
    def personal(self) -> bool:
        return self.retention is Retention.PER_PERSON

    def holds(self, relative_path: str) -> bool:
        """Whether a path relative to the data root is under this dataset's folder."""
        return relative_path.startswith(f"{self.folder}/")

    def file_path(self, values: Mapping[str, str], stem: str) -> str:
        """The relative path of a file of the partition ``values`` (every partition key)."""
        folders = "/".join(f"{key}={values[key]}" for key in self.partition_keys)
        return f"{self.folder}/{folders}/{stem}.parquet"

    def partition_of(self, relative_path: str) -> dict[str, str] | None:
        """The partition values a file's path names; None when it does not follow the layout
        (then only the rows themselves can tell)."""
        if not self.holds(relative_path):
            return None
        parts = relative_path[len(self.folder) + 1 :].split("/")
        if len(parts) != len(self.partition_keys) + 1:
            return None
        values: dict[str, str] = {}
        for segment, key in zip(parts[:-1], self.partition_keys, strict=True):
            name, sep, value = segment.partition("=")
            if name != key or not sep or not value:
                return None
            values[key] = value
        if DATE_KEY in values:
            try:
                date.fromisoformat(values[DATE_KEY])
            except ValueError:
                return None
        return values


IDENTIFIABLE_DATASET: Final = Dataset(
    name="identifiable",
    folder="identifiable",
    schema=IDENTIFIABLE,
    partition_keys=("retention_class", "region", DATE_KEY),
    date_column="occurred_at",
    encrypted=True,
    retention=Retention.PER_PERSON,
    count_by="retention_class",
    subject_columns=("account_id", "user_id"),
    expiry_column="expires_at",
)
FACTS_DATASET: Final = Dataset(
    name="facts",
    folder="facts",
    schema=FACTS,
    partition_keys=(DATE_KEY,),
    date_column="occurred_hour",
    encrypted=False,
    retention=Retention.KEPT,
)

# In the order a range's files are planned (and listed in its marker).
WORKER_DATASETS: Final = (IDENTIFIABLE_DATASET, FACTS_DATASET)
PERSONAL_DATASETS: Final = tuple(d for d in WORKER_DATASETS if d.personal)


def dataset_of(relative_path: str) -> Dataset | None:
    """The worker dataset a path relative to the data root belongs to, if any."""
    return next((d for d in WORKER_DATASETS if d.holds(relative_path)), None)
