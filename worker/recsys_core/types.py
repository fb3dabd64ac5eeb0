"""Frozen domain types shared by the core, the adapters and the agents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

Vector = Sequence[float]


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    """One user-item interaction, the canonical form of every event source.

    ``message_id`` is the idempotency key: RudderStack's ``messageId``, with
    ``:<index>`` appended for each line item of a multi-product event.
    ``timestamp`` is timezone-aware UTC, truncated to milliseconds.
    ``weight`` is ``None`` only for a rating event without a rating.
    """

    user_id: str
    content_id: str
    event_type: str
    timestamp: datetime
    weight: float | None
    message_id: str
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Content:
    """A catalogue item. ``tags`` are ``facet:label`` strings (``genre:Comedy``)."""

    id: str
    title: str = ""
    tags: tuple[str, ...] = ()
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A recalled item: which source found it and with what raw score."""

    content_id: str
    score: float
    source: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class UserSignals:
    """What the recommender knows about a user, derived from the buffered window only.

    ``item_weights`` holds the decayed, signed weight per interacted item;
    ``recent_ids`` is most-recent first; ``seen_ids`` is every item in the window.
    ``as_of`` is the newest event time in the window (event time, not wall
    clock), so recomputing from the same window always gives the same signals.
    """

    user_id: str
    as_of: datetime
    event_count: int
    counts_by_type: Mapping[str, int]
    item_weights: Mapping[str, float]
    tag_affinities: Mapping[str, float]
    recent_ids: tuple[str, ...]
    seen_ids: frozenset[str]
    preference_vector: tuple[float, ...] | None = None
    version: int = 1


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    """One recommended item with its score and why it was chosen."""

    content_id: str
    score: float
    reason: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The answer to a recommendation request."""

    user_id: str
    items: tuple[RecommendedItem, ...]
    cold_start: bool


class AppendStatus(IntEnum):
    """What appending one event to a buffer did."""

    DUPLICATE = 0  # same message id, same body: a redelivery, nothing changed
    ADDED = 1
    CONFLICT = 2  # same message id, different body: the first is kept; alert
    STALE = 3  # new, but already outside the user's window: dropped at once
