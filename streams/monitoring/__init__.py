"""Monitoring shared by the worker and the collector (Prometheus exposition, bulk histograms).

* :mod:`~streams.monitoring.buckets`: a histogram that takes a whole array of observations
  in one call (a range's end-to-end lags), exposed through a prometheus_client collector
* :mod:`~streams.monitoring.exposition`: one registry rendered for ``/metrics``, and the
  small aiohttp application that serves it on a listener of its own

The metrics of each process live in a registry of its own (never prometheus_client's global
one), so tests and benchmarks can build as many workers and collectors as they like.
"""
