"""Ranking: merging sources, excluding seen items, diversity, reasons; and score_tag."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import content, event
from worker.recsys_core.config import RankConfig, SignalConfig
from worker.recsys_core.ranking import _reason as rank_reason
from worker.recsys_core.ranking import rank
from worker.recsys_core.scoring import cosine, score_tag, tag_score_bound, top_tags
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


def test_score_tag_ties_keep_the_items_tag_order() -> None:
    """Tags liked and disliked equally: the item's own tag order decides which
    counts fully (a set's order would differ between processes)."""
    aff = {"a": 1.0, "b": -1.0}
    assert score_tag(aff, ("a", "b")) == 0.5
    assert score_tag(aff, ("b", "a")) == -0.5
    assert score_tag(aff, ("a", "a", "b")) == 0.5  # a repeated tag counts once


@settings(max_examples=300, deadline=None)
@given(aff=st.dictionaries(st.sampled_from("abcdef"),
                           st.floats(-5, 5, allow_nan=False, allow_subnormal=False)),
       tags=st.lists(st.sampled_from("abcdefg"), max_size=6))
def test_tag_score_bound_bounds_every_item(aff: dict[str, float], tags: list[str]) -> None:
    assert abs(score_tag(aff, tags)) <= tag_score_bound(aff)


def test_rank_tags_can_lift_an_item_into_the_pool() -> None:
    """The pool takes one item (k=1): the second-best before tags wins on its tags,
    so it must not be left out before its tags are scored."""
    cat = {"a": content("a", "genre:Drama"), "b": content("b", "genre:Comedy")}
    cands = [Candidate("a", 1.0, "popular"), Candidate("b", 0.9, "popular")]
    cfg = RankConfig(candidate_multiplier=1)  # 0.30 vs 0.27 + 0.05 for the tag
    out = rank(cands, contents=cat, signals=_signals(), k=1, config=cfg)
    assert [it.content_id for it in out] == ["b"]


# --- the ranking against a plain implementation of its rules ----------------------


def _reference_score_tag(aff: dict[str, float], tags: tuple[str, ...]) -> float:
    if not aff:
        return 0.0
    top = max(aff.values())
    scale = top if top > 0 else max(abs(v) for v in aff.values())
    if scale == 0:
        return 0.0
    matched = [aff[t] / scale for t in dict.fromkeys(tags) if t in aff]
    matched.sort(key=abs, reverse=True)
    return sum(v * 0.5**i for i, v in enumerate(matched)) if matched else 0.0


def _reference_rank(cands, contents, signals, k, exclude, cfg):  # type: ignore[no-untyped-def]
    """The rules of ``rank`` written plainly: per source, scale by its best score
    and weight; popularity multiplies, or scores alone; tags add; greedy diversity."""
    if k <= 0:
        return ()
    banned = set(exclude) | (signals.seen_ids if signals is not None else set())
    by_source: dict[str, list[Candidate]] = {}
    for c in cands:
        if c.content_id not in banned:
            by_source.setdefault(c.source, []).append(c)
    combined: dict[str, float] = {}
    prior: dict[str, float] = {}
    best: dict[str, tuple[float, str, str]] = {}
    sources: dict[str, list[str]] = {}
    for source, group in sorted(by_source.items()):
        top = max(c.score for c in group)
        if source == cfg.prior_source:
            for c in group:
                if top > 0 and c.score > 0 and c.content_id not in prior:
                    prior[c.content_id] = c.score / top
                    sources.setdefault(c.content_id, []).append(source)
            continue
        weight = cfg.source_weights.get(source, 0.0)
        if weight == 0.0 or top <= 0.0:
            continue
        done: set[str] = set()
        for c in group:
            if c.content_id in done or c.score <= 0:
                continue
            done.add(c.content_id)
            part = weight * c.score / top
            combined[c.content_id] = combined.get(c.content_id, 0.0) + part
            sources.setdefault(c.content_id, []).append(source)
            if c.content_id not in best or part > best[c.content_id][0]:
                best[c.content_id] = (part, source, c.detail)
    aff = dict(signals.tag_affinities) if signals is not None else {}
    ranked = []
    for cid in set(combined) | set(prior):
        base, q = combined.get(cid, 0.0), prior.get(cid, 0.0)
        if base > 0:
            base *= 1.0 + cfg.prior_boost * q
        else:
            base = cfg.prior_alone * q
            best[cid] = (base, cfg.prior_source, "")
        tags = contents[cid].tags if cid in contents else ()
        ranked.append((-round(base + cfg.tag_weight * _reference_score_tag(aff, tags), 9), cid))
    ranked.sort()
    pool = [(-neg, cid) for neg, cid in ranked[: max(k * cfg.candidate_multiplier, k)]]

    def lead_of(cid: str) -> str:
        c = contents.get(cid)
        if c is None or not c.tags:
            return ""
        return max(c.tags, key=lambda t: (aff.get(t, 0.0), t == c.tags[0]))

    out = []
    uses: dict[str, int] = {}
    while pool and len(out) < k:
        vals = [(s - cfg.diversity_penalty * uses.get(lead_of(cid), 0)
                 if lead_of(cid) else s) for s, cid in pool]
        i = max(range(len(pool)), key=lambda j: (vals[j], -j))  # first of the best
        _, cid = pool.pop(i)
        lead = lead_of(cid)
        if lead:
            uses[lead] = uses.get(lead, 0) + 1
        _, source, detail = best[cid]
        if source == "tags" and not detail and lead:
            detail = lead
        out.append((cid, round(vals[i], 6), source, detail, tuple(sources[cid])))
    return tuple(out)


_IDS = st.sampled_from([f"i{n}" for n in range(30)])
_TAGS = st.sampled_from(["genre:A", "genre:B", "genre:C", "mood:x"])


@settings(max_examples=300, deadline=None)
@given(
    cands=st.lists(st.builds(
        Candidate, _IDS, st.one_of(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 3.0]),
                                   st.floats(0.01, 2.0)),
        st.sampled_from(["co", "vector", "tags", "popular", "query", "other"]),
        st.sampled_from(["", "x", "y"])), max_size=40),
    tags=st.dictionaries(_IDS, st.lists(_TAGS, max_size=4).map(tuple)),
    aff=st.dictionaries(_TAGS, st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0])),
    seen=st.frozensets(_IDS, max_size=3),
    exclude=st.frozensets(_IDS, max_size=2),
    k=st.integers(0, 6),
    multiplier=st.integers(1, 3),
    penalty=st.sampled_from([-0.1, 0.0, 0.05, 0.5]),
    tag_weight=st.sampled_from([0.0, 0.05, 0.5, -0.2]),
    weights=st.fixed_dictionaries({"co": st.sampled_from([-0.5, 0.0, 1.0]),
                                   "vector": st.sampled_from([0.0, 0.15]),
                                   "tags": st.sampled_from([0.15, 1.0]),
                                   "query": st.just(1.0)}),
    with_signals=st.booleans(),
)
def test_rank_follows_its_rules(cands, tags, aff, seen, exclude, k, multiplier, penalty,  # type: ignore[no-untyped-def]
                                tag_weight, weights, with_signals) -> None:
    """The optimised ``rank`` gives exactly what the plain rules give: ids,
    scores, reasons and sources, with duplicates, zero and negative scores and
    weights, negative affinities and penalties, and more candidates than the
    pool takes (those whose tags cannot lift them into it are not tag-scored)."""
    from datetime import UTC, datetime

    from worker.recsys_core.types import UserSignals

    cfg = RankConfig(source_weights=weights, diversity_penalty=penalty,
                     candidate_multiplier=multiplier, tag_weight=tag_weight)
    contents = {cid: content(cid, *t) for cid, t in tags.items()}
    signals = UserSignals(user_id="u", as_of=datetime(2026, 1, 1, tzinfo=UTC), event_count=0,
                          counts_by_type={}, item_weights={}, tag_affinities=aff,
                          recent_ids=(), seen_ids=seen) if with_signals else None
    got = rank(cands, contents=contents, signals=signals, k=k, exclude=exclude, config=cfg)
    want = _reference_rank(cands, contents, signals, k, exclude, cfg)
    assert [(it.content_id, it.score, it.sources) for it in got] == \
        [(cid, score, srcs) for cid, score, _, _, srcs in want]
    assert [it.reason for it in got] == [
        rank_reason(source, detail) for _, _, source, detail, _ in want]
