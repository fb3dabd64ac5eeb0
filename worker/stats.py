"""In-process counters the worker keeps (exported as Prometheus metrics later)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    records_consumed: int = 0
    interactions_written: int = 0
    requests_served: int = 0
    requests_failed: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    last_applied_at: float = 0.0
    assigned: list[str] = field(default_factory=list)

    @staticmethod
    def clock() -> float:
        return time.time()
