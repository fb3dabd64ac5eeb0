"""CachedContentStore.get / get_vectors: hits, cached misses, expiry and the bound."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from worker.adapters.memory import InMemoryContentStore
from worker.catalog_cache import CachedContentStore
from worker.recsys_core.types import Content, Vector


class Counting(InMemoryContentStore):
    def __init__(self) -> None:
        super().__init__(dim=2)
        self.asked: list[set[str]] = []

    async def get(self, ids: Iterable[str]) -> dict[str, Content]:
        ids = set(ids)
        self.asked.append(ids)
        return await super().get(ids)

    async def get_vectors(self, ids: Iterable[str]) -> dict[str, Vector]:
        ids = set(ids)
        self.asked.append(ids)
        return await super().get_vectors(ids)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _store() -> Counting:
    store = Counting()
    await store.upsert([(Content(str(i), title=f"t{i}"), (1.0, float(i))) for i in range(5)])
    return store


async def test_hits_and_misses_are_cached_until_they_expire() -> None:
    inner, clock = await _store(), Clock()
    cache = CachedContentStore(inner, ttl_seconds=10, clock=clock)
    first = await cache.get({"1", "2", "nope"})
    assert set(first) == {"1", "2"} and first["1"].title == "t1"
    assert await cache.get({"1", "nope"}) == {"1": first["1"]}
    assert inner.asked == [{"1", "2", "nope"}]  # the unknown id was cached as a miss
    clock.now = 10.5
    await cache.get({"1", "nope"})
    assert inner.asked[-1] == {"1", "nope"}  # expired: asked again
    assert (cache.hits, cache.misses) == (1, 5)  # hits count found items only


async def test_vectors_come_back_as_float32_arrays_and_lists_of_ids_work() -> None:
    inner = await _store()
    cache = CachedContentStore(inner, clock=Clock())
    vecs = await cache.get_vectors(["3", "3", "4"])
    assert set(vecs) == {"3", "4"} and vecs["3"].dtype.name == "float32"
    want = np.asarray((await inner.get_vectors(["4"]))["4"], dtype=np.float32)
    assert vecs["4"].tolist() == want.tolist()
    assert await cache.get_vectors(("4",)) == {"4": vecs["4"]}
    assert len(inner.asked) == 2  # the cache once, the comparison above once


async def test_the_cache_is_bounded_and_the_oldest_entry_goes_first() -> None:
    inner = await _store()
    cache = CachedContentStore(inner, maxsize=2, clock=Clock())
    for cid in ("0", "1", "2"):
        await cache.get([cid])
    await cache.get(["1", "2"])
    assert len(inner.asked) == 3  # "1" and "2" still held
    await cache.get(["0"])
    assert inner.asked[-1] == {"0"}  # "0" went first
