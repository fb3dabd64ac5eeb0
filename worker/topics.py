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

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

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
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica raced us
                await admin.create_topics([
                    NewTopic(t, num_partitions=settings.topic_partitions,
                             replication_factor=settings.topic_replication)
                    for t in missing
                ])
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
