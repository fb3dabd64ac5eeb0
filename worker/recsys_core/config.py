"""Tunable knobs of the pure core, passed in as arguments (never read from env here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _frozen(d: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(d)


@dataclass(frozen=True, slots=True)
class SignalConfig:
    """How a window of events becomes ``UserSignals``.

    ``type_weights`` overrides the weight the normaliser gave an event type (an
    empty mapping keeps the normaliser's). Ratings (``rate``) are centred on
    ``rating_neutral`` so a low rating counts against an item and its tags.
    Decay is exponential in event time, relative to the newest event. On a 0-5
    scale a neutral of 3.5 makes 3 stars a mild negative: tuned on MovieLens.
    """

    type_weights: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    rating_neutral: float = 3.5
    half_life_days: float = 14.0
    max_recent: int = 50
    max_tags: int = 64
    max_vector_items: int = 50


@dataclass(frozen=True, slots=True)
class RankConfig:
    """How recalled candidates are merged, scored and diversified.

    The defaults were chosen with ``make eval`` on MovieLens (see the README's
    quality section): co-interaction recall carries most of the signal,
    popularity is a strong prior, content similarity and tags refine.
    """

    source_weights: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"co": 1.0, "query": 1.0, "vector": 0.15, "tags": 0.15}
        )
    )
    prior_source: str = "popular"
    prior_boost: float = 1.0
    prior_alone: float = 0.3
    tag_weight: float = 0.05
    diversity_penalty: float = 0.05
    candidate_multiplier: int = 5
    co_sources: int = 100  # the user's heaviest items used for co-interaction recall
    co_per_item: int = 300  # partners read per item
