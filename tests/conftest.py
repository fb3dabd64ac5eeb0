"""Shared fixtures. Integration tests talk to real servers, started here if needed.

``REDIS_URL`` (set by ``make test``) points at a running server; without it a
throwaway ``redis-server`` is started for the session. A missing redis-server is
an error, not a skip: the suite promises real-server coverage.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import RedisServer, stack_env

if TYPE_CHECKING:
    from redis.asyncio import Redis

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> str:
    """host:port of a real Kafka broker (TEST_KAFKA_BROKER, else the local stack)."""
    broker = os.environ.get("TEST_KAFKA_BROKER")
    if broker:
        return broker
    return stack_env("kafka")["KAFKA_BROKER"]


#: Topics of a worker run with the default settings (``make run``): never deleted.
_PRODUCT_TOPICS = ("rudderstack-events", "rudderstack-events-dlq", "recsys-requests")
#: Never deleted either: the default app's internal topics, and benchmark runs
#: (which may share the broker meanwhile and delete their own topics).
_KEEP_PREFIXES = ("__", "recsys-worker-", "perf", "faust-ceiling-")


async def _topics(broker: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=10_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete_topics(broker: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=60_000)
    await admin.start()
    try:
        for i in range(0, len(names), 100):
            await admin.delete_topics(names[i:i + 100], timeout_ms=60_000)
    finally:
        await admin.close()


@pytest.fixture(scope="session", autouse=True)
def _delete_test_topics() -> Iterator[None]:
    """Delete the topics the suite created (hundreds of 8-partition topics per run)
    on the broker ``make test`` gives it, so a long-lived dev broker does not grow
    until it starts too slowly. Topics that existed before, and the default
    product topics, are kept. ``TEST_KEEP_TOPICS=1`` keeps everything."""
    broker = os.environ.get("TEST_KAFKA_BROKER")
    if not broker or os.environ.get("TEST_KEEP_TOPICS") == "1":
        yield
        return
    try:
        before = asyncio.run(_topics(broker))
    except Exception:  # no broker yet: the tests that need one say so themselves
        yield
        return
    yield
    try:
        created = sorted(
            t for t in asyncio.run(_topics(broker)) - before
            if t not in _PRODUCT_TOPICS and not t.startswith(_KEEP_PREFIXES)
        )
        if created:
            asyncio.run(_delete_topics(broker, created))
    except Exception as exc:  # cleanup must not turn a green run red
        print(f"\nnote: could not delete the test topics: {exc!r}")


@asynccontextmanager
async def fresh_redis(url: str) -> AsyncIterator[Redis]:
    """A client on a flushed database; flushed again and closed afterwards."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client on a flushed database; closed after the test."""
    async with fresh_redis(redis_url) as client:
        yield client
