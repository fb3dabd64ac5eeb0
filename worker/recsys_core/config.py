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
    Decay is exponential in event time, relative to the newest event.
    """

    type_weights: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    rating_neutral: float = 2.5
    half_life_days: float = 14.0
    max_recent: int = 50
    max_tags: int = 64
    max_vector_items: int = 50


@dataclass(frozen=True, slots=True)
class RankConfig:
    """How recalled candidates are merged, scored and diversified."""

    source_weights: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"co": 1.0, "vector": 0.6, "tags": 0.3, "query": 1.0, "popular": 0.25}
        )
    )
    tag_weight: float = 0.35
    diversity_penalty: float = 0.15
    candidate_multiplier: int = 5
