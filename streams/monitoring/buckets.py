"""A Prometheus histogram that observes a whole array in one call.

prometheus_client's ``Histogram.observe`` takes one value per call (a lock and a bucket
search each time); its maintainers point bulk observations to a custom collector. A range of
200,000 records has 200,000 end-to-end lags: one numpy ``searchsorted`` and ``bincount``
bucket them in about a millisecond, where 200,000 ``observe`` calls would stall the worker's
event loop for a large part of a second. This module keeps the counts; prometheus_client
renders them (:meth:`BucketCounts.family`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class BucketCounts:
    """Counts of observations per bucket (upper bounds inclusive, as Prometheus's ``le``),
    their sum and count. Not thread-safe: the worker observes and renders on its event loop.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        finite = [float(b) for b in bounds if not math.isinf(b)]
        if not finite or finite != sorted(set(finite)):
            raise ValueError(f"bucket bounds must be increasing and distinct, not {bounds}")
        self.bounds = np.asarray(finite, dtype=np.float64)
        # One count per finite bucket plus the +Inf bucket (not cumulative here).
        self._counts = np.zeros(len(finite) + 1, dtype=np.int64)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        """Observe every value of ``values`` (NaNs are ignored: nothing was measured)."""
        values = values[~np.isnan(values)]
        if not values.size:
            return
        # side="left": a value equal to a bound belongs to that bound's bucket (le).
        index = np.searchsorted(self.bounds, values, side="left")
        self._counts += np.bincount(index, minlength=len(self._counts))
        self.sum += float(values.sum())

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations <= le)`` for every bucket, +Inf last, as Prometheus shows them."""
        totals = np.cumsum(self._counts)
        labels = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        return list(zip(labels, (int(t) for t in totals), strict=True))

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            name, documentation, buckets=self.cumulative(), sum_value=self.sum
        )
