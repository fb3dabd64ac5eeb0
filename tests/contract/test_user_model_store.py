"""UserModelStore contract, run against the in-memory fake and real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import fresh_redis
from tests.factories import content, event
from worker.adapters.memory import InMemoryUserModelStore
from worker.adapters.redis_store import RedisUserModelStore
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.ports import UserModelStore
from worker.recsys_core.signals import compute_signals
from worker.recsys_core.types import UserSignals


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[UserModelStore]:
    if request.param == "memory":
        yield InMemoryUserModelStore()
        return
    async with fresh_redis(redis_url) as client:
        yield RedisUserModelStore(client, ttl_seconds=600)


def _signals(user: str = "u1") -> UserSignals:
    cat = {"1": content("1", "genre:Comedy"), "2": content("2", "genre:Drama")}
    evs = [event(user=user, content="1", weight=5.0), event(user=user, content="2", days=1)]
    s = compute_signals(user, evs, contents=cat, vectors={"1": (0.6, 0.8), "2": (1.0, 0.0)},
                        config=SignalConfig())
    assert s is not None
    return s


class TestUserModelStoreContract:
    async def test_is_a_user_model_store(self, store: UserModelStore) -> None:
        assert isinstance(store, UserModelStore)

    async def test_unknown_user_is_none(self, store: UserModelStore) -> None:
        assert await store.get_signals("nobody") is None

    async def test_save_then_get_roundtrips_exactly(self, store: UserModelStore) -> None:
        s = _signals()
        await store.save_signals(s)
        assert await store.get_signals("u1") == s

    async def test_save_replaces(self, store: UserModelStore) -> None:
        await store.save_signals(_signals())
        cat = {"9": content("9")}
        newer = compute_signals("u1", [event(content="9")], contents=cat, vectors={},
                                config=SignalConfig())
        assert newer is not None
        await store.save_signals(newer)
        assert await store.get_signals("u1") == newer


async def test_redis_signals_carry_the_ttl(redis_client) -> None:  # type: ignore[no-untyped-def]
    store = RedisUserModelStore(redis_client, ttl_seconds=7 * 86_400)
    await store.save_signals(_signals("t"))
    ttl = await redis_client.ttl("rw:{t}:sig")
    assert 7 * 86_400 - 5 <= ttl <= 7 * 86_400
