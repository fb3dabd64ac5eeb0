"""Shared fixtures. Integration tests talk to real servers, started here if needed.

``REDIS_URL`` (set by ``make test``) points at a running server; without it a
throwaway ``redis-server`` is started for the session. A missing redis-server is
an error, not a skip: the suite promises real-server coverage.
"""

from __future__ import annotations

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
