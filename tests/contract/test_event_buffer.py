"""EventSource/EventBuffer contract, run against the in-memory fake and real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import fresh_redis
from tests.factories import T0, event
from worker.adapters import redis_store
from worker.adapters.memory import InMemoryEventBuffer
from worker.adapters.redis_store import RedisEventBuffer
from worker.recsys_core.codec import datetime_to_ms
from worker.recsys_core.cointeraction import co_interaction_candidates
from worker.recsys_core.ports import EventBuffer
from worker.recsys_core.types import AppendStatus


@pytest.fixture(params=["memory", "redis"])
async def buffer(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[EventBuffer]:
    if request.param == "memory":
        yield InMemoryEventBuffer(window_days=30)
        return
    async with fresh_redis(redis_url) as client:
        yield RedisEventBuffer(client, window_days=30)


class TestEventBufferContract:
    async def test_is_an_event_buffer(self, buffer: EventBuffer) -> None:
        assert isinstance(buffer, EventBuffer)

    async def test_unknown_user_has_no_events(self, buffer: EventBuffer) -> None:
        assert await buffer.fetch_events("nobody") == []

    async def test_append_then_fetch_roundtrips_oldest_first(self, buffer: EventBuffer) -> None:
        evs = [event(content="2", days=2, price=9.5, currency="EUR"), event(content="1", days=1)]
        for ev in evs:
            assert await buffer.append(ev) is True
        assert await buffer.fetch_events("u1") == [evs[1], evs[0]]

    async def test_windows_read_back_are_oldest_first_ties_by_message_id(
            self, buffer: EventBuffer) -> None:
        """``append_and_fetch`` gives each user's window as ``fetch_events``
        orders it: by event time, then message id."""
        evs = [event(user="a", content="3", days=1, mid="m-c"),
               event(user="b", content="9", days=0, mid="z"),
               event(user="a", content="1", days=1, mid="m-a", kind="purchase", weight=4.0),
               event(user="a", content="2", days=0.5, mid="m-z"),
               event(user="a", content="5", days=1, mid="m-b", weight=None)]
        _, windows = await buffer.append_and_fetch(evs)  # type: ignore[attr-defined]
        _, again = await buffer.append_and_fetch(evs[:1])  # type: ignore[attr-defined]
        for user in ("a", "b"):
            want = [(datetime_to_ms(e.timestamp), e.content_id,
                     e.event_type, e.weight) for e in await buffer.fetch_events(user)]
            assert windows[user] == want
        assert [r[1] for r in windows["a"]] == ["2", "1", "5", "3"]
        assert again == {"a": windows["a"]}

    async def test_redelivered_event_is_a_noop(self, buffer: EventBuffer) -> None:
        ev = event(content="1", mid="m-1")
        assert await buffer.append(ev) is True
        assert await buffer.append(ev) is False
        assert await buffer.fetch_events("u1") == [ev]

    async def test_same_id_different_body_is_a_conflict_and_keeps_the_first(
        self, buffer: EventBuffer
    ) -> None:
        first = event(content="1", mid="m-1", quantity=2)
        second = event(content="1", mid="m-1", quantity=5)
        statuses = await buffer.append_many([first, second])  # type: ignore[attr-defined]
        assert statuses == [AppendStatus.ADDED, AppendStatus.CONFLICT]
        assert await buffer.fetch_events("u1") == [first]

    async def test_prunes_by_event_time_relative_to_newest(self, buffer: EventBuffer) -> None:
        old = event(content="1", days=0)
        mid = event(content="2", days=10)
        await buffer.append(old)
        await buffer.append(mid)
        assert len(await buffer.fetch_events("u1")) == 2
        new = event(content="3", days=35)  # old is now 35 days behind the newest
        await buffer.append(new)
        assert await buffer.fetch_events("u1") == [mid, new]

    async def test_late_event_outside_window_does_not_stay(self, buffer: EventBuffer) -> None:
        new = event(content="3", days=100)
        await buffer.append(new)
        await buffer.append(event(content="1", days=1))
        assert await buffer.fetch_events("u1") == [new]

    async def test_window_boundary_is_inclusive(self, buffer: EventBuffer) -> None:
        edge = event(content="1", at=T0)
        new = event(content="2", at=T0 + timedelta(days=30))
        await buffer.append(edge)
        await buffer.append(new)
        assert await buffer.fetch_events("u1") == [edge, new]

    async def test_users_are_isolated(self, buffer: EventBuffer) -> None:
        a, b = event(user="a", content="1"), event(user="b", content="2")
        await buffer.append_many([a, b])  # type: ignore[attr-defined]
        assert await buffer.fetch_events("a") == [a]
        assert await buffer.fetch_events("b") == [b]

    async def test_final_state_is_independent_of_arrival_order(self, buffer: EventBuffer) -> None:
        evs = [event(content=str(i), days=i * 7) for i in range(8)]
        for ev in reversed(evs):
            await buffer.append(ev)
        forward = InMemoryEventBuffer(window_days=30)
        for ev in evs:
            await forward.append(ev)
        assert await buffer.fetch_events("u1") == await forward.fetch_events("u1")

    async def test_batch_statuses_in_input_order(self, buffer: EventBuffer) -> None:
        a = event(user="a", content="1", mid="x")
        b = event(user="b", content="1", mid="y")
        out = await buffer.append_many([a, b, a])  # type: ignore[attr-defined]
        assert out == [AppendStatus.ADDED, AppendStatus.ADDED, AppendStatus.DUPLICATE]


async def test_redis_keys_expire_with_wall_clock_ttl(redis_client) -> None:  # type: ignore[no-untyped-def]
    buf = RedisEventBuffer(redis_client, window_days=30, ttl_seconds=1234)
    await buf.append(event(user="ttl", content="1"))
    keys = sorted(k.decode() for k in await redis_client.keys("rw:{ttl}:*"))
    assert keys == ["rw:{ttl}:h", "rw:{ttl}:i", "rw:{ttl}:z"]
    for k in keys:
        assert 0 < await redis_client.ttl(k) <= 1234


async def test_redis_unreachable_raises_transient_error() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from tests.servers import free_port
    from worker.recsys_core.errors import TransientStoreError

    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5,
                   retry=Retry(NoBackoff(), 0))
    buf = RedisEventBuffer(client)
    with pytest.raises(TransientStoreError):
        await buf.append(event())
    with pytest.raises(TransientStoreError):
        await buf.fetch_events("u1")
    await client.aclose()


class TestPopularityContract:
    async def test_counts_engaging_events_once_and_ranks_by_count(
        self, buffer: EventBuffer
    ) -> None:
        evs = [
            event(user="a", content="1", kind="purchase", weight=5.0),
            event(user="b", content="2", weight=1.0),
            event(user="c", content="2", kind="rate", weight=1.0),  # any rating engages
            event(user="d", content="3", kind="remove_from_cart", weight=-1.0),
        ]
        await buffer.append_many(evs)  # type: ignore[attr-defined]
        await buffer.append_many(evs)  # redelivery: no double count
        top = await buffer.popular(10)  # type: ignore[attr-defined]
        assert [cid for cid, _ in top] == ["2", "1"]
        assert top[0][1] / top[1][1] == pytest.approx(2.0)

    async def test_newer_events_weigh_more(self, buffer: EventBuffer) -> None:
        await buffer.append_many([event(user="a", content="old", days=0),  # type: ignore[attr-defined]
                                  event(user="b", content="old", days=0),
                                  event(user="c", content="new", days=20)])
        top = await buffer.popular(10)  # type: ignore[attr-defined]
        assert [cid for cid, _ in top] == ["new", "old"]  # 1 event 20 days later > 2 events

    async def test_stale_event_is_reported_and_not_counted(self, buffer: EventBuffer) -> None:
        await buffer.append(event(content="9", days=100))
        (status,) = await buffer.append_many([event(content="1", days=1)])  # type: ignore[attr-defined]
        assert status is AppendStatus.STALE
        assert [c for c, _ in await buffer.popular(10)] == ["9"]  # type: ignore[attr-defined]


class TestCoInteractionContract:
    async def test_counts_users_who_engaged_with_both(self, buffer: EventBuffer) -> None:
        evs = [event(user="a", content=c, days=i) for i, c in enumerate("123")]
        evs += [event(user="b", content=c, days=i) for i, c in enumerate("12")]
        evs.append(event(user="b", content="1", kind="click", days=3))  # not new to b's window
        await buffer.append_many(evs)  # type: ignore[attr-defined]
        await buffer.append_many(evs)  # redelivered: nothing counts twice
        rows, counts = await buffer.co_interactions(["1", "2", "3"], per_item=10)  # type: ignore[attr-defined]
        assert rows == {"1": {"2": 2.0, "3": 1.0}, "2": {"1": 2.0, "3": 1.0},
                        "3": {"1": 1.0, "2": 1.0}}
        assert counts == {"1": 2.0, "2": 2.0, "3": 1.0}

    async def test_negative_events_do_not_pair(self, buffer: EventBuffer) -> None:
        await buffer.append_many([  # type: ignore[attr-defined]
            event(content="1", days=0),
            event(content="2", kind="remove_from_cart", weight=-1.0, days=1),
        ])
        rows, counts = await buffer.co_interactions(["1", "2"], per_item=10)  # type: ignore[attr-defined]
        assert rows == {"1": {}, "2": {}}
        assert counts == {"1": 1.0}

    async def test_pairs_only_within_the_window(self, buffer: EventBuffer) -> None:
        await buffer.append_many([  # type: ignore[attr-defined]
            event(content="1", days=0),
            event(content="2", days=40),  # "1" has left the 30-day window
        ])
        rows, _ = await buffer.co_interactions(["2"], per_item=10)  # type: ignore[attr-defined]
        assert rows == {"2": {}}

    async def test_order_within_a_batch_equals_one_by_one(self, buffer: EventBuffer) -> None:
        evs = [event(user=u, content=str(i % 7), days=i * 3) for u in "ab" for i in range(15)]
        await buffer.append_many(evs)  # type: ignore[attr-defined]
        single = InMemoryEventBuffer(window_days=30)
        for ev in evs:
            await single.append(ev)
        ids = [str(i) for i in range(7)]
        assert await buffer.co_interactions(ids, per_item=10) == await single.co_interactions(  # type: ignore[attr-defined]
            ids, per_item=10)
        got = await buffer.popular(10)  # type: ignore[attr-defined]
        want = await single.popular(10)
        assert [c for c, _ in got] == [c for c, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-12)


    async def test_co_candidates_equal_the_pure_scores_of_the_rows(
        self, buffer: EventBuffer
    ) -> None:
        """``co_candidates`` is ``co_interaction_candidates`` over ``co_interactions``,
        cut to ``limit``: same items, order, floats and details."""
        evs = [event(user=f"u{u}", content=str((u * 7 + i * 3) % 13), days=i)
               for u in range(12) for i in range(6)]
        await buffer.append_many(evs)  # type: ignore[attr-defined]
        weights = [("1", 2.5), ("4", 1.0), ("7", 0.3), ("12", 1.7), ("absent", 1.0)]
        rows, counts = await buffer.co_interactions(  # type: ignore[attr-defined]
            [c for c, _ in weights], per_item=4)
        want = co_interaction_candidates(dict(weights), rows, counts)
        assert len(want) > 5
        for limit in (1, 5, 100):
            got = await buffer.co_candidates(weights, per_item=4, limit=limit)  # type: ignore[attr-defined]
            assert got == want[:limit]
        assert await buffer.co_candidates([], per_item=4, limit=5) == []  # type: ignore[attr-defined]
        assert await buffer.co_candidates([("absent", 1.0)], per_item=4, limit=5) == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_co_interactions_stay_bounded(kind: str, redis_url: str) -> None:
    """An item keeps at most twice ``co_keep`` partners, the strongest ones."""
    async def run(buf: EventBuffer) -> dict[str, dict[str, float]]:
        evs = []
        for u in range(30):  # item "hub" is co-engaged with 30 partners, "p0" by everyone
            evs += [event(user=f"u{u}", content="p0", days=0),
                    event(user=f"u{u}", content=f"p{u + 1}", days=1),
                    event(user=f"u{u}", content="hub", days=2)]
        await buf.append_many(evs)  # type: ignore[attr-defined]
        rows, _ = await buf.co_interactions(["hub"], per_item=100)  # type: ignore[attr-defined]
        return rows

    if kind == "memory":
        rows = await run(InMemoryEventBuffer(co_keep=4))  # type: ignore[arg-type]
    else:
        async with fresh_redis(redis_url) as client:
            rows = await run(RedisEventBuffer(client, co_keep=4))
    assert len(rows["hub"]) <= 8
    assert rows["hub"]["p0"] == 30.0


async def _one_call_and_one_per_event(client: Any, evs: list[Any], **options: Any
                                      ) -> tuple[RedisEventBuffer, RedisEventBuffer]:
    """``evs`` appended in one call (key prefix "one") and one call per event
    ("many"), on the same server."""
    batched = RedisEventBuffer(client, key_prefix="one", **options)
    await batched.append_many(evs)
    single = RedisEventBuffer(client, key_prefix="many", **options)
    for ev in evs:
        await single.append(ev)
    return batched, single


async def test_trimmed_rows_are_the_same_in_one_call_or_many(redis_url: str) -> None:
    """Rows trimmed many times within one append call end exactly as with one
    call per event, and as in the in-memory buffer (same partners, same counts:
    the same ties cut at the bound)."""
    evs = [event(user=f"u{u}", content=str((u * 5 + i * 7) % 23), days=i * 0.5)
           for u in range(25) for i in range(9)]
    items = [str(i) for i in range(23)]
    memory = InMemoryEventBuffer(co_keep=3, co_partners=4)
    await memory.append_many(evs)
    want, want_counts = await memory.co_interactions(items, per_item=100)
    assert max(len(r) for r in want.values()) > 3  # the bound was reached and trimmed
    async with fresh_redis(redis_url) as client:
        for buf in await _one_call_and_one_per_event(client, evs, co_keep=3, co_partners=4):
            rows, counts = await buf.co_interactions(items, per_item=100)
            assert rows == want
            assert counts == want_counts


async def test_shared_sets_are_exactly_those_of_one_call_per_event(redis_url: str) -> None:
    """The append script collects a batch's increments of the shared sets
    (popularity, interaction counts, co-interaction rows) and applies them at
    its end. Every one of those sets, scores compared exactly, equals the state
    of one call per event: rows far from their bound (added up), rows trimmed
    along the way (applied one by one), and popularity's time-decayed floats."""
    import random

    rng = random.Random(7)
    kinds = ["view", "purchase", "rate", "add_to_cart"]
    evs = [event(user=f"u{rng.randrange(40)}", content=str(int(rng.expovariate(1 / 15)) % 60),
                 kind=rng.choice(kinds), weight=rng.choice([1.0, 2.5, 4.0, 0.5]),
                 days=rng.uniform(0, 45)) for _ in range(900)]
    # One call applies the batch user by user (in order of first appearance).
    first = {ev.user_id: i for i, ev in reversed(list(enumerate(evs)))}
    evs.sort(key=lambda ev: first[ev.user_id])

    async def state(client: Any, prefix: str) -> dict[str, list[tuple[bytes, float]]]:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        shared = sorted(k for k in keys if b":{" not in k)  # not a user's own keys
        return {k.decode().removeprefix(prefix): await client.zrange(k, 0, -1, withscores=True)
                for k in shared}

    async with fresh_redis(redis_url) as client:
        await _one_call_and_one_per_event(client, evs, co_keep=6, co_partners=5)
        want, got = await state(client, "many"), await state(client, "one")
    rows = [k for k in want if ":co:" in k]
    assert len(rows) > 30 and ":pop" in want and ":cnt" in want
    assert max(len(want[k]) for k in rows) > 6  # some rows went past the bound
    assert got == want


async def test_serving_reads_of_item_stats_are_reused_for_the_cache_time(redis_url: str) -> None:
    """With ``stats_cache_s``, ``popular`` and ``co_candidates`` reuse what they read
    for that long (identical answers, no Redis read), then read again: new events
    show up once the entry has expired. ``co_interactions`` always reads."""
    now = [100.0]
    async with fresh_redis(redis_url) as client:
        buf = RedisEventBuffer(client, stats_cache_s=5.0, clock=lambda: now[0])
        uncached = RedisEventBuffer(client)
        evs = [event(user=f"u{u}", content=str((u * 7 + i * 3) % 13), days=i)
               for u in range(12) for i in range(6)]
        await buf.append_many(evs)
        weights = [("1", 2.5), ("4", 1.0), ("7", 0.3), ("12", 1.7), ("absent", 1.0)]
        first = await buf.co_candidates(weights, per_item=4, limit=20)
        assert first == await uncached.co_candidates(weights, per_item=4, limit=20)
        pop = await buf.popular(5)
        assert pop == await uncached.popular(5)
        # One more user engages with "1" and "12": a new partner pair and new counts.
        await buf.append_many([event(user="new", content="1", days=9),
                               event(user="new", content="12", days=9.5)])
        changed = await uncached.co_candidates(weights, per_item=4, limit=20)
        assert changed != first
        now[0] += 4.9  # within the cache time: the same answers, without Redis
        calls = await client.info("commandstats")
        assert await buf.co_candidates(weights, per_item=4, limit=20) == first
        assert await buf.popular(5) == pop
        after = await client.info("commandstats")
        for cmd in ("cmdstat_zrevrange", "cmdstat_zmscore"):
            assert after[cmd]["calls"] == calls[cmd]["calls"]
        # Rows from the cache and rows read now make one answer, the same as uncached.
        mixed = RedisEventBuffer(client, stats_cache_s=5.0, clock=lambda: now[0])
        await mixed.co_candidates(weights[:2], per_item=4, limit=20)
        assert await mixed.co_candidates(weights, per_item=4, limit=20) == changed
        now[0] += 0.2  # expired: read again
        assert await buf.co_candidates(weights, per_item=4, limit=20) == changed
        assert await buf.popular(5) == await uncached.popular(5)


async def test_partners_counts_are_reused_for_the_cache_time(redis_url: str) -> None:
    """A partner's interaction count read for one row serves the rows read after it
    for ``stats_cache_s``: a row read later within that time is scored with the
    count as it was then (the answer an uncached store gave at that moment), and
    with the new count once it has expired."""
    now = [100.0]
    async with fresh_redis(redis_url) as client:
        buf = RedisEventBuffer(client, stats_cache_s=5.0, clock=lambda: now[0])
        uncached = RedisEventBuffer(client)
        await buf.append_many([event(user=f"u{u}", content=str((u * 7 + i * 3) % 13), days=i)
                               for u in range(12) for i in range(6)])
        rows, _ = await uncached.co_interactions(["1", "4"], per_item=20)
        shared = sorted(set(rows["1"]) & set(rows["4"]) - {"1", "4"})
        assert shared, "the two rows must share a partner"
        before = await uncached.co_candidates([("4", 1.0)], per_item=20, limit=20)
        await buf.co_candidates([("1", 1.0)], per_item=20, limit=20)  # reads the counts
        # A user engages with the shared partner only: its count changes, no row does.
        await buf.append_many([event(user="solo", content=shared[0], days=9)])
        after = await uncached.co_candidates([("4", 1.0)], per_item=20, limit=20)
        assert after != before
        now[0] += 4.9  # row "4" is read now; the partner's count is the cached one
        assert await buf.co_candidates([("4", 1.0)], per_item=20, limit=20) == before
        now[0] += 5.1  # row "4" and the counts read with row "1" expired: the new count
        assert await buf.co_candidates([("4", 1.0)], per_item=20, limit=20) == after


async def test_co_candidates_stay_exact_when_the_id_codes_start_over(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cached co-interaction rows hold their partners as integer codes. When the
    code table passes ``CO_ID_CODES_MAX`` it starts over, and rows coded by the
    old table are read again: the answers, also of calls that were waiting on
    Redis at that moment, stay those of an uncached store."""
    monkeypatch.setattr(redis_store, "CO_ID_CODES_MAX", 3)
    async with fresh_redis(redis_url) as client:
        buf = RedisEventBuffer(client, stats_cache_s=60.0, clock=lambda: 0.0)
        uncached = RedisEventBuffer(client)
        await buf.append_many([event(user=f"u{u}", content=str((u * 7 + i * 3) % 13), days=i)
                               for u in range(12) for i in range(6)])
        sets = [[("1", 2.5), ("4", 1.0)], [("7", 0.3), ("12", 1.7)],
                [("1", 1.0), ("12", 2.0), ("3", 0.5)]]
        want = [await uncached.co_candidates(w, per_item=4, limit=20) for w in sets]
        assert all(want)
        tables = []
        for _ in range(3):
            got = await asyncio.gather(*(buf.co_candidates(w, per_item=4, limit=20)
                                         for w in sets))
            assert got == want
            tables.append(buf._id_codes)
        assert tables[0] is not tables[-1]  # it started over


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_no_partners_means_no_co_interaction_rows(kind: str, redis_url: str) -> None:
    """``co_partners=0`` pairs a new item with none of the user's items (the
    script once asked Redis for the range 0..-1, which is every item), while
    the interaction counts are still kept."""
    evs = [event(user=f"u{u}", content=str(i), days=i) for u in range(3) for i in range(4)]
    items = [str(i) for i in range(4)]

    async def check(buf: Any) -> None:
        await buf.append_many(evs)
        rows, counts = await buf.co_interactions(items, per_item=10)
        assert all(not r for r in rows.values())
        assert counts == {c: 3.0 for c in items}

    if kind == "memory":
        await check(InMemoryEventBuffer(co_partners=0))
    else:
        async with fresh_redis(redis_url) as client:
            await check(RedisEventBuffer(client, co_partners=0))
