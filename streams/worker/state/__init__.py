"""The worker's partition state on local disk: dedup keys and consent, bounded in memory.

It lives under ``streams/worker`` because nothing else reads it: it is a cache of what the
committed ranges imply (rebuilt from them when lost), kept in a local state folder
(``SIEVE_STATE_DIR``), never in the data root, which may be an object store.

- :mod:`.keys`: 128-bit hex pseudonyms as numpy words, for vectorised filters.
- :mod:`.bloom`: the in-memory filter in front of the store (the common "new key" case).
- :mod:`.store`: one RocksDB per partition (rocksdict): dedup generations, consent, progress.
- :mod:`.folder`: a worker's stores under its state folder, each opened once.
- :mod:`.overlay`: keys of ranges not committed yet, as sorted runs.
- :mod:`.range_log`: the per-range sidecar (event key, arrival) the store is rebuilt from.
- :mod:`.consent`: consent state backed by the store, in the shape the pure core decides with.
- :mod:`.recovery`: reopen, catch up or rebuild a partition's store from the commit markers.
"""
