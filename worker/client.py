"""A small client for any producer: ask for recommendations over Kafka, no Faust.

Protocol (Faust's request/reply, with headers): the request is a JSON object
``{"user_id", "k", "query"?, "exclude"?}`` sent to the requests topic **keyed by
user id** (Kafka's default murmur2 partitioner, which aiokafka and the Java client
use), with headers ``Faust-Ag-ReplyTo: <reply topic>`` and
``Faust-Ag-CorrelationId: <uuid>``. The worker answers on the reply topic with
``{"correlation_id": ..., "value": {...}}``; the client matches on
``correlation_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


class RequestTimeout(TimeoutError):
    """No reply arrived within the timeout."""


class RecsysClient:
    """Ask the worker for recommendations. Use as ``async with RecsysClient(...)``.

    Each client gets its own reply topic (``<prefix>-<uuid>``, one partition),
    created on start and deleted on close, so it reads only its own replies.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        requests_topic: str = "recsys-requests",
        reply_topic: str | None = None,
        reply_prefix: str = "recsys-reply",
        timeout: float = 10.0,
        **kafka_options: Any,
    ) -> None:
        self.bootstrap = bootstrap_servers
        self.requests_topic = requests_topic
        self.reply_topic = reply_topic or f"{reply_prefix}-{uuid.uuid4().hex}"
        self._own_topic = reply_topic is None
        self.timeout = timeout
        self._opts = kafka_options
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RecsysClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._own_topic:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self._opts)
            await admin.start()
            try:
                await admin.create_topics(
                    [NewTopic(self.reply_topic, num_partitions=1, replication_factor=1)]
                )
            except TopicAlreadyExistsError:
                pass
            finally:
                await admin.close()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **self._opts)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                          enable_auto_commit=False, **self._opts)
        await self._consumer.start()
        tp = TopicPartition(self.reply_topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)  # resolve now, so no reply is missed
        self._reader = asyncio.create_task(self._read_replies())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for fut in self._pending.values():
            fut.cancel()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._own_topic:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self._opts)
            await admin.start()
            try:
                await admin.delete_topics([self.reply_topic])
            except Exception:  # best effort: the broker may be gone
                pass
            finally:
                await admin.close()

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        async for msg in self._consumer:
            try:
                body = orjson.loads(msg.value or b"null")
            except orjson.JSONDecodeError:
                continue
            if not isinstance(body, dict):
                continue
            fut = self._pending.pop(str(body.get("correlation_id")), None)
            if fut is not None and not fut.done():
                fut.set_result(body.get("value"))

    async def send_raw(self, user_id: str, value: bytes, *, timeout: float | None = None) -> Any:
        """Send raw request bytes keyed by ``user_id``; wait for the reply."""
        assert self._producer is not None, "call start() first"
        cid = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await self._producer.send_and_wait(
                self.requests_topic,
                key=user_id.encode(),
                value=value,
                headers=[
                    ("Faust-Ag-ReplyTo", self.reply_topic.encode()),
                    ("Faust-Ag-CorrelationId", cid.encode()),
                ],
            )
            return await asyncio.wait_for(fut, timeout or self.timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"no reply for user {user_id!r} within {timeout or self.timeout}s"
            ) from None
        finally:
            self._pending.pop(cid, None)

    async def recommend(
        self,
        user_id: str,
        *,
        k: int = 10,
        query: str | None = None,
        exclude: list[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Recommendations for ``user_id``: ``{"items": [...], "cold_start": ...}``
        or ``{"error": ..., "detail": ...}`` for a request the worker refused."""
        body: dict[str, Any] = {"user_id": user_id, "k": k}
        if query:
            body["query"] = query
        if exclude:
            body["exclude"] = exclude
        result: dict[str, Any] = await self.send_raw(user_id, orjson.dumps(body), timeout=timeout)
        return result
