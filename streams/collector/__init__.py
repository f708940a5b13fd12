"""The HTTP collector: web and mobile clients post events, Kafka gets them (``sieve collect``).

* :mod:`~streams.collector.keys`: write keys per account, constant-time authentication
* :mod:`~streams.collector.batch`: body -> events, every problem, DNT/GPC (pure)
* :mod:`~streams.collector.delivery`: send a batch, wait for every acknowledgement
* :mod:`~streams.collector.server`: the aiohttp application (:func:`create_collector_app`)
* :mod:`~streams.collector.command`: ``sieve collect``
"""

from __future__ import annotations

from streams.collector.command import collect_command
from streams.collector.keys import WriteKeys
from streams.collector.server import create_collector_app

__all__ = ["WriteKeys", "collect_command", "create_collector_app"]
