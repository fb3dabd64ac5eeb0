"""Ranking: merging sources, excluding seen items, diversity, reasons; and score_tag."""

import pytest

from tests.factories import content, event
from worker.recsys_core.config import RankConfig, SignalConfig
from worker.recsys_core.ranking import rank
from worker.recsys_core.scoring import cosine, score_tag, top_tags
from worker.recsys_core.signals import compute_signals
from worker.recsys_core.types import Candidate

CFG = RankConfig()


def test_score_tag_is_graded_and_signed() -> None:
    aff = {"genre:Comedy": 4.0, "genre:Drama": 2.0, "genre:Horror": -2.0}
    assert score_tag(aff, ["genre:Comedy"]) == pytest.approx(1.0)
    assert score_tag(aff, ["genre:Drama"]) == pytest.approx(0.5)
    assert score_tag(aff, ["genre:Comedy", "genre:Drama"]) == pytest.approx(1.25)
    assert score_tag(aff, ["genre:Horror"]) < 0
    assert score_tag(aff, ["genre:Western"]) == 0.0
    assert score_tag({}, ["genre:Comedy"]) == 0.0


def test_top_tags_only_positive_strongest_first() -> None:
    assert top_tags({"a": 1.0, "b": 3.0, "c": -5.0}, 5) == ["b", "a"]


def test_cosine() -> None:
    assert cosine((1.0, 0.0), (1.0, 0.0)) == pytest.approx(1.0)
    assert cosine((1.0, 0.0), (0.0, 1.0)) == pytest.approx(0.0)
    assert cosine((0.0, 0.0), (1.0, 0.0)) == 0.0


def _signals():
    cat = {c.id: c for c in [content("1", "genre:Comedy"), content("2", "genre:Comedy")]}
    evs = [event(content="1", weight=5.0), event(content="2", weight=5.0)]
    s = compute_signals("u1", evs, contents=cat, vectors={}, config=SignalConfig())
    assert s is not None
    return s


def test_rank_excludes_seen_and_requested_items() -> None:
    cat = {c.id: c for c in [content(str(i), "genre:Comedy") for i in range(1, 8)]}
    cands = [Candidate(str(i), 1.0 / i, "popular") for i in range(1, 8)]
    out = rank(cands, contents=cat, signals=_signals(), k=10, exclude={"5"}, config=CFG)
    ids = [it.content_id for it in out]
    assert ids == ["3", "4", "6", "7"]


def test_rank_prefers_liked_tags_and_explains() -> None:
    cat = {
        "10": content("10", "genre:Drama"),
        "11": content("11", "genre:Comedy"),
    }
    cands = [Candidate("10", 1.0, "popular"), Candidate("11", 0.9, "popular")]
    out = rank(cands, contents=cat, signals=_signals(), k=2, config=CFG)
    assert [it.content_id for it in out] == ["11", "10"]
    assert out[0].reason == "popular right now"


def test_rank_merges_sources_and_sums_evidence() -> None:
    cat = {c: content(c) for c in "abc"}
    cands = [
        Candidate("a", 1.0, "vector"),
        Candidate("b", 0.9, "vector"),
        Candidate("b", 5.0, "co", detail="x"),
        Candidate("c", 2.0, "co", detail="x"),
    ]
    out = rank(cands, contents=cat, signals=None, k=3, config=CFG)
    assert out[0].content_id == "b"
    assert set(out[0].sources) == {"vector", "co"}
    assert out[0].reason == "people who engaged with x also engaged with this"


def test_rank_keeps_diversity_across_tags() -> None:
    cat = {str(i): content(str(i), "genre:Comedy") for i in range(10)}
    cat["d"] = content("d", "genre:Drama")
    cands = [Candidate(str(i), 1.0 - i * 0.01, "popular") for i in range(10)]
    cands.append(Candidate("d", 0.8, "popular"))
    cfg = RankConfig(diversity_penalty=0.1, tag_weight=0.0)
    out = rank(cands, contents=cat, signals=None, k=5, config=cfg)
    assert "d" in [it.content_id for it in out]
    no_div = rank(cands, contents=cat, signals=None, k=5,
                  config=RankConfig(diversity_penalty=0.0, tag_weight=0.0))
    assert "d" not in [it.content_id for it in no_div]


def test_rank_returns_at_most_k_and_handles_nothing() -> None:
    assert rank([], contents={}, signals=None, k=5, config=CFG) == ()
    cands = [Candidate(str(i), 1.0, "popular") for i in range(20)]
    assert len(rank(cands, contents={}, signals=None, k=5, config=CFG)) == 5
    assert rank(cands, contents={}, signals=None, k=0, config=CFG) == ()
