"""Answering a recommendation request: recall from several sources, rank (pure).

Used by the Faust recommend agent and, in-process, by the evaluation, so both
measure the same code.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from worker.recsys_core.config import RankConfig
from worker.recsys_core.ports import ContentStore, EmbeddingModel
from worker.recsys_core.ranking import rank
from worker.recsys_core.scoring import top_tags
from worker.recsys_core.types import Candidate, Recommendation, UserSignals
from worker.stats import StageClock, StageObserver

_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


class ItemStats(Protocol):
    """Real-time item statistics kept by the event buffer's store."""

    async def popular(self, limit: int) -> list[tuple[str, float]]: ...

    async def co_candidates(
        self, weights: Sequence[tuple[str, float]], *, per_item: int, limit: int
    ) -> list[Candidate]:
        """``co_interaction_candidates(dict(weights), *co_interactions(ids))[:limit]``,
        computed where the counts are (one round trip)."""
        ...


class BadRequest(ValueError):
    """A request that cannot be served; the reply says why."""


@dataclass(frozen=True, slots=True)
class Request:
    user_id: str
    k: int = 10
    query: str | None = None
    exclude: tuple[str, ...] = ()


def parse_request(value: Any, *, max_k: int, max_bytes: int) -> Request:
    """Validate a request (bytes of JSON or a dict); raise ``BadRequest``."""
    if isinstance(value, bytes | bytearray | memoryview):
        if len(value) > max_bytes:
            raise BadRequest(f"request is {len(value)} bytes; the limit is {max_bytes}")
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("request must be a JSON object")
    uid = value.get("user_id")
    if isinstance(uid, int) and not isinstance(uid, bool):
        uid = str(uid)
    if not isinstance(uid, str) or not _ID_RE.match(uid):
        raise BadRequest("user_id must be a string of 1-256 printable characters")
    k = value.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise BadRequest(f"k must be an integer between 1 and {max_k}")
    query = value.get("query")
    if query is not None and (not isinstance(query, str) or len(query) > 1000):
        raise BadRequest("query must be a string of at most 1000 characters")
    exclude = value.get("exclude") or []
    if not isinstance(exclude, list) or len(exclude) > 1000 or not all(
        isinstance(x, str) and len(x) <= 128 for x in exclude
    ):
        raise BadRequest("exclude must be a list of at most 1000 content ids")
    return Request(uid, k, query or None, tuple(exclude))


class Recommender:
    """Recall (co-interaction, preference vector, top tags, query text, popularity)
    + pure ranking."""

    def __init__(
        self,
        *,
        content: ContentStore,
        embedder: EmbeddingModel,
        popularity: ItemStats,
        rank_config: RankConfig,
        extra_recall: Sequence[Callable[[UserSignals, int], Awaitable[list[Candidate]]]] = (),
        observe: StageObserver | None = None,
    ) -> None:
        self.content = content
        self.embedder = embedder
        self.popularity = popularity
        self.rank_config = rank_config
        self.extra_recall = extra_recall
        #: ``(stage, seconds)`` per request: "qdrant", "embed", "redis", "ranking"
        self.observe = observe

    async def recommend(self, req: Request, signals: UserSignals | None) -> Recommendation:
        """The top ``req.k`` items for the user, each with a reason.

        The Redis reads (co-interaction, popularity) are sent first and run while
        the catalogue is searched; the candidates are then put together in one
        fixed order, so the result does not depend on which answered first.
        """
        cfg = self.rank_config
        seen = len(signals.seen_ids) if signals is not None else 0
        limit = req.k * cfg.candidate_multiplier + seen + len(req.exclude)
        liked = [] if signals is None else sorted(
            ((c, w) for c, w in signals.item_weights.items() if w > 0),
            key=lambda cw: (-cw[1], cw[0]))[: cfg.co_sources]
        clock = StageClock(self.observe)
        co_task = asyncio.ensure_future(self.popularity.co_candidates(
            liked, per_item=cfg.co_per_item, limit=limit)) if liked else None
        pop_task = asyncio.ensure_future(self.popularity.popular(limit))
        tasks = [t for t in (co_task, pop_task) if t is not None]
        vector: list[Candidate] = []
        tagged: list[Candidate] = []
        extra: list[Candidate] = []
        query: list[Candidate] = []
        try:
            await asyncio.sleep(0)  # the Redis tasks send their commands
            if signals is not None:
                if signals.preference_vector:
                    with clock("qdrant"):
                        vector = await self.content.search_vector(signals.preference_vector,
                                                                  limit=limit)
                    await asyncio.sleep(0)  # lets the co-interaction task go on
                tags = top_tags(signals.tag_affinities, 3)
                if tags:
                    with clock("qdrant"):
                        tagged = await self.content.search_tags(tags, limit=limit)
                for recall in self.extra_recall:
                    with clock("extra_recall"):
                        extra += await recall(signals, limit)
            if req.query:
                with clock("embed"):
                    qv = self.embedder.encode(req.query)
                with clock("qdrant"):
                    query = [Candidate(c.content_id, c.score, "query")
                             for c in await self.content.search_vector(qv, limit=limit)]
            with clock("redis"):
                co = await co_task if co_task is not None else []
                popular = [Candidate(cid, score, "popular") for cid, score in await pop_task]
            cands = vector + co + tagged + extra + query + popular
            with clock("qdrant"):
                contents = await self.content.get({c.content_id for c in cands})
            with clock("ranking"):
                items = rank(cands, contents=contents, signals=signals, k=req.k,
                             exclude=req.exclude, config=cfg)
        finally:
            for task in tasks:  # on an error: stop the reads, and leave none unretrieved
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()
            clock.report()
        cold = signals is None or not signals.seen_ids
        return Recommendation(user_id=req.user_id, items=items, cold_start=cold)
