"""Pure scoring helpers: graded tag match and cosine similarity."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from worker.recsys_core.types import Vector


def score_tag(affinities: Mapping[str, float], tags: Iterable[str]) -> float:
    """Graded tag score of an item for a user, in [-2, 2].

    Each of the item's tags contributes the user's affinity for it relative to
    the user's strongest positive affinity; contributions are sorted and halved
    at each step, so one strong match counts most and many weak ones cannot
    outweigh it. Disliked tags (negative affinity) pull the score down.
    """
    return tag_scorer(affinities)(tags)


def tag_scorer(affinities: Mapping[str, float]) -> Callable[[Iterable[str]], float]:
    """``score_tag`` with the user's affinities bound: the scale is computed once,
    for scoring many items (each score is the same float ``score_tag`` gives)."""
    scale = _scale(affinities)
    if scale == 0:
        return _zero

    scaled = {t: v / scale for t, v in affinities.items()}
    get = scaled.get
    memo: dict[tuple[str, ...], float] = {}  # items often share their tags

    def score(tags: Iterable[str]) -> float:
        key = tags if type(tags) is tuple else tuple(tags)
        hit = memo.get(key)
        if hit is None:
            # Each tag once, in the item's order (a tie in |v| keeps that order:
            # the same on every replica, unlike a set's order).
            matched = [v for t in (dict.fromkeys(key) if len(key) > 1 else key)
                       if (v := get(t)) is not None]
            if len(matched) > 1:
                matched.sort(key=abs, reverse=True)  # stable: ties keep their order
                hit = 0.0
                step = 1.0
                for v in matched:
                    hit += v * step
                    step *= 0.5
            else:  # the same float as the sum: 0 + v, or 0
                hit = matched[0] if matched else 0.0
            memo[key] = hit
        return hit

    return score


def tag_score_bound(affinities: Mapping[str, float]) -> float:
    """No item's ``score_tag`` is larger than this in absolute value: its
    contributions are halved at each step, so they sum to less than twice the
    largest scaled affinity."""
    scale = _scale(affinities)
    if scale == 0:
        return 0.0
    return 2.0 * max(abs(v) for v in affinities.values()) / scale


def _scale(affinities: Mapping[str, float]) -> float:
    """What affinities are divided by: the strongest positive one, else the
    largest in size (0.0 when there are none)."""
    if not affinities:
        return 0.0
    top = max(affinities.values())
    return top if top > 0 else max(abs(v) for v in affinities.values())


def _zero(tags: Iterable[str]) -> float:
    return 0.0


def top_tags(affinities: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` most liked tags (positive affinity only), strongest first."""
    pos = [(t, w) for t, w in affinities.items() if w > 0]
    pos.sort(key=lambda tw: (-tw[1], tw[0]))
    return [t for t, _ in pos[:n]]


def cosine(a: Vector, b: Vector) -> float:
    """Cosine similarity; 0.0 when either vector is zero or sizes differ."""
    if len(a) != len(b):
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return 0.0
    return dot / (na * nb)
