"""A read-through cache in front of a ContentStore's ``get`` and ``get_vectors``.

The ingest path looks up the same items again and again (every event recomputes
its user's signals from the whole window); the catalogue changes rarely. Entries
expire after ``ttl_seconds`` so catalogue updates are picked up, and the cache is
bounded (the oldest entries go first: an entry is refreshed when it expires,
so the catalogue's items in use stay in).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import numpy as np

from worker.expiring import MISSING, Expiring
from worker.recsys_core.ports import ContentStore
from worker.recsys_core.types import Candidate, Content, Vector

#: Tag searches kept by ``CachedContentStore`` (a few hundred candidates each).
TAG_SEARCHES_KEPT = 2048
#: A tag search that misses the cache asks for its limit rounded up to a multiple
#: of this. Serving's limit is ``k x candidate_multiplier`` plus what the user has
#: seen, so it differs from user to user: an answer kept for exactly one user's
#: limit missed for the next user with the same top tags and one more seen item
#: (measured: 385 of 1,000 requests scrolled the catalogue, ~1.3 ms each).
TAG_SEARCH_STEP = 64


class CachedContentStore:
    """ContentStore decorator caching ``get``/``get_vectors`` (misses cached too)."""

    def __init__(
        self,
        inner: ContentStore,
        *,
        maxsize: int = 200_000,
        ttl_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._contents = Expiring(maxsize, ttl_seconds, clock)
        self._vectors = Expiring(maxsize, ttl_seconds, clock)
        # tag keys -> (limit asked, answer)
        self._tag_searches = Expiring(TAG_SEARCHES_KEPT, ttl_seconds, clock)
        self.hits = 0
        self.misses = 0

    async def get(self, ids: Iterable[str]) -> dict[str, Content]:
        return await self._cached(ids, self._contents, self.inner.get)  # type: ignore[return-value]

    async def get_vectors(self, ids: Iterable[str]) -> dict[str, Vector]:
        return await self._cached(ids, self._vectors, self._fetch_vectors)  # type: ignore[return-value]

    async def _fetch_vectors(self, ids: list[str]) -> dict[str, Vector]:
        # Kept as float32 arrays: the signals' centroid stacks them without a copy
        # per element, and they take a quarter of the memory of tuples of floats.
        found = await self.inner.get_vectors(ids)
        return {cid: np.asarray(v, dtype=np.float32) for cid, v in found.items()}

    async def _cached(self, ids: Iterable[str], lru: Expiring, fetch) -> dict[str, object]:  # type: ignore[no-untyped-def]
        # The hot path of every apply (each window's items): one clock read per
        # call and one dict lookup per id.
        out: dict[str, object] = {}
        todo: list[str] = []
        now = lru.clock()
        for cid in ids if isinstance(ids, set | frozenset) else dict.fromkeys(ids):
            val = lru.get(cid, now)
            if val is MISSING:
                todo.append(cid)
            elif val is not None:
                out[cid] = val
        self.hits += len(out)
        if todo:
            self.misses += len(todo)
            found = await fetch(todo)
            for cid in todo:
                val = found.get(cid)
                lru.put(cid, val)
                if val is not None:
                    out[cid] = val
        return out

    async def search_vector(self, vector: Vector, *, limit: int) -> list[Candidate]:
        return await self.inner.search_vector(vector, limit=limit)

    async def search_tags(self, tag_keys: Sequence[str], *, limit: int) -> list[Candidate]:
        """Cached by the tag keys (users share their top tags). A tag search is a
        filter scrolled in point id order, so the first ``limit`` items of a
        longer cached answer are the answer for ``limit``: a miss asks for
        ``limit`` rounded up to a multiple of ``TAG_SEARCH_STEP``, so that users
        who share those tags, whose limits differ by a few seen items, hit.

        An answer is kept as tuples of strings and floats, not as ``Candidate``
        objects: the garbage collector stops tracking such tuples after their
        first young collection, while a few hundred cached answers of ~60
        objects each would be walked by every collection until they expire."""
        key = tuple(tag_keys)
        hit = self._tag_searches.get(key, self._tag_searches.clock())
        if hit is not MISSING:
            asked, kept = cast(tuple[int, _Kept], hit)
            if limit <= asked or len(kept[0]) < asked:
                return _candidates(kept, limit)
        ask = -(-limit // TAG_SEARCH_STEP) * TAG_SEARCH_STEP
        found = await self.inner.search_tags(tag_keys, limit=ask)
        self._tag_searches.put(key, (ask, _kept(found)))
        return found[:limit]


#: Candidates as parallel tuples: ids, scores, sources, details.
_Kept = tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...], tuple[str, ...]]


def _kept(found: Sequence[Candidate]) -> _Kept:
    return (tuple(c.content_id for c in found), tuple(c.score for c in found),
            tuple(c.source for c in found), tuple(c.detail for c in found))


def _candidates(kept: _Kept, limit: int) -> list[Candidate]:
    ids, scores, sources, details = (col[:limit] for col in kept)
    return list(map(Candidate, ids, scores, sources, details))
