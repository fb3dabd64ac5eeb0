"""Ingest: raw RudderStack records -> dead letters | per-user interactions -> stores.

Two agents, because per-user state must be owned by the worker that owns the user:

* ``ingest`` reads the raw events topic in batches, normalises, dead-letters what
  is unusable, and forwards interactions to the ``<app>-interactions`` topic,
  one message per destination partition (murmur2 of the user id, the same
  partition as the signals table and the requests keyed by that user).
* ``apply`` reads those messages and runs the idempotent ingest pipeline, then
  writes each touched user's signals into the table.

Both ack a record only after its effects are durable (``noack`` streams), and
retry transient failures without moving on, so nothing is lost or skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from worker.pipeline import (
    DeadLetter,
    conflict_dead_letter,
    dead_letter_headers,
    decode_interactions,
    encode_interactions,
    group_by_partition,
    parse_batch,
    signals_bytes,
)
from worker.recsys_core.errors import TransientStoreError
from worker.retry import RetryState, retry_forever
from worker.stats import Stats

if TYPE_CHECKING:
    from worker.app import RecsysApp

log = logging.getLogger("worker.ingest")


def register_ingest(app: RecsysApp, table: Any) -> None:
    s = app.settings
    svc = app.services
    stats: Stats = app.stats
    retry: RetryState = app.retry_state
    events_topic = app.topic(s.events_topic)
    dlq_topic = app.topic(s.dead_letter_topic)
    interactions_topic = app.topic(
        f"{s.app_id}-interactions", partitions=s.topic_partitions, internal=True
    )

    async def send_all(sends: list[Callable[[], Awaitable[Any]]]) -> None:
        """Send and wait for delivery; a broker hiccup is retried (dupes are harmless)."""

        async def attempt() -> None:
            try:
                futs = [await send() for send in sends]
                for fut in futs:
                    await fut
            except KafkaError as exc:
                raise TransientStoreError(f"kafka send failed: {exc}") from exc

        if sends:
            await retry_forever(attempt, retry, max_backoff=s.retry_max_backoff_s)

    def dead_letter_send(dl: DeadLetter) -> Callable[[], Awaitable[Any]]:
        stats.dead_lettered[dl.reason] += 1
        return lambda: dlq_topic.send(key=dl.key, value=dl.value,
                                      headers=dead_letter_headers(dl))

    @app.agent(events_topic, name="ingest")
    async def ingest(stream: Any) -> None:
        async for batch in stream.noack_take(s.batch_size, within=s.batch_within_ms / 1000):
            records = [
                (ev.key, ev.value, f"{ev.message.topic}/{ev.message.partition}/{ev.message.offset}")
                for ev in batch
            ]
            stats.records_consumed += len(records)
            parsed = parse_batch(records)
            sends = [dead_letter_send(dl) for dl in parsed.dead_letters]
            for partition, evs in group_by_partition(parsed.interactions,
                                                     s.topic_partitions).items():
                payload = encode_interactions(evs)
                sends.append(lambda p=partition, v=payload: interactions_topic.send(
                    value=v, partition=p))
            await send_all(sends)
            for ev in batch:
                await stream.ack(ev)

    @app.agent(interactions_topic, name="apply")
    async def apply(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            evs = decode_interactions(event.value)
            result = await retry_forever(lambda evs=evs: svc.pipeline.apply(evs), retry,
                                         max_backoff=s.retry_max_backoff_s)
            for uid, sig in result.signals.items():
                table[uid.encode()] = signals_bytes(sig)
            stats.interactions_written += result.added
            stats.last_applied_at = stats.clock()
            if result.conflicts:
                await send_all([dead_letter_send(conflict_dead_letter(c))
                                for c in result.conflicts])
            await manual.ack(event)
