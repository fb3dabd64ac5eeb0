"""Real-time item statistics, pure parts: what counts, decayed popularity
increments, and co-interaction recall scores.

The stores (Redis, or the in-memory fake) keep the counts up to date on every
new event; these functions say how much an event counts and how counts become
candidate scores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.recsys_core.types import Candidate, InteractionEvent

_DAY_MS = 86_400_000
_Floats = Sequence[float] | npt.NDArray[np.float64]
_Ids = Sequence[str] | npt.NDArray[Any]
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


#: Integer-coded partner ids (``names`` given) are summed in an array of
#: ``len(names)`` bins, one per code, when there are at most this many codes (or
#: at most 16 per partner entry); above that the codes in use are told apart by
#: ``np.unique`` (a sort of integers).
DIRECT_BINS_MAX = 65_536


def top_co_interaction_candidates(
    weights: Mapping[str, float],
    rows: Mapping[str, tuple[_Ids, _Floats] | tuple[_Ids, _Floats, _Floats]],
    counts: Mapping[str, float],
    limit: int,
    *,
    names: Sequence[str] | None = None,
) -> list[Candidate]:
    """``co_interaction_candidates(weights, rows, counts)[:limit]``, vectorised.

    ``rows[i]`` holds item ``i``'s partners and their co-interaction counts as
    two parallel sequences, in row order, and may hold a third: the partners'
    interaction counts, read with the row, used instead of looking each partner
    up in ``counts`` (which then needs only the items of ``rows``). The
    partners may be a numpy array of UTF-8 bytes (``dtype="S"``, what the
    Redis store keeps: no Python object per partner; ids never end in NUL) or
    of str, or a sequence of str, the same kind in every row; or integer codes
    (``names[code]`` is the id), which spares the sort of byte strings that
    telling thousands of partners apart otherwise takes (~0.75 ms for 4,200
    partners, 70 % of this function).

    The result is identical, floats included: every part is the same IEEE
    expression, and each item's parts are summed in the same order (items
    sorted by id, then row order; ``np.bincount`` adds its weights one after
    another). Items are told apart by their codes, else by ``np.unique``, and
    only the top ``limit`` are sorted, named and built.
    """
    if limit <= 0:
        return []
    srcs = [s for s in sorted(rows)
            if weights.get(s, 0.0) > 0 and counts.get(s, 0.0) > 0 and len(rows[s][0])]
    if not srcs:
        return []
    ids = np.concatenate([np.asarray(rows[s][0]) for s in srcs])
    # An item's group: any labelling of the distinct ids gives the same sums,
    # since bincount adds in position order. Coded ids label themselves.
    labels: npt.NDArray[Any] | None  # label -> what ``ids`` holds (None: the same)
    if names is not None and (len(names) <= DIRECT_BINS_MAX or len(names) <= 16 * len(ids)):
        labels, group, bins = None, ids.astype(np.intp, copy=False), len(names)
    else:
        labels, group = np.unique(ids, return_inverse=True)
        bins = len(labels)
    group = group.reshape(-1)

    def named(held: npt.NDArray[Any]) -> list[str]:
        """Ids as held in the rows (codes, bytes or str) -> the ids."""
        return id_names(held) if names is None else [names[c] for c in held.tolist()]

    if all(len(rows[s]) > 2 for s in srcs):
        n = np.concatenate([np.asarray(rows[s][2], dtype=np.float64)  # type: ignore[misc]
                            for s in srcs])
    else:
        n = np.fromiter(map(counts.get, named(ids), repeat(0.0)), dtype=np.float64,
                        count=len(ids))
    co = np.concatenate([np.asarray(rows[s][1], dtype=np.float64) for s in srcs])
    src = np.repeat(np.arange(len(srcs)), [len(rows[s][0]) for s in srcs])
    ok = n > 0
    src, item = src[ok], group[ok]
    w = np.array([weights[s] for s in srcs], dtype=np.float64)[src]
    n_src = np.array([counts[s] for s in srcs], dtype=np.float64)[src]
    part = w * co[ok] / np.sqrt(n_src * n[ok])
    score = np.bincount(item, weights=part, minlength=bins)
    found = np.flatnonzero(np.bincount(item, minlength=bins))
    if not len(found):
        return []
    if len(found) > limit:  # keep the top ``limit`` scores, ties at the cut included
        top_scores = score[found]
        cut = np.partition(top_scores, len(found) - limit)[len(found) - limit]
        found = found[top_scores >= cut]
    # The detail, for the items kept: the first source with the item's largest
    # part (a stable sort by item, then part descending, puts it first).
    kept = np.zeros(bins, dtype=bool)
    kept[found] = True
    sel = np.flatnonzero(kept[item])
    order = sel[np.lexsort((-part[sel], item[sel]))]
    first = order[np.r_[True, item[order][1:] != item[order][:-1]]]
    best_src = np.full(bins, -1, dtype=np.intp)
    best_src[item[first]] = np.where(part[first] > 0, src[first], -1)
    ranked = sorted(zip((-score[found]).tolist(),
                        named(found if labels is None else labels[found]),
                        best_src[found].tolist(), strict=True))[:limit]
    return [Candidate(cid, -neg, "co", srcs[b] if b >= 0 else "") for neg, cid, b in ranked]


def id_names(ids: npt.NDArray[Any]) -> list[str]:
    """Ids from a numpy array of UTF-8 bytes or of str."""
    out = ids.tolist()
    return [i.decode() for i in out] if ids.dtype.kind == "S" else out
