"""The four ports. Narrow Protocols with only the methods the core and agents call.

IO ports are async (the agents run on asyncio); the embedding model is a CPU-bound
synchronous call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from worker.recsys_core.types import Candidate, Content, InteractionEvent, UserSignals, Vector


@runtime_checkable
class EventSource(Protocol):
    """A user's buffered interactions (the last ``window_days`` by event time)."""

    async def fetch_events(self, user_id: str) -> Sequence[InteractionEvent]:
        """Return the user's buffered events, oldest first."""
        ...


@runtime_checkable
class EventBuffer(EventSource, Protocol):
    """An EventSource that also takes appends (idempotent by ``message_id``)."""

    async def append(self, event: InteractionEvent) -> bool:
        """Store the event; return False when it was already there (a redelivery)."""
        ...


@runtime_checkable
class ContentStore(Protocol):
    """The catalogue with its vectors and tag index."""

    async def get(self, ids: Iterable[str]) -> dict[str, Content]:
        """Payloads of the known ids; unknown ids are absent from the result."""
        ...

    async def get_vectors(self, ids: Iterable[str]) -> dict[str, Vector]:
        """Embeddings of the known ids."""
        ...

    async def search_vector(self, vector: Vector, *, limit: int) -> list[Candidate]:
        """Top ``limit`` items by cosine similarity, best first."""
        ...

    async def search_tags(self, tag_keys: Sequence[str], *, limit: int) -> list[Candidate]:
        """Items carrying any of ``tag_keys`` (a filter, not a ranker)."""
        ...


@runtime_checkable
class CatalogWriter(Protocol):
    """The write side of a content store, used by catalogue loading."""

    async def upsert(self, items: Sequence[tuple[Content, Vector]]) -> None:
        """Insert or replace items with their vectors."""
        ...


@runtime_checkable
class UserModelStore(Protocol):
    """The materialised ``UserSignals`` per user."""

    async def get_signals(self, user_id: str) -> UserSignals | None:
        """The saved signals, or None for an unknown (or expired) user."""
        ...

    async def save_signals(self, signals: UserSignals) -> None:
        """Save the signals (with the store's TTL)."""
        ...


@runtime_checkable
class EmbeddingModel(Protocol):
    """Text to vector."""

    @property
    def dim(self) -> int:
        """The vector size."""
        ...

    def encode(self, text: str) -> Vector:
        """Embed one text (L2-normalised)."""
        ...


__all__ = [
    "CatalogWriter",
    "ContentStore",
    "EmbeddingModel",
    "EventBuffer",
    "EventSource",
    "UserModelStore",
]
