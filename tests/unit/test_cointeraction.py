"""Pure parts of the real-time item statistics."""

import random

import numpy as np
import pytest

from tests.factories import event
from worker.recsys_core import cointeraction
from worker.recsys_core.cointeraction import (
    co_interaction_candidates,
    is_engaging,
    popularity_increment,
    top_co_interaction_candidates,
)


def test_engaging_events() -> None:
    assert is_engaging(event(kind="view", weight=1.0))
    assert is_engaging(event(kind="rate", weight=1.0))  # any rating shows interest
    assert is_engaging(event(kind="rate", weight=None))
    assert not is_engaging(event(kind="remove_from_cart", weight=-1.0))


def test_popularity_increment_doubles_every_half_life() -> None:
    day = 86_400_000
    a = popularity_increment(1.0, 1_800_000_000_000, 7.0)
    b = popularity_increment(1.0, 1_800_000_000_000 + 7 * day, 7.0)
    assert b / a == pytest.approx(2.0)
    assert popularity_increment(0.0, 1_800_000_000_000, 7.0) == 0.0


def test_co_candidates_are_cosine_normalised_and_weighted() -> None:
    rows = {"a": {"x": 4.0, "y": 4.0}, "b": {"y": 1.0}}
    counts = {"a": 4.0, "b": 1.0, "x": 4.0, "y": 16.0}
    out = co_interaction_candidates({"a": 2.0, "b": 1.0}, rows, counts)
    scores = {c.content_id: c.score for c in out}
    assert scores["x"] == pytest.approx(2.0 * 4 / 4)  # 2.0
    assert scores["y"] == pytest.approx(2.0 * 4 / 8 + 1.0 * 1 / 4)  # 1.25
    assert [c.content_id for c in out] == ["x", "y"]
    assert out[0].source == "co" and out[0].detail == "a"


def test_co_candidates_ignore_disliked_and_unknown_items() -> None:
    rows = {"a": {"x": 1.0}, "b": {"z": 5.0}}
    out = co_interaction_candidates({"a": -1.0, "b": 1.0}, rows, {"a": 1, "b": 1, "x": 1})
    assert out == []  # a is disliked, z has no count


def _as_pairs(rows: dict[str, dict[str, float]]) -> dict[str, tuple[list[str], list[float]]]:
    return {src: (list(row), list(row.values())) for src, row in rows.items()}


@pytest.mark.parametrize("seed", range(40))
def test_top_co_candidates_equal_the_reference_exactly(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same candidates, same order, same floats (bit for bit), same details."""
    rng = random.Random(seed)
    items = [f"i{n}" for n in range(rng.randint(1, 60))]
    srcs = rng.sample(items, rng.randint(1, min(len(items), 12)))
    weights = {s: rng.choice([rng.random() * 3, 1.0, 0.5, -1.0, 0.0]) for s in srcs}
    rows = {}
    for s in srcs:
        partners = rng.sample(items, rng.randint(0, len(items)))
        # small integer counts make many exact ties (of parts and of sums)
        scores = sorted((float(rng.randint(1, 4)) for _ in partners), reverse=True)
        rows[s] = dict(zip(partners, scores, strict=True))
    counts = {i: float(rng.choice([0, 1, 2, 3, 4, 9])) for i in items if rng.random() < 0.9}
    ref = co_interaction_candidates(weights, rows, counts)
    # Rows may bring their partners' counts along (what the Redis cache keeps):
    # then ``counts`` is only asked for the rows' own items.
    with_counts = {s: (ids, co, [counts.get(i, 0.0) for i in ids])
                   for s, (ids, co) in _as_pairs(rows).items()}
    own = {s: counts[s] for s in srcs if s in counts}
    # ... and as the Redis store keeps them: numpy arrays of UTF-8 bytes.
    as_bytes = {s: (np.array([i.encode() for i in ids], dtype="S"), np.array(co),
                    np.array(n)) for s, (ids, co, n) in with_counts.items()}
    # ... or as integer codes into a table of names (in any order, with names no
    # row uses): summed in one bin per code, or, for a large table, per distinct code.
    names = [f"other{n}" for n in range(rng.randint(0, 50))] + items
    rng.shuffle(names)
    code = {name: c for c, name in enumerate(names)}
    as_codes = {s: (np.array([code[i] for i in ids], dtype=np.intp), np.array(co),
                    np.array(n)) for s, (ids, co, n) in with_counts.items()}
    codes_only = {s: (np.array([code[i] for i in ids], dtype=np.intp), np.array(co))
                  for s, (ids, co, _) in with_counts.items()}
    for limit in (0, 1, 3, 10, 1000):
        assert top_co_interaction_candidates(weights, _as_pairs(rows), counts, limit) == \
            ref[:limit]
        assert top_co_interaction_candidates(weights, with_counts, own, limit) == ref[:limit]
        assert top_co_interaction_candidates(weights, as_bytes, own, limit) == ref[:limit]
        assert top_co_interaction_candidates(weights, as_codes, own, limit,
                                             names=names) == ref[:limit]
        assert top_co_interaction_candidates(weights, codes_only, counts, limit,
                                             names=names) == ref[:limit]
        with monkeypatch.context() as m:  # the np.unique path for large tables
            m.setattr(cointeraction, "DIRECT_BINS_MAX", 0)
            big = names + [f"pad{n}" for n in range(16 * 60 * 12)]
            assert top_co_interaction_candidates(weights, as_codes, own, limit,
                                                 names=big) == ref[:limit]


def test_top_co_candidates_without_usable_sources() -> None:
    assert top_co_interaction_candidates({"a": -1.0}, {"a": (["x"], [1.0])}, {"a": 1.0}, 5) == []
    assert top_co_interaction_candidates({"a": 1.0}, {"a": ([], [])}, {"a": 1.0}, 5) == []
    assert top_co_interaction_candidates({}, {}, {}, 5) == []
    # partners without an interaction count
    assert top_co_interaction_candidates({"a": 1.0}, {"a": (["x"], [1.0])}, {"a": 1.0}, 5) == []
