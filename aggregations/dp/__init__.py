"""User-level differential privacy for the published analytics (issue 8).

- :mod:`~aggregations.dp.domains`: the public set of values of every dimension.
- :mod:`~aggregations.dp.bounding`: contribution bounding and exact aggregates (DuckDB).
- :mod:`~aggregations.dp.mechanisms`: the noise, its privacy maps and their composition
  (OpenDP), and the conversion of zero-concentrated DP to (epsilon, delta).
- :mod:`~aggregations.dp.budget`: the day's budget, its split over batches and releases,
  and the accountant's check.
- :mod:`~aggregations.dp.release`: one batch released: noise, then post-processing.
- :mod:`~aggregations.dp.ledger`: what every release spent, kept outside ``published/``.
"""
