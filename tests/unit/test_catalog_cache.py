"""CachedContentStore: cached tag searches answer exactly as the store would."""

from __future__ import annotations

from collections.abc import Sequence

from worker.adapters.memory import InMemoryContentStore
from worker.catalog_cache import CachedContentStore
from worker.recsys_core.types import Candidate, Content


class Counting(InMemoryContentStore):
    def __init__(self) -> None:
        super().__init__(dim=2)
        self.tag_searches = 0

    async def search_tags(self, tag_keys: Sequence[str], *, limit: int) -> list[Candidate]:
        self.tag_searches += 1
        return await super().search_tags(tag_keys, limit=limit)


async def _store() -> Counting:
    store = Counting()
    await store.upsert([(Content(str(i), tags=("genre:a",) if i % 2 else ("genre:b",)),
                         (1.0, float(i))) for i in range(20)])
    return store


async def test_tag_searches_are_cached_and_a_longer_answer_serves_a_shorter_one() -> None:
    inner = await _store()
    now = [0.0]
    cached = CachedContentStore(inner, ttl_seconds=10, clock=lambda: now[0])
    for limit in (6, 3, 6, 1):
        assert await cached.search_tags(["genre:a"], limit=limit) == \
            await inner.search_tags(["genre:a"], limit=limit)
    assert inner.tag_searches == 1 + 4  # one miss, plus the four reference calls
    # a longer answer than cached is asked of the store; an exhausted one is not
    assert await cached.search_tags(["genre:a"], limit=8) == \
        await inner.search_tags(["genre:a"], limit=8)
    assert inner.tag_searches == 7
    assert len(await cached.search_tags(["genre:b"], limit=50)) == 10
    assert len(await cached.search_tags(["genre:b"], limit=80)) == 10
    assert inner.tag_searches == 8
    # tag order is part of the key (it decides each candidate's detail)
    assert await cached.search_tags(["genre:b", "genre:a"], limit=4) == \
        await inner.search_tags(["genre:b", "genre:a"], limit=4)
    assert inner.tag_searches == 10


async def test_tag_searches_expire() -> None:
    inner = await _store()
    now = [0.0]
    cached = CachedContentStore(inner, ttl_seconds=10, clock=lambda: now[0])
    await cached.search_tags(["genre:a"], limit=3)
    now[0] = 11.0
    await cached.search_tags(["genre:a"], limit=3)
    assert inner.tag_searches == 2


async def test_a_cached_answer_cannot_be_changed_by_the_caller() -> None:
    cached = CachedContentStore(await _store())
    first = await cached.search_tags(["genre:a"], limit=3)
    first.clear()
    assert len(await cached.search_tags(["genre:a"], limit=3)) == 3
