"""compute_signals: weights, decay, tags, recency and the preference vector."""

import math

import pytest

from tests.factories import content, event
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.signals import compute_signals, decay, event_weight

CFG = SignalConfig(half_life_days=10.0)
CAT = {
    "1": content("1", "genre:Comedy"),
    "2": content("2", "genre:Drama"),
    "3": content("3", "genre:Comedy", "genre:Romance"),
}


def test_empty_window_gives_no_signals() -> None:
    assert compute_signals("u", [], contents=CAT, vectors={}, config=CFG) is None


def test_decay_halves_after_one_half_life() -> None:
    assert decay(10 * 86_400_000, 10.0) == pytest.approx(0.5)
    assert decay(0, 10.0) == 1.0


def test_weights_follow_event_types_and_decay_by_event_time() -> None:
    evs = [
        event(content="1", kind="view", weight=1.0, days=0),
        event(content="2", kind="purchase", weight=5.0, days=10),
    ]
    s = compute_signals("u1", evs, contents=CAT, vectors={}, config=CFG)
    assert s is not None
    assert s.item_weights["2"] == pytest.approx(5.0)
    assert s.item_weights["1"] == pytest.approx(0.5)  # one half-life older than newest
    assert s.counts_by_type == {"purchase": 1, "view": 1}
    assert s.as_of == evs[1].timestamp
    assert s.event_count == 2


def test_type_weight_override_and_rating_centre() -> None:
    cfg = SignalConfig(type_weights={"view": 0.2}, rating_neutral=3.0)
    assert event_weight(event(kind="view", weight=1.0), cfg) == 0.2
    assert event_weight(event(kind="rate", weight=5.0), cfg) == 2.0
    assert event_weight(event(kind="rate", weight=1.0), cfg) == -2.0
    assert event_weight(event(kind="rate", weight=None), cfg) == 0.0


def test_tag_affinities_sum_item_weights_including_dislikes() -> None:
    evs = [
        event(content="1", kind="purchase", weight=5.0),
        event(content="3", kind="view", weight=1.0),
        event(content="2", kind="remove_from_cart", weight=-1.0),
    ]
    s = compute_signals("u1", evs, contents=CAT, vectors={}, config=CFG)
    assert s is not None
    assert s.tag_affinities["genre:Comedy"] == pytest.approx(6.0)
    assert s.tag_affinities["genre:Romance"] == pytest.approx(1.0)
    assert s.tag_affinities["genre:Drama"] == pytest.approx(-1.0)


def test_recent_ids_most_recent_first_and_seen_ids_complete() -> None:
    evs = [event(content=c, days=d) for c, d in [("1", 0), ("2", 1), ("1", 2), ("3", 1.5)]]
    s = compute_signals("u1", evs, contents=CAT, vectors={}, config=CFG)
    assert s is not None
    assert s.recent_ids == ("1", "3", "2")
    assert s.seen_ids == frozenset({"1", "2", "3"})


def test_preference_vector_is_weighted_normalised_centroid_of_liked_items() -> None:
    vecs = {"1": (1.0, 0.0), "2": (0.0, 1.0), "3": (1.0, 1.0)}
    evs = [
        event(content="1", weight=3.0),
        event(content="2", weight=1.0),
        event(content="3", kind="remove_from_cart", weight=-1.0),
    ]
    s = compute_signals("u1", evs, contents=CAT, vectors=vecs, config=CFG)
    assert s is not None and s.preference_vector is not None
    x, y = s.preference_vector
    assert math.hypot(x, y) == pytest.approx(1.0, abs=1e-5)
    assert x / y == pytest.approx(3.0, rel=1e-4)  # the disliked item does not pull it


def test_signals_do_not_depend_on_input_order() -> None:
    rows = [("1", 0, 1), ("2", 3, 5), ("3", 1, 2)]
    evs = [event(content=c, days=d, weight=w) for c, d, w in rows]
    a = compute_signals("u1", evs, contents=CAT, vectors={}, config=CFG)
    b = compute_signals("u1", list(reversed(evs)), contents=CAT, vectors={}, config=CFG)
    assert a == b
