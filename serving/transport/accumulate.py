"""Metric updates counted in plain numbers on the hot path and moved into prometheus-client
before every exposition.

Updating a prometheus-client child takes a lock and several Python calls per value; on a
request path that answers in tens of microseconds a handful of such updates is a measurable
share of the work (py-spy: ~12% of the model server's app time, several % of the router's).
Accumulators here are written by one thread each and only ever grow, so a flush running in
another thread reads a consistent lower bound and never loses an update: it moves the
difference since its previous flush. Used by ``serving/metrics.py`` and ``router/metrics.py``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from threading import get_ident
from typing import Any

from prometheus_client import Counter, Histogram, Metric
from prometheus_client.registry import Collector


class Buckets:
    """One histogram's observations, counted in plain ints until the next flush."""

    __slots__ = ("bounds", "counts", "total", "_flushed_counts", "_flushed_total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self._flushed_counts = [0] * (len(bounds) + 1)
        self._flushed_total = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def flush_into(self, child: Any) -> None:
        """Add what was observed since the last flush to a prometheus ``Histogram`` child.

        prometheus-client has no public "observe n values at once"; its child keeps one
        value per bucket (``_buckets``, not cumulative) and ``_sum``, which work the same in
        multiprocess mode. tests/serving/test_request_metrics.py pins that layout.
        """
        counts, flushed = self.counts, self._flushed_counts
        for i, now in enumerate(counts):
            if now != flushed[i]:
                child._buckets[i].inc(now - flushed[i])
                flushed[i] = now
        total = self.total
        if total != self._flushed_total:
            child._sum.inc(total - self._flushed_total)
            self._flushed_total = total


class Tally:
    """One counter's increments, counted in a plain number until the next flush."""

    __slots__ = ("value", "_flushed")

    def __init__(self) -> None:
        self.value: float = 0
        self._flushed: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def flush_into(self, child: Any) -> None:
        value = self.value
        if value != self._flushed:
            child.inc(value - self._flushed)
            self._flushed = value


class Deferred:
    """A labelled Counter or Histogram whose ``labels(...)`` children are accumulators.

    ``labels(*values)`` returns the calling thread's :class:`Tally` (counters: ``inc``) or
    :class:`Buckets` (histograms: ``observe``) for those values; :meth:`flush` moves them into
    ``metric``. Label values must come from a bounded set (they key a table that never shrinks).
    """

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self._children: dict[tuple[tuple[str, ...], int], Any] = {}
        self._lock = threading.Lock()
        bounds = getattr(metric, "_upper_bounds", None)
        self._make: Callable[[], Any] = (
            Tally if bounds is None else lambda: Buckets(tuple(bounds[:-1])))

    def labels(self, *values: str) -> Any:
        key = (values, get_ident())
        child = self._children.get(key)
        if child is None:
            self.metric.labels(*values)  # validates the values now, and exports the series
            child = self._make()
            with self._lock:  # flush iterates the table
                self._children[key] = child
        return child

    def flush(self) -> None:
        with self._lock:
            for (values, _), child in self._children.items():
                child.flush_into(self.metric.labels(*values))


class FlushBeforeCollect(Collector):
    """Register first in a registry, so every exposition sees what accumulators counted."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def collect(self) -> Iterable[Metric]:
        self._flush()
        return ()
