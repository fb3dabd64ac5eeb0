"""``compute_signals``: a user's buffered window -> ``UserSignals``. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from worker.recsys_core.codec import datetime_to_ms, ms_to_datetime
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.types import Content, InteractionEvent, UserSignals, Vector

_MS_PER_DAY = 86_400_000.0


def event_weight(event: InteractionEvent, config: SignalConfig) -> float:
    """The signed base weight of one event before time decay."""
    return base_weight(event.event_type, event.weight, config)


def base_weight(event_type: str, weight: float | None, config: SignalConfig) -> float:
    """:func:`event_weight` of an event with this type and weight."""
    override = config.type_weights.get(event_type)
    if override is not None:
        return override
    if event_type == "rate":
        return 0.0 if weight is None else weight - config.rating_neutral
    return weight if weight is not None else 0.0


def decay(age_ms: float, half_life_days: float) -> float:
    """Exponential decay factor for an event ``age_ms`` older than the newest."""
    if half_life_days <= 0 or age_ms <= 0:
        return 1.0
    return math.pow(0.5, age_ms / (half_life_days * _MS_PER_DAY))


#: One buffered event as the signals need it: ``(event time in epoch ms,
#: content id, event type, weight)``. The ingest path builds these straight from
#: the stored JSON, without an ``InteractionEvent`` per window event.
WindowRow = tuple[int, str, str, float | None]


def compute_signals(
    user_id: str,
    events: Sequence[InteractionEvent],
    *,
    contents: Mapping[str, Content],
    vectors: Mapping[str, Vector],
    config: SignalConfig,
) -> UserSignals | None:
    """Derive signals from the buffered window only, so pruning really forgets.

    Everything is relative to the newest event (event time), which makes the
    result a function of the window alone: a replay rebuilds exactly the same
    signals. Returns None for an empty window.
    """
    rows = [(datetime_to_ms(e.timestamp), e.content_id, e.event_type, e.weight) for e in events]
    return signals_from_rows(user_id, rows, contents=contents, vectors=vectors, config=config)


def signals_from_rows(
    user_id: str,
    rows: Sequence[WindowRow],
    *,
    contents: Mapping[str, Content],
    vectors: Mapping[str, Vector],
    config: SignalConfig,
) -> UserSignals | None:
    """:func:`compute_signals` over :data:`WindowRow` tuples (the same result)."""
    if not rows:
        return None
    newest_ms = max(r[0] for r in rows)
    half_life = config.half_life_days
    item_weights: dict[str, float] = {}
    last_seen: dict[str, int] = {}
    counts: dict[str, int] = {}
    for ts_ms, cid, etype, weight in rows:
        counts[etype] = counts.get(etype, 0) + 1
        w = base_weight(etype, weight, config) * decay(newest_ms - ts_ms, half_life)
        item_weights[cid] = item_weights.get(cid, 0.0) + w
        if ts_ms >= last_seen.get(cid, ts_ms):
            last_seen[cid] = ts_ms

    tags: dict[str, float] = {}
    for cid, w in item_weights.items():
        content = contents.get(cid)
        if content is None:
            continue
        for tag in content.tags:
            tags[tag] = tags.get(tag, 0.0) + w
    top_tags = sorted(tags.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[: config.max_tags]

    recent = sorted(last_seen, key=lambda c: (-last_seen[c], c))[: config.max_recent]
    return UserSignals(
        user_id=user_id,
        as_of=ms_to_datetime(newest_ms),
        event_count=len(rows),
        counts_by_type=dict(sorted(counts.items())),
        item_weights={c: round(w, 6) for c, w in sorted(item_weights.items())},
        tag_affinities={t: round(w, 6) for t, w in top_tags},
        recent_ids=tuple(recent),
        seen_ids=frozenset(item_weights),
        preference_vector=preference_vector(item_weights, vectors, limit=config.max_vector_items),
    )


def preference_vector(
    item_weights: Mapping[str, float], vectors: Mapping[str, Vector], *, limit: int = 50
) -> tuple[float, ...] | None:
    """Weighted centroid of the ``limit`` heaviest positive items' vectors,
    L2-normalised and rounded to float32 (so it survives a binary round trip)."""
    top = sorted(
        ((c, w) for c, w in item_weights.items() if w > 0 and c in vectors),
        key=lambda cw: (-cw[1], cw[0]),
    )[:limit]
    if not top:
        return None
    dim = len(vectors[top[0][0]])
    kept = [(vectors[c], w) for c, w in top if len(vectors[c]) == dim]
    matrix = np.array([v for v, _ in kept], dtype=np.float64)
    acc = np.array([w for _, w in kept], dtype=np.float64) @ matrix
    # numpy's norm of a 1-D float array is sqrt(x.dot(x)): the same float, without
    # its ~5 us of argument handling (this runs for every touched user).
    norm = math.sqrt(acc.dot(acc))
    if norm == 0.0 or not math.isfinite(norm):
        return None
    return tuple((acc / norm).astype(np.float32).tolist())
