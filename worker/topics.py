"""Create the worker's topics before Faust subscribes, and check their layout.

A consumer that subscribes to a topic that does not exist yet only notices it at
the next metadata refresh (minutes), so every topic the agents read is created
up front. Partition counts of the co-partitioned topics must equal
``TOPIC_PARTITIONS``; a mismatch stops start-up with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

from worker.recsys_core.errors import ConfigurationError, TransientStoreError
from worker.settings import Settings


def interactions_topic(settings: Settings) -> str:
    return f"{settings.app_id}-interactions"


def worker_topics(settings: Settings) -> dict[str, bool]:
    """Topic name -> whether it must be co-partitioned with the signals table."""
    return {
        settings.events_topic: False,
        settings.dead_letter_topic: False,
        settings.requests_topic: True,
        interactions_topic(settings): True,
    }


#: Header of the empty record written first into each partition of a topic the
#: worker creates; agents and replay skip it.
SENTINEL_HEADER = "x-recsys-sentinel"


def is_sentinel(headers: Any) -> bool:
    """Whether a record (by its headers: a mapping or a list of pairs) is a sentinel."""
    if not headers:
        return False
    if isinstance(headers, dict):
        return SENTINEL_HEADER in headers
    return any(k == SENTINEL_HEADER for k, _ in headers)


async def seed_new_topics(settings: Settings, topics: list[str],
                          kafka_options: dict[str, Any]) -> None:
    """Give the worker's group a committed offset on every partition of topics it
    just created, by writing a sentinel record at offset 0 and committing 1.

    Faust (0.15) treats a partition without a committed offset, or with offset 0,
    specially: after a rebalance, records fetched before it are dropped and never
    re-read, and its commit logic skips the gap check. A committed offset of 1
    from the start keeps every later record safe. Only done when the sentinel
    really landed at offset 0 (nothing else was written first).
    """
    consumed = [t for t in topics if t != settings.dead_letter_topic]
    if not consumed:
        return
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                **kafka_options)
    await producer.start()
    commits: dict[TopicPartition, OffsetAndMetadata] = {}
    try:
        for topic in consumed:
            for p in range(settings.topic_partitions):
                # Timestamped at the epoch so that a replay --from <time>
                # (offsets_for_times) never starts at the sentinel.
                meta = await producer.send_and_wait(topic, value=b"", partition=p,
                                                    timestamp_ms=1,
                                                    headers=[(SENTINEL_HEADER, b"1")])
                if meta.offset == 0:
                    commits[TopicPartition(topic, p)] = OffsetAndMetadata(1, "sentinel")
    finally:
        await producer.stop()
    if not commits:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                group_id=settings.app_id, enable_auto_commit=False,
                                **kafka_options)
    await consumer.start()
    try:
        consumer.assign(list(commits))
        await consumer.commit(commits)
    finally:
        await consumer.stop()


async def ensure_topics(settings: Settings, kafka_options: dict[str, Any]) -> None:
    """Create missing topics; raise ConfigurationError on a partition mismatch."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                request_timeout_ms=10_000, **kafka_options)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise TransientStoreError(
            f"cannot reach Kafka at {settings.kafka_broker}: {exc}"
        ) from exc
    try:
        wanted = worker_topics(settings)
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        created: list[str] = []
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica raced us
                await admin.create_topics([
                    NewTopic(t, num_partitions=settings.topic_partitions,
                             replication_factor=settings.topic_replication)
                    for t in missing
                ])
                created = missing
        for _ in range(50):
            meta = await admin.describe_topics(list(wanted))
            counts = {m["topic"]: len(m["partitions"]) for m in meta if not m["error_code"]}
            if all(counts.get(t) for t in wanted):
                break
            await asyncio.sleep(0.1)
        wrong = [
            f"{t} has {counts.get(t)} partitions"
            for t, copart in wanted.items()
            if copart and counts.get(t) != settings.topic_partitions
        ]
        if wrong:
            raise ConfigurationError(
                "topics must have TOPIC_PARTITIONS="
                f"{settings.topic_partitions} partitions to be co-partitioned with the "
                "signals table: " + "; ".join(wrong)
                + ". Set TOPIC_PARTITIONS to match, or recreate the topics."
            )
    finally:
        await admin.close()
    if created:
        await seed_new_topics(settings, created, kafka_options)
