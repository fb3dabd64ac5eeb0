"""Real-time item statistics, pure parts: what counts, decayed popularity
increments, and co-interaction recall scores.

The stores (Redis, or the in-memory fake) keep the counts up to date on every
new event; these functions say how much an event counts and how counts become
candidate scores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

from worker.recsys_core.types import Candidate, InteractionEvent

_DAY_MS = 86_400_000
_POP_EPOCH_MS = 1_704_067_200_000  # 2024-01-01: increments are relative to it


def is_engaging(ev: InteractionEvent) -> bool:
    """Whether an event shows interest in its item (counts for popularity and
    co-interaction): any rating, or any event with a positive weight."""
    return ev.event_type == "rate" or (ev.weight is not None and ev.weight > 0)


def popularity_increment(weight: float, ts_ms: int, half_life_days: float) -> float:
    """Time-decayed popularity without a decay job.

    Adding ``w * 2**((t - epoch) / half_life)`` to an item's score orders items
    exactly as ``sum(w * 2**((t - now) / half_life))`` would, for any ``now``:
    the common factor ``2**(now/half_life)`` does not change the order. Scores
    stay finite for centuries at a half-life of days (2**1023 is the limit).
    """
    if weight <= 0:
        return 0.0
    exponent = (ts_ms - _POP_EPOCH_MS) / (half_life_days * _DAY_MS)
    return weight * math.pow(2.0, max(min(exponent, 900.0), -900.0))


def stable_top(rows: list[tuple[str, float]], limit: int) -> list[tuple[str, float]]:
    """Top ``limit`` by score rounded to 12 significant digits, ties by id: float
    sums taken in another order rank the same."""
    def key(row: tuple[str, float]) -> tuple[float, str]:
        return (-float(f"{row[1]:.12g}"), row[0])

    return sorted(rows, key=key)[:limit]


def co_interaction_candidates(
    weights: Mapping[str, float],
    rows: Mapping[str, Mapping[str, float]],
    counts: Mapping[str, float],
) -> list[Candidate]:
    """Score items by cosine-normalised co-interaction with the user's items.

    ``score(j) = sum_i w_i * co(i, j) / sqrt(n_i * n_j)`` over the user's
    positively weighted items ``i``, where ``co`` counts users who engaged with
    both and ``n`` counts users who engaged with each: item-kNN, kept in real
    time. The detail names the item that contributed most.
    """
    score: dict[str, float] = defaultdict(float)
    best: dict[str, tuple[float, str]] = {}
    for src in sorted(rows):
        w = weights.get(src, 0.0)
        n_src = counts.get(src, 0.0)
        if w <= 0 or n_src <= 0:
            continue
        for cid, c in rows[src].items():
            n = counts.get(cid, 0.0)
            if n <= 0:
                continue
            part = w * c / math.sqrt(n_src * n)
            score[cid] += part
            if part > best.get(cid, (0.0, ""))[0]:
                best[cid] = (part, src)
    ranked = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Candidate(cid, s, "co", best[cid][1]) for cid, s in ranked]
