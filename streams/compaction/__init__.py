"""Compaction: a closed day's small range files merged into a few large ones (issue 10.3).

Every range the worker commits writes its own small files and its own marker; compaction
replaces a contiguous run of a partition's live markers with one *compaction marker*
(schemas.commits) listing merged files: one per folder (``facts/date=<d>/``, and
``identifiable/retention_class=<c>/region=<r>/date=<d>/`` when it holds the keyring, the
merged file encrypted again with the active key). What it does not merge it carries over by
name: the dedup logs (the worker's state rebuild reads them, expanded from the marker),
earlier compactions' files, and identifiable files when it runs without the keyring.

Exactly once (:mod:`.run`): merged files first (temporary name, fsync, rename) under names
no range has (``compacted+<topic>+<partition>+<first>-<last>-c<n>.parquet``, so a worker's
recovery never removes a compaction in progress), then the compaction marker (the commit
point: from its rename on, every reader sees it and not the ranges it replaces), then the
replaced files, then the replaced markers. A kill at any point leaves the old set or the new
one; the next compaction removes what a killed one left (an intent file names the files a
compaction was writing).

What it may cover (:mod:`.plan`): live, contiguous ranges, never a partition's newest (a
range an evicted writer commits late can only be the newest, see docs/architecture.md,
"Fencing"), whose days are all closed for the analytics (every DP slot of the day due under
the published watermark, none refused: a batch records the facts files it covers by name,
and no batch comes after a day's last slot), and wholly inside or wholly outside one of
publish's cursor intervals (so publish's per-partition offset cursor still covers or misses
each marker whole).

It runs periodically inside ``sieve publish`` (after its manifest: under the publish lock,
so publish never reads files a compaction is replacing, and with the watermark it just
published) and on demand as ``sieve compact`` (streams.compact_command). It is core: it
imports neither the worker nor the aggregations, which call it.
"""
