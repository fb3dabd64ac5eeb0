"""``compute_signals``: a user's buffered window -> ``UserSignals``. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from worker.recsys_core.codec import datetime_to_ms, ms_to_datetime
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.types import (
    Content,
    Float32Vector,
    InteractionEvent,
    UserSignals,
    Vector,
)

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
    return signals_from_windows([(user_id, rows)], contents=contents, vectors=vectors,
                                config=config)[0]


def signals_from_windows(
    windows: Sequence[tuple[str, Sequence[WindowRow]]],
    *,
    contents: Mapping[str, Content],
    vectors: Mapping[str, Vector],
    config: SignalConfig,
) -> list[UserSignals | None]:
    """:func:`signals_from_rows` of several users, ``(user id, rows)`` each: the
    same signals, user by user, with the preference vectors computed together
    (:func:`preference_vectors`). The ingest path computes a round's users
    this way, a few at a time."""
    parts = [_window_parts(rows, contents, config) for _, rows in windows]
    pvs = preference_vectors([p[2] if p is not None else {} for p in parts], vectors,
                             limit=config.max_vector_items)
    out: list[UserSignals | None] = []
    for (user_id, rows), part, pv in zip(windows, parts, pvs, strict=True):
        if part is None:
            out.append(None)
            continue
        newest_ms, counts, item_weights, top_tags, recent = part
        out.append(UserSignals(
            user_id=user_id,
            as_of=ms_to_datetime(newest_ms),
            event_count=len(rows),
            counts_by_type=dict(sorted(counts.items())),
            item_weights={c: round(w, 6) for c, w in sorted(item_weights.items())},
            tag_affinities={t: round(w, 6) for _, t, w in top_tags},
            recent_ids=tuple([c for _, c in recent]),
            seen_ids=frozenset(item_weights),
            preference_vector=pv,
        ))
    return out


_Parts = tuple[int, dict[str, int], dict[str, float], list[tuple[float, str, float]],
               list[tuple[int, str]]]


def _window_parts(rows: Sequence[WindowRow], contents: Mapping[str, Content],
                  config: SignalConfig) -> _Parts | None:
    """A window's newest time, counts by type, item weights, top tags as
    ``(-|weight|, tag, weight)`` and most recent items as ``(-time, id)``.

    This runs for every touched user of every apply: orders are taken by
    sorting plain tuples rather than through a key function (the same orders:
    the tuples are the keys, and their second elements are unique)."""
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
    top_tags = sorted([(-abs(w), t, w) for t, w in tags.items()])[: config.max_tags]
    recent = sorted([(-ts, c) for c, ts in last_seen.items()])[: config.max_recent]
    return newest_ms, counts, item_weights, top_tags, recent


def preference_vector(
    item_weights: Mapping[str, float], vectors: Mapping[str, Vector], *, limit: int = 50
) -> Float32Vector | None:
    """Weighted centroid of the ``limit`` heaviest positive items' vectors,
    L2-normalised and rounded to float32 (so it survives a binary round trip)."""
    return preference_vectors([item_weights], vectors, limit=limit)[0]


def preference_vectors(
    many: Sequence[Mapping[str, float]], vectors: Mapping[str, Vector], *, limit: int = 50
) -> list[Float32Vector | None]:
    """:func:`preference_vector` of each of ``many`` item weights, with the
    vectors of all of them in one matrix: numpy's fixed costs, and making a
    Python float of each of a centroid's values, were most of a user's signals.

    Each centroid is the matrix product of its own weights and rows, as when
    computed alone (the same floats whatever else is in the call), and comes
    back as the float32 bytes that are stored (:class:`Float32Vector`)."""
    out: list[Float32Vector | None] = [None] * len(many)
    rows: list[Vector] = []
    weights: list[float] = []
    bounds: list[tuple[int, int, int]] = []  # (user, first row, end)
    dim = -1
    for i, item_weights in enumerate(many):
        # the heaviest first, ties by id: sorted by (-weight, id)
        top = sorted([(-w, c) for c, w in item_weights.items()
                      if w > 0 and c in vectors])[:limit]
        if not top:
            continue
        mine = len(vectors[top[0][1]])
        if dim < 0:
            dim = mine
        elif mine != dim:  # another dimension (a catalogue being re-embedded): on its own
            out[i] = preference_vector(item_weights, vectors, limit=limit)
            continue
        first = len(rows)
        for nw, c in top:
            v = vectors[c]
            if len(v) == dim:
                rows.append(v)
                weights.append(-nw)
        bounds.append((i, first, len(rows)))
    if not bounds:
        return out
    matrix = np.array(rows, dtype=np.float64)
    w = np.array(weights, dtype=np.float64)
    acc = np.empty((len(bounds), dim))
    norms = np.empty(len(bounds))
    for j, (_, first, end) in enumerate(bounds):
        a = acc[j] = w[first:end] @ matrix[first:end]
        # numpy's norm of a 1-D float array is sqrt(x.dot(x)): the same float
        norms[j] = a.dot(a)
    np.sqrt(norms, out=norms)
    good = np.isfinite(norms) & (norms != 0.0)
    raw = (acc[good] / norms[good, None]).astype("<f4").tobytes()
    size = 4 * dim
    for j, (i, _, _) in enumerate(b for b, ok in zip(bounds, good.tolist(), strict=True) if ok):
        out[i] = Float32Vector(raw[j * size:(j + 1) * size])
    return out
