"""The signals table across a restart, with each table store (TABLE_STORE).

``memory://`` keeps the table in the worker's memory and rebuilds it from the
changelog topic at every start; ``rocksdb://`` keeps it on disk under DATA_DIR
with the changelog offset it holds, so a restart reads nothing back.
"""

from __future__ import annotations

import uuid

import orjson
import pytest
from redis.asyncio import Redis

from tests.e2e.conftest import Stack, track
from tests.e2e.test_operations import metrics, wait_ready
from tests.e2e.test_worker_e2e import client, produce
from tests.polling import eventually

pytestmark = pytest.mark.kafka

RESTORING = "Restoring state from changelog topics"
TABLE = "recsys_signals_lookups_total{source=table}"
REDIS = "recsys_signals_lookups_total{source=redis}"


@pytest.mark.parametrize(("store", "reads_changelog"),
                         [("memory://", True), ("rocksdb://", False)])
async def test_the_table_serves_after_a_restart(stack: Stack, store: str,
                                                reads_changelog: bool) -> None:
    name = f"store-{store[:-3]}"
    users = [f"{name}-{uuid.uuid4().hex[:6]}-{i}" for i in range(6)]
    w = stack.worker(name, TABLE_STORE=store)
    w.start()
    try:
        await wait_ready(w)
        await produce(stack, [(u.encode(), track(u, str(100 + i))) for i, u in enumerate(users)]
                      + [(u.encode(), track(u, "121", event="Product Added")) for u in users])
        redis = Redis.from_url(stack.redis_url)
        try:
            async def all_saved() -> bool:
                raws = await redis.mget([f"{stack.prefix}:{{{u}}}:sig" for u in users])
                return all(r and orjson.loads(r)["event_count"] == 2 for r in raws)

            await eventually(all_saved, what="signals of every user with both events")
        finally:
            await redis.aclose()
        async with client(stack) as c:
            first = await c.recommend(users[0], k=3)
        assert first["items"] and not first["cold_start"]
        assert (await metrics(w)).get(TABLE) == 1.0
    finally:
        assert w.stop() == 0

    if store == "rocksdb://":
        data = stack.tmp / f"data-{name}"
        assert list(data.rglob("CURRENT")), f"no RocksDB database under {data}"

    log_before = w.log_path.stat().st_size
    w2 = stack.worker(name, TABLE_STORE=store)  # the same DATA_DIR
    w2.start()
    try:
        await wait_ready(w2)
        async with client(stack) as c:
            for u in users:
                again = await c.recommend(u, k=3)
                assert again["items"] and not again["cold_start"], again
        after = await metrics(w2)
        # Every user is answered from the table: none fell back to Redis.
        assert after.get(TABLE) == len(users)
        assert after.get(REDIS, 0.0) == 0.0
        restart_log = w2.log()[log_before:]
        assert (RESTORING in restart_log) is reads_changelog, restart_log[-3000:]
    finally:
        assert w2.stop() == 0
