"""The identifiable side after collection: retention sweep, access export, erasure.

Everything here works on the encrypted identifiable files the worker writes
(``identifiable/retention_class=<c>/region=<r>/date=<d>/...``, see
:mod:`streams.worker.sink`) and on the dead-letter topic. The core functions take the
filesystem, the keys and ``now`` as arguments; only :mod:`streams.subject.commands` reads
settings, key files or the clock.
"""
