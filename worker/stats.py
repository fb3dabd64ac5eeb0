"""In-process counters and stage timings the worker keeps.

Plain Python on purpose: the agents, the pipeline and the recommender update
these without knowing about Prometheus; ``worker.metrics`` reads them at scrape
time (counters) and receives timings through ``Stats.observer``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: ``(path, stage, seconds)``: path is "ingest", "apply" or "request"; stage
#: "total" is the end-to-end time of one batch / message / request.
Observer = Callable[[str, str, float], None]
#: ``(stage, seconds)``: what the pipeline and the recommender report to.
StageObserver = Callable[[str, float], None]


@dataclass
class Stats:
    records_consumed: int = 0
    interactions_written: int = 0
    #: interactions that were already stored (a redelivery after a restart,
    #: rebalance or re-read): nothing changed, signals saved again
    interactions_redelivered: int = 0
    #: interactions sent through the repartition topic: their raw record was not on
    #: their user's partition, or the events topic is not co-partitioned
    interactions_forwarded: int = 0
    requests_served: int = 0
    requests_failed: int = 0
    #: where a request's signals came from: "table", "redis" or "none" (unknown user)
    signals_lookups: Counter[str] = field(default_factory=Counter)
    producer_nudges: int = 0  # stuck Kafka producer senders woken by the watchdog
    malloc_trims: int = 0  # times the heap's free memory was given back (worker/malloc.py)
    malloc_trim_seconds: float = 0.0  # time those took, in total
    dead_lettered: Counter[str] = field(default_factory=Counter)
    last_applied_at: float = 0.0
    #: last time an agent finished (acked) a batch, message or request
    last_progress_at: float = 0.0
    assigned: list[str] = field(default_factory=list)
    assigned_at: float = 0.0
    started_at: float = field(default_factory=time.time)
    observer: Observer | None = None

    @staticmethod
    def clock() -> float:
        return time.time()

    def progress(self) -> None:
        """An agent finished a unit of work (for the readiness stall check)."""
        self.last_progress_at = self.clock()

    def observe(self, path: str, stage: str, seconds: float) -> None:
        if self.observer is not None:
            self.observer(path, stage, seconds)

    def stage_observer(self, path: str) -> StageObserver:
        """A ``(stage, seconds)`` callback for one path (given to the pipeline etc.)."""
        return lambda stage, seconds: self.observe(path, stage, seconds)

    @contextmanager
    def timed(self, path: str, stage: str = "total") -> Iterator[None]:
        """Observe how long the block took (also when it raised)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(path, stage, time.perf_counter() - t0)


class StageClock:
    """Time spent per stage over one unit of work, reported once per stage.

    ``with clock("redis"): ...`` may be used several times for one stage; the
    sum is reported by :meth:`report` (call it in a ``finally``).
    """

    __slots__ = ("_observe", "_totals")

    def __init__(self, observe: StageObserver | None) -> None:
        self._observe = observe
        self._totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._totals[stage] = self._totals.get(stage, 0.0) + time.perf_counter() - t0

    def report(self) -> None:
        if self._observe is not None:
            for stage, seconds in self._totals.items():
                self._observe(stage, seconds)
        self._totals.clear()
