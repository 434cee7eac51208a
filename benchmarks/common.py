"""Shared pieces of the benchmarks: the result record and a timer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from distributed import Client, LocalCluster


@dataclass(frozen=True)
class Result:
    """One figure, with the baseline measured in the same run on the same data."""

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        """value / baseline (for rates: > 1 means faster than the baseline)."""
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 4)
        d["value"] = round(self.value, 3)
        d["baseline_value"] = round(self.baseline_value, 3)
        return d


def best_rate(fn: Callable[[], int], repeats: int = 3) -> float:
    """Items per second of ``fn`` (which returns the number of items it did): best of repeats."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


@contextmanager
def local_client(workers: int) -> Iterator[Client]:
    """A client on a fresh LocalCluster of single-threaded worker processes (closed after)."""
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
