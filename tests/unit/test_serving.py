"""Recommender: the Redis reads run alongside the catalogue searches; a failure
in either surfaces as before and leaves no read running."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from tests.factories import T0
from worker.adapters.memory import InMemoryContentStore, InMemoryEmbeddingModel, InMemoryEventBuffer
from worker.recsys_core.config import RankConfig
from worker.recsys_core.errors import StoreError, TransientStoreError
from worker.recsys_core.types import Candidate, Content, UserSignals
from worker.serving import Recommender, Request


def _signals() -> UserSignals:
    return UserSignals(user_id="u", as_of=T0 + timedelta(0), event_count=2,
                       counts_by_type={"view": 2}, item_weights={"1": 1.0, "2": 0.5},
                       tag_affinities={"genre:a": 1.0}, recent_ids=("1", "2"),
                       seen_ids=frozenset({"1", "2"}), preference_vector=(1.0, 0.0))


class SlowFailingStats(InMemoryEventBuffer):
    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False

    async def co_candidates(
        self, weights: Sequence[tuple[str, float]], *, per_item: int, limit: int
    ) -> list[Candidate]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return []

    async def popular(self, limit: int) -> list[tuple[str, float]]:
        raise TransientStoreError("redis unavailable")


class BrokenContent(InMemoryContentStore):
    async def search_vector(self, vector: Sequence[float], *, limit: int) -> list[Candidate]:
        raise StoreError("qdrant down")


async def _content(store: InMemoryContentStore) -> InMemoryContentStore:
    await store.upsert([(Content(str(i), tags=("genre:a",)), (1.0, float(i))) for i in range(6)])
    return store


async def test_a_redis_failure_surfaces() -> None:
    stats = InMemoryEventBuffer()

    async def popular(limit: int) -> list[tuple[str, float]]:
        raise TransientStoreError("redis unavailable")

    stats.popular = popular  # type: ignore[method-assign]
    rec = Recommender(content=await _content(InMemoryContentStore()),
                      embedder=InMemoryEmbeddingModel(dim=2), popularity=stats,
                      rank_config=RankConfig())
    with pytest.raises(TransientStoreError):
        await rec.recommend(Request("u", 3), _signals())


async def test_a_catalogue_failure_stops_the_redis_reads() -> None:
    stats = SlowFailingStats()
    rec = Recommender(content=await _content(BrokenContent()),
                      embedder=InMemoryEmbeddingModel(dim=2), popularity=stats,
                      rank_config=RankConfig())
    with pytest.raises(StoreError, match="qdrant down"):
        await rec.recommend(Request("u", 3), _signals())
    await asyncio.sleep(0)
    assert stats.cancelled
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_recommends_from_every_source() -> None:
    stats = InMemoryEventBuffer()
    rec = Recommender(content=await _content(InMemoryContentStore()),
                      embedder=InMemoryEmbeddingModel(dim=2), popularity=stats,
                      rank_config=RankConfig())
    out = await rec.recommend(Request("u", 3), _signals())
    assert len(out.items) == 3
    assert all(it.content_id not in {"1", "2"} for it in out.items)
    assert {"vector", "tags"} <= {s for it in out.items for s in it.sources}
