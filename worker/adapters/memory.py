"""In-memory adapters (fakes) for tests and for running offline with zero infra.

Keep this module import-light: the standard library and ``worker.recsys_core`` only,
never a driver.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import orjson

from worker.recsys_core.codec import datetime_to_ms, signals_from_dict
from worker.recsys_core.cointeraction import (
    co_interaction_candidates,
    is_engaging,
    popularity_increment,
    stable_top,
)
from worker.recsys_core.errors import StoreError
from worker.recsys_core.signals import WindowRow
from worker.recsys_core.types import (
    AppendStatus,
    Candidate,
    Content,
    InteractionEvent,
    UserSignals,
    Vector,
)

__all__ = [
    "InMemoryContentStore",
    "InMemoryEmbeddingModel",
    "InMemoryEventBuffer",
    "InMemoryUserModelStore",
]

_RESERVED_PAYLOAD_KEYS = frozenset({"content_id", "title", "tag_labels"})


def _normalise(vector: Iterable[float]) -> tuple[float, ...]:
    vec = tuple(float(x) for x in vector)
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0.0 or not math.isfinite(norm):
        return vec
    return tuple(x / norm for x in vec)


class InMemoryContentStore:
    """ContentStore + CatalogWriter in a dict, with brute-force cosine search.

    Mirrors the Qdrant adapters: vectors are stored L2-normalised (as Qdrant does
    for cosine collections), scores are cosine similarities, the extra payload goes
    through a JSON round trip, the keys ``content_id``/``title``/``tag_labels`` are
    reserved, and ``search_tags`` is a filter returning ``source="tags"``
    candidates scored by how many requested tags each item carries, with the
    first requested tag it carries as ``detail`` (order: insertion order). The
    dimension is fixed by ``dim`` or by the first upsert; a vector of another size
    raises ``StoreError``.
    """

    def __init__(self, *, dim: int | None = None) -> None:
        self._dim = dim
        self._items: dict[str, Content] = {}
        self._vectors: dict[str, tuple[float, ...]] = {}

    async def ensure_collection(self, dim: int) -> None:
        """Fix the vector size (no-op when it already is ``dim``)."""
        if self._dim is None:
            self._dim = dim
        elif self._dim != dim:
            raise StoreError(f"in-memory store holds {self._dim}-dim vectors, not {dim}")

    def _check_dim(self, vector: Sequence[float]) -> None:
        if self._dim is not None and len(vector) != self._dim:
            raise StoreError(f"vector dimension error: expected dim {self._dim}, got {len(vector)}")

    async def upsert(self, items: Sequence[tuple[Content, Vector]]) -> None:
        """Insert or replace items with their vectors (all-or-nothing)."""
        staged: list[tuple[Content, tuple[float, ...]]] = []
        for content, vector in items:
            clash = _RESERVED_PAYLOAD_KEYS.intersection(content.payload)
            if clash:
                raise ValueError(
                    f"content {content.id!r}: payload keys {sorted(clash)} are reserved"
                )
            vec = tuple(float(x) for x in vector)
            if self._dim is None:
                self._dim = len(vec)
            self._check_dim(vec)
            try:
                payload = json.loads(json.dumps(dict(content.payload)))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"content {content.id!r}: payload is not JSON: {exc}") from exc
            stored = Content(
                id=content.id,
                title=content.title,
                tags=tuple(content.tags),
                payload=payload,
            )
            staged.append((stored, _normalise(vec)))
        for stored, vec in staged:
            self._items.pop(stored.id, None)  # a replaced item moves to the end
            self._items[stored.id] = stored
            self._vectors[stored.id] = vec

    async def get(self, ids: Iterable[str]) -> dict[str, Content]:
        """Payloads of the known ids; unknown ids are absent from the result."""
        return {cid: self._items[cid] for cid in map(str, ids) if cid in self._items}

    async def get_vectors(self, ids: Iterable[str]) -> dict[str, Vector]:
        """Stored (L2-normalised) embeddings of the known ids."""
        return {cid: self._vectors[cid] for cid in map(str, ids) if cid in self._vectors}

    async def search_vector(self, vector: Vector, *, limit: int) -> list[Candidate]:
        """Top ``limit`` items by cosine similarity, best first (ties by id)."""
        if limit <= 0 or not self._vectors:
            return []
        self._check_dim(vector)
        query = _normalise(vector)
        scored = [
            (sum(a * b for a, b in zip(query, vec, strict=True)), cid)
            for cid, vec in self._vectors.items()
        ]
        scored.sort(key=lambda sc: (-sc[0], sc[1]))
        return [Candidate(content_id=cid, score=s, source="vector") for s, cid in scored[:limit]]

    async def search_tags(self, tag_keys: Sequence[str], *, limit: int) -> list[Candidate]:
        """Up to ``limit`` items carrying any of ``tag_keys`` (a filter, not a ranker)."""
        keys = list(dict.fromkeys(tag_keys))
        if limit <= 0 or not keys:
            return []
        out: list[Candidate] = []
        for cid, content in self._items.items():
            carried = set(content.tags)
            hits = [t for t in keys if t in carried]
            if hits:
                out.append(Candidate(cid, float(len(hits)), "tags", hits[0]))
                if len(out) >= limit:
                    break
        return out

    async def count(self) -> int:
        return len(self._items)

    async def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


_TOKEN = re.compile(r"\w+", re.UNICODE)


class InMemoryEmbeddingModel:
    """Deterministic bag-of-words embedding by feature hashing (a test fake).

    Each lower-cased word token is hashed with blake2b (stable across processes,
    unlike ``hash``) to a bucket in ``[0, dim)`` and a sign; the signed counts are
    L2-normalised. Same text gives the same vector; texts sharing words have a
    positive cosine (barring rare sign collisions); a text without words gives the
    zero vector.
    """

    def __init__(self, dim: int = 64) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def _bucket(self, token: str) -> tuple[int, float]:
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        return (value >> 1) % self._dim, (1.0 if value & 1 else -1.0)

    def encode(self, text: str) -> Vector:
        """Embed one text (L2-normalised tuple of ``dim`` floats)."""
        counts = [0.0] * self._dim
        for token in _TOKEN.findall(text.lower()):
            index, sign = self._bucket(token)
            counts[index] += sign
        return _normalise(counts)

    def encode_many(self, texts: Iterable[str], batch_size: int = 64) -> list[Vector]:
        """Embed many texts (``batch_size`` is accepted for API parity)."""
        del batch_size
        return [self.encode(t) for t in texts]


class InMemoryEventBuffer:
    """In-memory ``EventSource`` + ``append`` with the Redis buffer's semantics.

    Same dedupe (message id), same conflict rule (same id, different body), same
    event-time pruning relative to the user's newest event, and the same
    popularity and co-interaction counting (see ``worker.adapters.redis_store``).
    """

    def __init__(
        self,
        *,
        window_days: float = 30,
        popularity_half_life_days: float = 7.0,
        co_partners: int = 30,
        co_keep: int = 300,
    ) -> None:
        self.window_days = window_days
        self._window_ms = int(window_days * 86_400_000)
        self.popularity_half_life_days = popularity_half_life_days
        self.co_partners = co_partners
        self.co_keep = co_keep
        self.events: dict[str, dict[str, InteractionEvent]] = {}
        self.items: dict[str, dict[str, int]] = {}  # user -> window item -> latest ts
        self.popularity: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.co: dict[str, dict[str, float]] = {}

    async def append(self, event: InteractionEvent) -> bool:
        """Store one event; False when it was already there."""
        (status,) = await self.append_many([event])
        return status is AppendStatus.ADDED

    async def append_many(self, events: Sequence[InteractionEvent]) -> list[AppendStatus]:
        """Store a batch, one event after another; one status per event."""
        return [self._append_one(ev) for ev in events]

    def _append_one(self, ev: InteractionEvent) -> AppendStatus:
        mine = self.events.setdefault(ev.user_id, {})
        prev = mine.get(ev.message_id)
        if prev is not None:
            return AppendStatus.DUPLICATE if prev == ev else AppendStatus.CONFLICT
        mine[ev.message_id] = ev
        self._prune(ev.user_id)
        if ev.message_id not in mine:
            return AppendStatus.STALE
        ts = datetime_to_ms(ev.timestamp)
        engaging = is_engaging(ev)
        inc = popularity_increment(1.0 if engaging else 0.0, ts, self.popularity_half_life_days)
        if inc > 0:
            self.popularity[ev.content_id] = self.popularity.get(ev.content_id, 0.0) + inc
        if engaging:
            items = self.items.setdefault(ev.user_id, {})
            if ev.content_id not in items:
                recent = sorted(items.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
                for partner, _ in recent[: self.co_partners]:
                    self._bump(partner, ev.content_id)
                    self._bump(ev.content_id, partner)
                self.counts[ev.content_id] = self.counts.get(ev.content_id, 0.0) + 1
            items[ev.content_id] = max(items.get(ev.content_id, ts), ts)
        return AppendStatus.ADDED

    def _bump(self, key: str, member: str) -> None:
        row = self.co.setdefault(key, {})
        row[member] = row.get(member, 0.0) + 1
        if len(row) > 2 * self.co_keep:
            ranked = sorted(row.items(), key=lambda kv: (kv[1], kv[0]))
            for m, _ in ranked[: len(row) - self.co_keep]:
                del row[m]

    def _prune(self, user_id: str) -> None:
        mine = self.events.get(user_id)
        if not mine:
            return
        newest = max(datetime_to_ms(e.timestamp) for e in mine.values())
        cutoff = newest - self._window_ms
        for mid in [m for m, e in mine.items() if datetime_to_ms(e.timestamp) < cutoff]:
            del mine[mid]
        items = self.items.get(user_id, {})
        for cid in [c for c, t in items.items() if t < cutoff]:
            del items[cid]

    async def append_and_fetch(
        self, events: Sequence[InteractionEvent], *, fetch: bool = True
    ) -> tuple[list[AppendStatus], dict[str, list[WindowRow]]]:
        """Append a batch and return every touched user's window (as rows)."""
        statuses = await self.append_many(events)
        users = list(dict.fromkeys(e.user_id for e in events)) if fetch else []
        return statuses, {u: [(datetime_to_ms(e.timestamp), e.content_id, e.event_type,
                               e.weight) for e in await self.fetch_events(u)]
                          for u in users}

    async def fetch_events(self, user_id: str) -> list[InteractionEvent]:
        """The user's buffered events, oldest first (ties by message id, like Redis)."""
        mine = self.events.get(user_id, {})
        return sorted(mine.values(), key=lambda e: (e.timestamp, e.message_id))

    async def fetch_many(self, user_ids: Sequence[str]) -> list[list[InteractionEvent]]:
        """Buffered events of several users."""
        return [await self.fetch_events(u) for u in user_ids]

    async def popular(self, limit: int) -> list[tuple[str, float]]:
        """Most popular items by time-decayed popularity, best first."""
        return stable_top(list(self.popularity.items()), limit)

    async def co_interactions(
        self, item_ids: Sequence[str], *, per_item: int
    ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Each item's strongest partners, and interaction counts (like Redis)."""
        rows = {}
        for cid in item_ids:
            ranked = sorted(self.co.get(cid, {}).items(), key=lambda kv: (kv[1], kv[0]),
                            reverse=True)
            rows[cid] = dict(ranked[:per_item])
        ids = {*item_ids, *(m for r in rows.values() for m in r)}
        return rows, {i: self.counts[i] for i in ids if i in self.counts}

    async def co_candidates(
        self, weights: Sequence[tuple[str, float]], *, per_item: int, limit: int
    ) -> list[Candidate]:
        """The top ``limit`` co-interaction candidates for these item weights (like Redis)."""
        w = dict(weights)
        if not w or limit <= 0:
            return []
        rows, counts = await self.co_interactions(list(w), per_item=per_item)
        return co_interaction_candidates(w, rows, counts)[:limit]

    async def ping(self) -> None:
        """Always healthy."""


class InMemoryUserModelStore:
    """In-memory ``UserModelStore`` that records every save."""

    def __init__(self) -> None:
        self.signals: dict[str, UserSignals] = {}
        self.saves = 0

    async def get_signals(self, user_id: str) -> UserSignals | None:
        """The saved signals or None."""
        return self.signals.get(user_id)

    async def save_signals(self, signals: UserSignals) -> None:
        """Save (no expiry in memory)."""
        await self.save_many([signals])

    async def save_many(self, many: Iterable[UserSignals]) -> None:
        """Save several."""
        for s in many:
            self.signals[s.user_id] = s
            self.saves += 1

    async def save_encoded(self, encoded: Mapping[str, bytes]) -> None:
        """Save signals encoded by ``signals_to_json``, keyed by user id."""
        await self.save_many([signals_from_dict(orjson.loads(v)) for v in encoded.values()])
