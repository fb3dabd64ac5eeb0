"""Merge candidates from several recall sources, score, diversify, explain. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from worker.recsys_core.config import RankConfig
from worker.recsys_core.scoring import tag_score_bound, tag_scorer
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
    banned = signals.seen_ids if signals is not None else frozenset()
    if exclude:
        banned = banned | set(exclude)
    by_source: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if cand.content_id not in banned:
            group = by_source.get(cand.source)
            if group is None:
                by_source[cand.source] = [cand]
            else:
                group.append(cand)

    # Per item: [summed part, sources, best part, its source, its detail]. One
    # entry per item rather than four dicts: this loop runs for every candidate
    # of every request (~250), and the dict operations were most of its cost.
    acc: dict[str, list[Any]] = {}
    prior: dict[str, float] = {}
    prior_source = config.prior_source
    for source, cands in sorted(by_source.items()):
        top = max(c.score for c in cands)
        if source == prior_source:
            if top > 0:
                for cand in cands:
                    if cand.score > 0 and cand.content_id not in prior:
                        prior[cand.content_id] = cand.score / top
            continue
        weight = config.source_weights.get(source, 0.0)
        if weight == 0.0 or top <= 0.0:
            continue
        seen_here: set[str] = set()
        for cand in cands:
            cid, score = cand.content_id, cand.score
            if score <= 0 or cid in seen_here:
                continue
            seen_here.add(cid)
            part = weight * score / top
            entry = acc.get(cid)
            if entry is None:
                acc[cid] = [part, [source], part, source, cand.detail]
            else:
                entry[0] += part
                entry[1].append(source)
                if part > entry[2]:
                    entry[2], entry[3], entry[4] = part, source, cand.detail

    affinities = signals.tag_affinities if signals is not None else {}
    prior_boost, prior_alone, tag_weight = config.prior_boost, config.prior_alone, config.tag_weight
    bases: list[tuple[float, str]] = []  # (score before tags, id)
    for cid, entry in acc.items():
        base, q = entry[0], prior.get(cid, 0.0)
        if base > 0:
            base *= 1.0 + prior_boost * q
        else:  # a negative source weight: the prior alone, as for an item only it found
            base = prior_alone * q
            entry[2], entry[3], entry[4] = base, prior_source, ""
        bases.append((base, cid))
    for cid, q in prior.items():
        if cid not in acc:
            base = prior_alone * q
            acc[cid] = [base, [], base, prior_source, ""]
            bases.append((base, cid))

    size = max(k * config.candidate_multiplier, k)
    if len(bases) > size:
        # Tags move a score by at most ``reach``: an item whose score before tags
        # is more than twice that below the size-th best cannot reach the pool
        # (the margin covers the rounding), so its tags are not scored. Most
        # candidates are, and scoring their tags was a third of this function.
        reach = abs(tag_weight) * tag_score_bound(affinities)
        cut = sorted([b for b, _ in bases], reverse=True)[size - 1]
        floor = cut - 2 * reach - 1e-8
        bases = [bc for bc in bases if not bc[0] < floor]

    score_tag = tag_scorer(affinities)
    no_tags: tuple[str, ...] = ()
    # (-score, id): sorted as they are, best first and ties by id
    ranked: list[tuple[float, str]] = []
    for base, cid in bases:
        content = contents.get(cid)
        # Rounded so that float noise (sums taken in another order by another
        # replica or a replay) can never reorder items: ties break by id.
        ranked.append((-round(base + tag_weight * score_tag(
            content.tags if content is not None else no_tags), 9), cid))
    ranked.sort()
    pool = [(-neg, cid) for neg, cid in ranked[:size]]

    chosen: list[RecommendedItem] = []
    tag_uses: dict[str, int] = defaultdict(int)
    leads: dict[str, str] = {}
    penalty = config.diversity_penalty
    while pool and len(chosen) < k:
        best_i, best_val = 0, float("-inf")
        for i, (score, cid) in enumerate(pool):
            if score <= best_val and penalty >= 0:
                break  # the pool is best first, and a penalty only lowers a score
            lead = leads.get(cid)
            if lead is None:
                lead = leads[cid] = _lead_tag(contents.get(cid), affinities)
            val = score - penalty * tag_uses[lead] if lead else score
            if val > best_val:
                best_i, best_val = i, val
        score, cid = pool.pop(best_i)
        lead = leads[cid]
        if lead:
            tag_uses[lead] += 1
        entry = acc[cid]
        source, detail = entry[3], entry[4]
        if source == "tags" and not detail and lead:
            detail = lead
        sources = entry[1] + [prior_source] if cid in prior else entry[1]
        chosen.append(
            RecommendedItem(
                content_id=cid,
                score=round(best_val, 6),
                reason=_reason(source, detail),
                sources=tuple(sorted(sources)),  # each source once, by name
            )
        )
    return tuple(chosen)


def _lead_tag(content: Content | None, affinities: Mapping[str, float]) -> str:
    """The item's tag the user likes most (else its first tag): its diversity bucket."""
    if content is None or not content.tags:
        return ""
    return max(content.tags, key=lambda t: (affinities.get(t, 0.0), t == content.tags[0]))
