"""CachedContentStore: cached tag searches answer exactly as the store would."""

from __future__ import annotations

from collections.abc import Sequence

from worker.adapters.memory import InMemoryContentStore
from worker.catalog_cache import TAG_SEARCH_STEP, CachedContentStore
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
    # the miss asked for a whole step and got all 10 items: the answer is
    # complete, so any longer limit is served from it too
    assert await cached.search_tags(["genre:a"], limit=80) == \
        await inner.search_tags(["genre:a"], limit=80)
    assert inner.tag_searches == 6
    assert len(await cached.search_tags(["genre:b"], limit=50)) == 10
    assert len(await cached.search_tags(["genre:b"], limit=80)) == 10
    assert inner.tag_searches == 7
    # tag order is part of the key (it decides each candidate's detail)
    assert await cached.search_tags(["genre:b", "genre:a"], limit=4) == \
        await inner.search_tags(["genre:b", "genre:a"], limit=4)
    assert inner.tag_searches == 9


async def test_a_miss_asks_a_whole_step_so_nearby_limits_hit() -> None:
    """Serving's limit varies by a few items from user to user (it counts what the
    user has seen): a miss asks for the limit rounded up to TAG_SEARCH_STEP, and
    every limit up to that is then answered from the cache, exactly as the store
    would answer it; a longer limit is asked of the store again."""
    inner = Counting()
    await inner.upsert([(Content(str(i), tags=("genre:a",)), (1.0, float(i)))
                        for i in range(3 * TAG_SEARCH_STEP)])
    cached = CachedContentStore(inner, ttl_seconds=10, clock=lambda: 0.0)
    first = TAG_SEARCH_STEP + 5
    assert await cached.search_tags(["genre:a"], limit=first) == \
        await inner.search_tags(["genre:a"], limit=first)
    assert inner.tag_searches == 2
    for limit in (first + 1, 2 * TAG_SEARCH_STEP, 3, first):
        got = await cached.search_tags(["genre:a"], limit=limit)
        assert got == await inner.search_tags(["genre:a"], limit=limit)
        assert len(got) == limit
    assert inner.tag_searches == 2 + 4  # the reference calls only
    longer = 2 * TAG_SEARCH_STEP + 1
    assert await cached.search_tags(["genre:a"], limit=longer) == \
        await inner.search_tags(["genre:a"], limit=longer)
    assert inner.tag_searches == 2 + 4 + 2


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
