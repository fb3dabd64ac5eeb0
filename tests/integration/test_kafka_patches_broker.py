"""On a real broker: a producer keeps metadata for a topic it sends to even when
that topic was only known from a full metadata fetch and another topic is added
later (worker.kafka_patches.patch_track_sent_topics). Without the patch the first
topic's leader becomes unknown (checked by hand: ``None``), and a batch queued
for it waits for its delivery timeout."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.kafka_patches import apply_all

pytestmark = pytest.mark.kafka

BROKER = os.environ.get("TEST_KAFKA_BROKER", "")


async def _leader_after_second_topic() -> object:
    first, second = (f"kp-{uuid.uuid4().hex[:8]}-{n}" for n in ("a", "b"))
    admin = AIOKafkaAdminClient(bootstrap_servers=BROKER)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(first, 2, 1)])
        await asyncio.sleep(1)
        producer = AIOKafkaProducer(bootstrap_servers=BROKER)
        await producer.start()
        try:
            # A refresh while the client tracks no topic fetches every topic
            # (Faust's producer gets one like this before its first send).
            await producer.client.force_metadata_update()
            await producer.send_and_wait(first, b"x", partition=1)
            await admin.create_topics([NewTopic(second, 1, 1)])
            await producer.send_and_wait(second, b"y")  # narrows the metadata fetch
            await producer.client.force_metadata_update()
            return producer.client.cluster.leader_for_partition(TopicPartition(first, 1))
        finally:
            await producer.stop()
    finally:
        await admin.delete_topics([first, second])
        await admin.close()


def test_a_topic_sent_to_stays_in_the_producers_metadata() -> None:
    if not BROKER:
        pytest.skip("TEST_KAFKA_BROKER not set (make test starts a broker)")
    apply_all()
    assert asyncio.run(_leader_after_second_topic()) is not None


def test_unpatched_aiokafka_forgets_the_topic() -> None:
    """The defect itself, in a fresh interpreter where the patch is not applied (if
    aiokafka fixes it, this fails and the patch can go)."""
    import subprocess
    import sys

    if not BROKER:
        pytest.skip("TEST_KAFKA_BROKER not set (make test starts a broker)")
    code = ("import asyncio, tests.integration.test_kafka_patches_broker as t; "
            "print(asyncio.run(t._leader_after_second_topic()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ}, check=True)
    assert out.stdout.strip().splitlines()[-1] == "None"
