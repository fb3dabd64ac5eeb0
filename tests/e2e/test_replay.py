"""``python -m worker replay`` on a real broker and Redis: rebuilds what the live
worker built, is idempotent, honours --from, and leaves the live group alone."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.e2e.conftest import Stack, track
from tests.faults.harness import State, compare, snapshot
from tests.servers import REPO, WorkerProcess

pytestmark = pytest.mark.kafka

USERS = [f"rp-{i}" for i in range(12)]


def _records(batch: str, n_per_user: int) -> list[tuple[bytes, bytes]]:
    out = []
    for u in USERS:
        for j in range(n_per_user):
            cid = str(100 + (hash((u, batch, j)) % 60))
            out.append((u.encode(), track(u, cid, mid=f"{batch}-{u}-{j}",
                                          event="Product Viewed" if j % 3 else "Product Added")))
    return out


async def _produce(stack: Stack, records: list[tuple[bytes, bytes]], ts_ms: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker, acks="all")
    await producer.start()
    try:
        for k, v in records:
            await producer.send(stack.events_topic, key=k, value=v, timestamp_ms=ts_ms)
        await producer.flush()
    finally:
        await producer.stop()


async def _committed(stack: Stack, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.broker)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()
            if tp.topic == stack.events_topic}


def _replay(stack: Stack, prefix: str, qdrant: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, **stack.env, "KEY_PREFIX": prefix, "QDRANT_PATH": str(qdrant)}
    proc = subprocess.run([sys.executable, "-m", "worker", "replay", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    return json.loads(out[out.index("{"):])


def _renamed(state: State) -> State:
    return state  # snapshots are keyed by user id and item, not by prefix


async def _wait_applied(stack: Stack, expected: int) -> State:
    deadline = time.monotonic() + 90
    while True:
        st = await snapshot(stack.redis_url, stack.prefix)
        if st.buffered >= expected and len(st.signals) == len(USERS):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"live worker applied {st.buffered}/{expected}")
        await asyncio.sleep(0.3)


async def test_replay_rebuilds_is_idempotent_honours_from_and_spares_the_live_group(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    early, late = _records("early", 6), _records("late", 4)
    # Record times within the broker's retention (the local stack keeps 24 h):
    # older ones can be deleted by its retention check (every 5 min) before the
    # replay reads them, which made this test fail now and then.
    now = datetime.now(UTC)
    t_early = int((now - timedelta(hours=6)).timestamp() * 1000)
    t_late = int((now - timedelta(hours=2)).timestamp() * 1000)
    await _produce(stack, early, t_early)
    await _produce(stack, late, t_late)
    live = await _wait_applied(stack, len(early) + len(late))
    await asyncio.sleep(3)  # let the live group commit
    live_offsets = await _committed(stack, stack.env["APP_ID"])
    assert sum(live_offsets.values()) >= len(early) + len(late)

    qdrant = tmp_path / "qdrant"  # the live worker holds the embedded store's lock
    shutil.copytree(stack.env["QDRANT_PATH"], qdrant)

    plan = _replay(stack, stack.prefix + "r", qdrant, "--dry-run")
    assert plan == {"dry_run": True, "records": len(early) + len(late)}
    assert await snapshot(stack.redis_url, stack.prefix + "r") == State()

    first = _replay(stack, stack.prefix + "r", qdrant)
    assert first["records_read"] == len(early) + len(late)
    assert first["interactions_written"] == live.buffered
    assert first["users_touched"] == len(USERS)
    rebuilt = await snapshot(stack.redis_url, stack.prefix + "r")
    diff = compare(live, rebuilt)
    assert diff.ok, diff.examples

    second = _replay(stack, stack.prefix + "r", qdrant)
    assert second["interactions_written"] == 0
    assert second["duplicates"] == len(early) + len(late)
    assert compare(rebuilt, await snapshot(stack.redis_url, stack.prefix + "r")).ok

    since = (now - timedelta(hours=4)).isoformat()
    partial = _replay(stack, stack.prefix + "p", qdrant, "--from", since)
    assert partial["records_read"] == len(late)
    only_late = await snapshot(stack.redis_url, stack.prefix + "p")
    assert {m.split("-")[0] for b in only_late.buffers.values() for m in b} == {"late"}

    assert await _committed(stack, stack.env["APP_ID"]) == live_offsets
    replay_offsets = await _committed(stack, stack.env["APP_ID"] + "-replay")
    assert replay_offsets == live_offsets  # the replay group reached the same ends
