"""The stores of one worker under its state folder (``SIEVE_STATE_DIR``), opened once each."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from streams.worker.state.store import PartitionStore, StoreResources


class StateFolder:
    """The stores of one worker, under one folder (a temporary one when ``path`` is None).

    A partition's store stays open until :meth:`close_partition`; asking again for an open
    one returns it, so a pipeline rebuilt in the same process reuses the store. Stores still
    open when the folder is closed or collected, or the process exits, are closed then
    (their unflushed writes reach disk; a temporary folder is removed after).
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._resources: StoreResources | None = None
        self._stores: dict[tuple[str, int], PartitionStore] = {}
        self._notices: set[str] = set()
        self._finalizer = weakref.finalize(self, _close_all, self._stores, None)

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="sieve-state-"))
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _close_all, self._stores, self._path)
        return self._path

    def open(self, topic: str, partition: int, identity: str, horizon_ms: int) -> PartitionStore:
        store = self._stores.get((topic, partition))
        if store is not None and store.horizon_ms == horizon_ms:
            return store
        if store is not None:
            self.close_partition(topic, partition)
        if self._resources is None:
            self._resources = StoreResources()
        store = PartitionStore(
            self.path / topic / str(partition), identity, horizon_ms, self._resources
        )
        self._stores[(topic, partition)] = store
        return store

    def close_partition(self, topic: str, partition: int) -> None:
        store = self._stores.pop((topic, partition), None)
        if store is not None:
            store.close()

    def close(self) -> None:
        self._finalizer()

    def notice_once(self, notice: str) -> bool:
        """True the first time ``notice`` is asked for in this worker (log it then)."""
        if notice in self._notices:
            return False
        self._notices.add(notice)
        return True


def _close_all(stores: dict[tuple[str, int], PartitionStore], temporary: Path | None) -> None:
    # Close before removing: a store whose folder vanished under it leaves RocksDB's shared
    # background threads retrying its flush, and every other store's close then waits.
    for key in list(stores):
        stores.pop(key).close()
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
