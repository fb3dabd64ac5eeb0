"""Frozen domain types shared by the core, the adapters and the agents."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
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
    preference_vector: Sequence[float] | None = None
    version: int = 1


class Float32Vector(Sequence[float]):
    """A vector of float32 values held as their bytes (``raw``, little-endian),
    read as Python floats only when asked: the ingest path computes a
    preference vector per touched user only to store those bytes, and making
    384 floats of it cost more than the rest of its arithmetic. Equal to the
    tuple of its values (and hashed like it)."""

    __slots__ = ("_values", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) % 4:
            raise ValueError(f"float32 bytes come in fours, not {len(raw)}")
        self.raw = raw
        self._values: tuple[float, ...] | None = None

    def values(self) -> tuple[float, ...]:
        if self._values is None:
            self._values = struct.unpack(f"<{len(self.raw) // 4}f", self.raw)
        return self._values

    def __len__(self) -> int:
        return len(self.raw) // 4

    def __getitem__(self, i: Any) -> Any:
        return self.values()[i]

    def __iter__(self) -> Iterator[float]:
        return iter(self.values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Float32Vector):
            return self.raw == other.raw or self.values() == other.values()
        if isinstance(other, tuple):
            return self.values() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        return f"Float32Vector({self.values()!r})"


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
