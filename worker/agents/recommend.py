"""Recommend: requests keyed by user id -> reply topic, answered from the table.

The requests topic has the table's partition count and the same (murmur2) key
partitioning, so the worker that owns a user's signals answers for that user
from local memory; Redis is the fallback when the table has no entry.

Replies follow Faust's request/reply protocol: the request carries headers
``Faust-Ag-ReplyTo`` and ``Faust-Ag-CorrelationId``; Faust sends what the agent
yields to that topic wrapped with the correlation id. A malformed request gets an
error reply; nothing a caller sends can crash the agent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.errors import KafkaError

from worker.recsys_core.codec import recommendation_to_dict, signals_from_dict
from worker.recsys_core.errors import TransientStoreError
from worker.serving import BadRequest, parse_request
from worker.topics import is_sentinel

if TYPE_CHECKING:
    from worker.app import RecsysApp

log = logging.getLogger("worker.recommend")

REPLY_TO_HEADER = "Faust-Ag-ReplyTo"
#: Kafka's legal topic names.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _header(headers: Any, name: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        if k == name:
            return v if isinstance(v, bytes) else str(v).encode()
    return None


def register_recommend(app: RecsysApp, table: Any) -> None:
    s = app.settings
    svc = app.services
    stats = app.stats
    requests_topic = app.topic(
        s.requests_topic, partitions=s.topic_partitions, internal=True
    )

    async def answer(value: Any) -> dict[str, Any]:
        try:
            req = parse_request(value, max_k=s.max_k, max_bytes=s.max_request_bytes)
        except BadRequest as exc:
            stats.requests_failed += 1
            return {"error": "bad_request", "detail": str(exc)}
        try:
            raw = table.get(req.user_id.encode())
            signals = signals_from_dict(orjson.loads(raw)) if raw else None
            source = "table"
            if signals is None:
                signals = await svc.adapters.users.get_signals(req.user_id)
                source = "redis" if signals is not None else "none"
            stats.signals_lookups[source] += 1
            rec = await svc.recommender.recommend(req, signals)
        except TransientStoreError as exc:
            stats.requests_failed += 1
            return {"error": "unavailable", "detail": str(exc), "user_id": req.user_id}
        except Exception as exc:  # a bug must not kill the agent: answer and log
            log.exception("request failed")
            stats.requests_failed += 1
            return {"error": "internal", "detail": type(exc).__name__, "user_id": req.user_id}
        stats.requests_served += 1
        return recommendation_to_dict(rec)

    deadline_s = s.request_deadline_ms / 1000

    def overloaded(event: Any) -> dict[str, Any] | None:
        """Load shedding: a request that waited longer than REQUEST_DEADLINE_MS in
        the topic has most likely been given up by its caller; answering it would
        only delay the requests behind it. Reply cheaply and move on."""
        ts = getattr(event.message, "timestamp", None)
        if not deadline_s or not ts:
            return None
        age = time.time() - ts
        if age <= deadline_s:
            return None
        stats.requests_failed += 1
        return {"error": "overloaded",
                "detail": f"request waited {age:.1f}s; the deadline is {deadline_s:g}s"}

    async def reply_topic_ok(headers: Any) -> bool:
        """Whether the reply can be sent. Faust would wait up to the producer's
        request timeout (20 min) for the metadata of a topic that does not exist
        (a caller that deleted its reply topic, a mistyped or invalid name),
        holding up every request behind it: such a request gets no reply."""
        raw = _header(headers, REPLY_TO_HEADER)
        if raw is None:
            return True  # no reply expected (a plain cast)
        name = raw.decode("utf-8", "replace")
        if not _TOPIC_NAME.fullmatch(name):
            reason = "invalid name"
        else:
            client = app.producer._ensure_producer().client
            if client.cluster.partitions_for_topic(name):
                return True
            try:
                await asyncio.wait_for(client._wait_on_metadata(name), s.reply_topic_wait_s)
                return True
            except (TimeoutError, KafkaError):
                reason = f"not found within {s.reply_topic_wait_s:g}s"
        stats.requests_failed += 1
        log.warning("request not answered: reply topic %r: %s", name[:120], reason)
        return False

    # Several actors share the requests stream: while one waits on Redis or Qdrant
    # the others rank (answers carry their correlation id, so order is free; the
    # table is only read here).
    @app.agent(requests_topic, name="recommend", concurrency=s.request_concurrency)
    async def recommend(stream: Any) -> Any:
        async for event in stream.events():
            if is_sentinel(event.headers):
                continue
            if not await reply_topic_ok(event.headers):
                continue
            shed = overloaded(event)
            if shed is not None:
                yield shed
                continue
            with stats.timed("request"):
                reply = await answer(event.value)
            stats.progress()
            yield reply
