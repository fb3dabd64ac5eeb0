"""aiokafka's metadata synchronizer must answer a forced update promptly even when
the topic list changed during a timer-driven refresh (worker.kafka_patches).

Runs the real ``AIOKafkaClient._md_synchronizer``; only the network call
(``_metadata_update``) is replaced, so the test needs no broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient

from worker import kafka_patches


async def _forced_update_after_topic_change() -> bool:
    """True if a forced update completes within 2 s in the race described in
    worker.kafka_patches."""
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")
    client._metadata_max_age_ms = 100  # the timer fires first ...
    calls = 0

    async def metadata_update(cluster: Any, topics: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            client._topics = {*client._topics, "new-topic"}  # ... the topic list changes
            client._metadata_max_age_ms = 600_000  # the next timer is far away
        await asyncio.sleep(0.05)
        return True

    client._metadata_update = metadata_update  # type: ignore[method-assign]
    task = asyncio.create_task(client._md_synchronizer())
    try:
        for _ in range(500):  # the timer refresh runs (polled: the machine may be busy)
            if calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # it ends, sees the topic list changed, waits again
        assert calls == 1
        try:
            await asyncio.wait_for(client.force_metadata_update(), 2.0)
        except TimeoutError:
            return False
        return True
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_unpatched_aiokafka_hangs_on_a_forced_update() -> None:
    """The defect itself, in a fresh interpreter where the patch is not applied (if
    aiokafka fixes it, this fails and the patch can go)."""
    import subprocess
    import sys

    code = ("import asyncio, tests.unit.test_kafka_patches as t; "
            "print(asyncio.run(t._forced_update_after_topic_change()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_patched_forced_update_completes() -> None:
    kafka_patches.patch_metadata_wakeup()
    kafka_patches.patch_metadata_wakeup()  # idempotent
    assert asyncio.run(_forced_update_after_topic_change()) is True
