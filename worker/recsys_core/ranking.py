"""Merge candidates from several recall sources, score, diversify, explain. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping

from worker.recsys_core.config import RankConfig
from worker.recsys_core.scoring import tag_scorer
from worker.recsys_core.types import Candidate, Content, RecommendedItem, UserSignals


def _reason(source: str, detail: str) -> str:
    """A short human-readable reason for the source that contributed most."""
    if source == "co":
        if detail:
            return f"people who engaged with {detail} also engaged with this"
        return "people with similar taste engaged with this"
    if source == "tags":
        return f"matches your interest in {detail}" if detail else "matches your interests"
    if source == "vector":
        return "similar to what you engaged with"
    if source == "query":
        return "matches your search"
    if source == "popular":
        return "popular right now"
    return f"recommended via {source}"


def rank(
    candidates: Iterable[Candidate],
    *,
    contents: Mapping[str, Content],
    signals: UserSignals | None,
    k: int,
    exclude: Collection[str] = (),
    config: RankConfig,
) -> tuple[RecommendedItem, ...]:
    """Return the top ``k`` items with a reason each.

    Scores within a source are scaled to [0, 1] by that source's best score, so
    sources with different scales (cosine, co-occurrence counts) mix by their
    configured weights. Popularity is a prior, not evidence: it multiplies an
    item's personal score by ``1 + prior_boost * popularity``, and an item that
    only popularity recalled scores ``prior_alone * popularity`` (so a user who
    engaged with one kind of item sees that kind first, and a new user still
    gets popular items). Items the user has seen or asked to exclude never
    appear. A greedy pass penalises an item for each already chosen item
    that shares its leading tag, keeping some diversity across tags.
    """
    if k <= 0:
        return ()
    banned = set(exclude)
    if signals is not None:
        banned |= signals.seen_ids
    by_source: dict[str, list[Candidate]] = defaultdict(list)
    for cand in candidates:
        if cand.content_id not in banned:
            by_source[cand.source].append(cand)

    combined: dict[str, float] = defaultdict(float)
    prior: dict[str, float] = {}
    best_part: dict[str, tuple[float, str, str]] = {}
    sources_of: dict[str, list[str]] = defaultdict(list)
    for source, cands in sorted(by_source.items()):
        top = max((c.score for c in cands), default=0.0)
        if source == config.prior_source:
            for cand in cands:
                if top > 0 and cand.score > 0 and cand.content_id not in prior:
                    prior[cand.content_id] = cand.score / top
                    sources_of[cand.content_id].append(source)
            continue
        weight = config.source_weights.get(source, 0.0)
        if weight == 0.0 or top <= 0.0:
            continue
        seen_here: set[str] = set()
        for cand in cands:
            if cand.content_id in seen_here or cand.score <= 0:
                continue
            seen_here.add(cand.content_id)
            part = weight * cand.score / top
            combined[cand.content_id] += part
            sources_of[cand.content_id].append(source)
            prev = best_part.get(cand.content_id)
            if prev is None or part > prev[0]:
                best_part[cand.content_id] = (part, source, cand.detail)

    affinities = signals.tag_affinities if signals is not None else {}
    score_tag = tag_scorer(affinities)
    prior_boost, prior_alone, tag_weight = config.prior_boost, config.prior_alone, config.tag_weight
    # (-score, id): sorted as they are, best first and ties by id
    ranked: list[tuple[float, str]] = []
    for cid in combined.keys() | prior.keys():
        base, q = combined.get(cid, 0.0), prior.get(cid, 0.0)
        if base > 0:
            base *= 1.0 + prior_boost * q
        else:
            base = prior_alone * q
            best_part[cid] = (base, config.prior_source, "")
        content = contents.get(cid)
        tags = content.tags if content is not None else ()
        # Rounded so that float noise (sums taken in another order by another
        # replica or a replay) can never reorder items: ties break by id.
        ranked.append((-round(base + tag_weight * score_tag(tags), 9), cid))
    ranked.sort()
    pool = [(-neg, cid) for neg, cid in ranked[: max(k * config.candidate_multiplier, k)]]

    chosen: list[RecommendedItem] = []
    tag_uses: dict[str, int] = defaultdict(int)
    leads = {cid: _lead_tag(contents.get(cid), affinities) for _, cid in pool}
    while pool and len(chosen) < k:
        best_i, best_val = 0, float("-inf")
        for i, (score, cid) in enumerate(pool):
            lead = leads[cid]
            val = score - config.diversity_penalty * tag_uses[lead] if lead else score
            if val > best_val:
                best_i, best_val = i, val
        score, cid = pool.pop(best_i)
        lead = leads[cid]
        if lead:
            tag_uses[lead] += 1
        _, source, detail = best_part[cid]
        if source == "tags" and not detail and lead:
            detail = lead
        chosen.append(
            RecommendedItem(
                content_id=cid,
                score=round(best_val, 6),
                reason=_reason(source, detail),
                sources=tuple(sources_of[cid]),
            )
        )
    return tuple(chosen)


def _lead_tag(content: Content | None, affinities: Mapping[str, float]) -> str:
    """The item's tag the user likes most (else its first tag): its diversity bucket."""
    if content is None or not content.tags:
        return ""
    return max(content.tags, key=lambda t: (affinities.get(t, 0.0), t == content.tags[0]))
