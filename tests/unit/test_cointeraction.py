"""Pure parts of the real-time item statistics."""

import pytest

from tests.factories import event
from worker.recsys_core.cointeraction import (
    co_interaction_candidates,
    is_engaging,
    popularity_increment,
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
