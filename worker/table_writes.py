"""Write a batch of signals into the Faust table with a few changelog batches.

``table[key] = value`` sends one changelog message per key through Faust's
producer buffer: a future, two callbacks and a buffer hop each, which cost about
as much as everything else the apply agent does per event (measured: removing the
table writes took ingest from 1,048 to 1,689 events/s). Here the local store is set
directly and the changelog records of one partition (the partition of the
interactions message the users came in: the table is co-partitioned with that
topic) go out as record batches through the same aiokafka producer.

Guarantees are Faust's own: the changelog holds every value the table held, in
order per partition; Faust flushes the producer (these batches included) before it
commits input offsets, so a committed input has its changelog on the broker; the
RocksDB store learns the persisted changelog offset once a batch is delivered.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import Any

from aiokafka.structs import TopicPartition
from faust.streams import _current_event

log = logging.getLogger("worker.table")


def _on_delivered(table: Any, tp: TopicPartition, count: int) -> Any:
    def done(fut: Any) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("table changelog batch of %d records to %s failed: %r",
                      count, tp, exc)
            return
        meta = fut.result()
        if meta is not None:  # records of a batch have consecutive offsets from its base
            table.data.set_persisted_offset(tp, meta.offset + count - 1)

    return done


async def write_table_batch(app: Any, table: Any, values: Mapping[bytes, bytes], *,
                            event: Any) -> list[Any]:
    """Set ``values`` in ``table`` and queue their changelog records in the
    partition of ``event``, a message the calling agent is processing; returns the
    delivery futures. Faust's stores (RocksDB) pick the partition of a write from
    the current event, so ``event`` is made current for these writes."""
    if not values:
        return []
    data = table.data
    token = _current_event.set(weakref.ref(event))
    try:
        for key, value in values.items():
            data[key] = value
    finally:
        _current_event.reset(token)
    producer = app.producer._ensure_producer()  # the aiokafka producer Faust sends with
    topic = table.changelog_topic.get_topic_name()
    tp = TopicPartition(topic, event.message.partition)
    futures: list[Any] = []
    batch, count = producer.create_batch(), 0
    for key, value in values.items():
        if batch.append(key=key, value=value, timestamp=None) is None:
            futures.append(await _send(producer, table, batch, tp, count))
            batch, count = producer.create_batch(), 0
            batch.append(key=key, value=value, timestamp=None)  # the first always fits
        count += 1
    futures.append(await _send(producer, table, batch, tp, count))
    return futures


async def _send(producer: Any, table: Any, batch: Any, tp: TopicPartition, count: int) -> Any:
    fut = await producer.send_batch(batch, tp.topic, partition=tp.partition)
    fut.add_done_callback(_on_delivered(table, tp, count))
    return fut
