"""The worker end to end on a real Kafka broker, real Redis and embedded Qdrant."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from tests.conftest import SHARED
from tests.e2e.conftest import Stack, genre_of, track
from tests.polling import eventually
from tests.servers import WorkerProcess
from worker.client import RecsysClient

T = TypeVar("T")
pytestmark = pytest.mark.kafka


async def produce(stack: Stack, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(stack.events_topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def saved_signals(redis_url: str, prefix: str, *users: str) -> list[bytes]:
    """Wait until each user's signals are saved in Redis; their JSON, in order."""
    redis = Redis.from_url(redis_url)
    try:
        return [await eventually(lambda u=u: redis.get(f"{prefix}:{{{u}}}:sig"),
                                 what=f"{u}'s signals") for u in users]
    finally:
        await redis.aclose()


def client(stack: Stack, **kw: Any) -> RecsysClient:
    return RecsysClient(stack.broker, requests_topic=stack.requests_topic, timeout=20.0, **kw)


async def test_events_update_buffer_and_signals_in_redis(
    stack: Stack, worker: WorkerProcess
) -> None:
    """Raw events on the topic become buffered interactions and saved signals."""
    user = f"buf-{uuid.uuid4().hex[:6]}"
    await produce(stack, [(user.encode(), track(user, "100")),
                          (user.encode(), track(user, "101", event="Product Added"))])
    redis = Redis.from_url(stack.redis_url)
    try:
        zkey = f"{stack.prefix}:{{{user}}}:z"
        await eventually(lambda: _gte(redis.zcard(zkey), 2), what="2 buffered events")
        raw = await eventually(lambda: redis.get(f"{stack.prefix}:{{{user}}}:sig"),
                               what="saved signals")
        sig = orjson.loads(raw)
        assert sig["counts_by_type"] == {"add_to_cart": 1, "view": 1}
        assert sig["tag_affinities"]["genre:Comedy"] == pytest.approx(4.0)
        assert set(sig["seen_ids"]) == {"100", "101"}
        assert 0 < await redis.ttl(f"{stack.prefix}:{{{user}}}:sig") <= 7 * 86_400
    finally:
        await redis.aclose()


async def _gte(coro: Awaitable[int], n: int) -> bool:
    return await coro >= n


async def test_recommendations_reflect_the_events(stack: Stack, worker: WorkerProcess) -> None:
    """After engaging with Horror items, Horror dominates and seen items are excluded."""
    user = f"rec-{uuid.uuid4().hex[:6]}"
    seen = ["120", "121", "122", "123"]
    await produce(stack, [(user.encode(), track(user, c, event="Order Completed"
                                                if i == 0 else "Product Viewed"))
                          for i, c in enumerate(seen)])
    async with client(stack) as c:
        async def horror_reply() -> dict[str, Any] | None:
            reply = await c.recommend(user, k=10)
            return reply if not reply.get("cold_start") else None

        reply = await eventually(horror_reply, what="a personalised reply")
    ids = [it["content_id"] for it in reply["items"]]
    assert len(ids) == 10
    assert not set(ids) & set(seen), "seen items must be excluded"
    genres = [genre_of(i) for i in ids]
    assert genres.count("Horror") >= 6, genres
    assert genres[:3] == ["Horror"] * 3
    assert all(it["reason"] for it in reply["items"])


async def test_unknown_user_gets_a_cold_start_answer(stack: Stack, worker: WorkerProcess) -> None:
    async with client(stack) as c:
        reply = await c.recommend(f"nobody-{uuid.uuid4().hex}", k=5,
                                  query="a documentary about nature")
    assert reply["cold_start"] is True
    assert reply["items"], reply
    assert genre_of(reply["items"][0]["content_id"]) == "Documentary"
    assert reply["items"][0]["reason"] == "matches your search"


async def test_malformed_request_gets_an_error_reply(stack: Stack, worker: WorkerProcess) -> None:
    async with client(stack) as c:
        bad_json = await c.send_raw("x", b"{not json")
        bad_k = await c.send_raw("x", orjson.dumps({"user_id": "x", "k": 0}))
        huge = await c.send_raw("x", orjson.dumps({"user_id": "x", "query": "q" * 200_000}))
        still_ok = await c.recommend("x", k=3)
    assert bad_json["error"] == "bad_request"
    assert bad_k["error"] == "bad_request" and "k must be" in bad_k["detail"]
    assert huge["error"] == "bad_request"
    assert "items" in still_ok


def _invalid_payloads() -> list[tuple[int, bytes]]:
    import base64

    path = SHARED / "rudderstack" / "invalid.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared fixtures are not checked out)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        obj = orjson.loads(line)
        obj.pop("_why", None)
        if "_raw_b64" in obj:
            out.append((n, base64.b64decode(obj["_raw_b64"])))
        elif "_raw" in obj:
            out.append((n, obj["_raw"].encode()))
        else:
            out.append((n, orjson.dumps(obj)))
    return out


async def test_invalid_payloads_are_dead_lettered_and_the_worker_keeps_serving(
    stack: Stack, worker: WorkerProcess
) -> None:
    """Every invalid.jsonl payload as raw bytes reaches the DLQ with a reason.

    Lines 23 and 24 are invalid only after valid.jsonl (duplicate / conflicting
    messageId): valid lines 1 and 3 are sent first, so 23 is dropped as a
    redelivery and 24 dead-lettered as a conflict.
    """
    valid = (SHARED / "rudderstack" / "valid.jsonl").read_text().splitlines()
    payloads = _invalid_payloads()
    marker = f"after-{uuid.uuid4().hex[:6]}"
    await produce(stack, [(None, valid[0].encode()), (None, valid[2].encode())])
    await asyncio.sleep(1.0)  # let the originals land before their redeliveries
    await produce(stack, [(None, raw) for _, raw in payloads]
                  + [(marker.encode(), track(marker, "140"))])

    consumer = AIOKafkaConsumer(stack.dlq_topic, bootstrap_servers=stack.broker,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got: dict[bytes, str] = {}
    try:
        deadline = time.monotonic() + 60
        while len(got) < len(payloads) - 1 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    headers = dict(m.headers)
                    got[m.value] = headers["x-dlq-reason"].decode()
    finally:
        await consumer.stop()
    by_line = {n: raw for n, raw in payloads}
    missing = [n for n, raw in payloads if raw not in got and n not in (23, 24)]
    assert missing == [], f"lines not dead-lettered: {missing}"
    assert all(got[by_line[n]] for n in by_line if n not in (23, 24))
    conflicts = [v for v, reason in got.items() if reason == "message_id_conflict"]
    assert len(conflicts) == 1 and b"40412" in conflicts[0]
    redis = Redis.from_url(stack.redis_url)
    try:
        await eventually(lambda: redis.get(f"{stack.prefix}:{{{marker}}}:sig"),
                         what="the valid event after the invalid ones")
        # The redelivery (line 23) and the conflict (line 24) changed nothing.
        assert await redis.zcard(f"{stack.prefix}:{{usr_48213}}:z") == 2
    finally:
        await redis.aclose()
    async with client(stack) as c:
        assert "items" in await c.recommend(marker, k=3)


async def test_a_plain_aiokafka_client_gets_a_reply(stack: Stack, worker: WorkerProcess) -> None:
    """No Faust, no project client: JSON + the two headers, match on correlation_id."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    reply_topic = f"plain-reply-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.broker)
    await admin.start()
    await admin.create_topics([NewTopic(reply_topic, 1, 1)])
    await admin.close()
    consumer = AIOKafkaConsumer(reply_topic, bootstrap_servers=stack.broker,
                                auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker)
    await consumer.start()
    await producer.start()
    cid = uuid.uuid4().hex
    try:
        await producer.send_and_wait(
            stack.requests_topic, key=b"plain-user",
            value=orjson.dumps({"user_id": "plain-user", "k": 4}),
            headers=[("Faust-Ag-ReplyTo", reply_topic.encode()),
                     ("Faust-Ag-CorrelationId", cid.encode())],
        )
        msg = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await producer.stop()
        await consumer.stop()
    body = orjson.loads(msg.value)
    assert body["correlation_id"] == cid
    assert len(body["value"]["items"]) == 4


async def test_a_reply_topic_that_cannot_be_written_does_not_block_serving(
    stack: Stack, worker: WorkerProcess
) -> None:
    """A caller that names a reply topic nobody can write to (deleted, or an
    invalid name) must not hold up the requests behind it."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker)
    await producer.start()
    try:
        for bad in ("no such topic!", "x" * 300, f"gone-{uuid.uuid4().hex[:8]}"):
            await producer.send_and_wait(
                stack.requests_topic, key=b"stray-user",
                value=orjson.dumps({"user_id": "stray-user", "k": 2}),
                headers=[("Faust-Ag-ReplyTo", bad.encode()),
                         ("Faust-Ag-CorrelationId", uuid.uuid4().hex.encode())],
            )
    finally:
        await producer.stop()
    t0 = time.monotonic()
    async with client(stack) as c:  # 20 s timeout
        reply = await c.recommend("stray-user", k=2)
    assert "items" in reply, reply  # answered (an unknown user: popular items, if any)
    assert time.monotonic() - t0 < 20


async def test_two_workers_share_the_partitions_and_both_answer(
    stack: Stack, tmp_path: Path
) -> None:
    """Two processes in one consumer group: both get partitions; every user answered."""
    import shutil

    env = {"APP_ID": stack.env["APP_ID"] + "-pair"}
    # An embedded Qdrant shard is locked by its process: each replica gets a copy.
    for name in ("a", "b"):
        shutil.copytree(Path(stack.env["QDRANT_PATH"]), tmp_path / f"qdrant-{name}")
    a = stack.worker("pair-a", QDRANT_PATH=str(tmp_path / "qdrant-a"), **env)
    b = stack.worker("pair-b", QDRANT_PATH=str(tmp_path / "qdrant-b"), **env)
    a.start()
    try:
        a.wait_for_log("[^Worker]: Ready", timeout=120)
        b.start()
        b.wait_for_log("[^Worker]: Ready", timeout=120)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            la, lb = _last_assignment(a), _last_assignment(b)
            if la and lb and _requests(la, stack) and _requests(lb, stack):
                break
            await asyncio.sleep(0.5)
        la, lb = _last_assignment(a), _last_assignment(b)
        assert _requests(la, stack) and _requests(lb, stack), (la, lb)
        assert not set(_requests(la, stack)) & set(_requests(lb, stack))
        users = [f"pair-{i}" for i in range(24)]
        async with client(stack) as c:
            replies = await asyncio.gather(*(c.recommend(u, k=3) for u in users))
        assert all(len(r["items"]) == 3 for r in replies)
    finally:
        a.stop()
        b.stop()


def _last_assignment(w: WorkerProcess) -> list[str] | None:
    lines = [ln for ln in w.log().splitlines() if "partitions assigned: " in ln]
    if not lines:
        return None
    return lines[-1].split("partitions assigned: ", 1)[1].split()


def _requests(assigned: list[str] | None, stack: Stack) -> list[str]:
    return [a for a in assigned or [] if a.startswith(stack.requests_topic + ":")]


async def test_the_table_serves_and_its_changelog_holds_what_redis_holds(
    stack: Stack, worker: WorkerProcess
) -> None:
    """The apply agent writes signals into the table with batched changelog records:
    a request is answered from the table (not the Redis fallback), and the
    changelog's latest record per user is byte for byte the signals Redis holds."""
    from tests.e2e.test_operations import metrics

    users = [f"tbl-{uuid.uuid4().hex[:6]}-{i}" for i in range(12)]
    await produce(stack, [(u.encode(), track(u, str(100 + i % 20))) for i, u in enumerate(users)]
                  + [(u.encode(), track(u, "121", event="Product Added")) for u in users])
    redis = Redis.from_url(stack.redis_url)
    try:
        async def all_saved() -> dict[str, bytes] | None:
            raws = await redis.mget([f"{stack.prefix}:{{{u}}}:sig" for u in users])
            if all(r and orjson.loads(r)["event_count"] == 2 for r in raws):
                return dict(zip(users, raws, strict=True))
            return None

        saved = await eventually(all_saved, what="signals of every user with both events")
    finally:
        await redis.aclose()

    before = (await metrics(worker)).get('recsys_signals_lookups_total{source=table}', 0.0)
    async with client(stack) as c:
        reply = await c.recommend(users[0], k=3)
    assert reply["items"] and not reply["cold_start"]
    after = await metrics(worker)
    assert after['recsys_signals_lookups_total{source=table}'] == before + 1

    changelog = f"{stack.env['APP_ID']}-user-signals-changelog"
    consumer = AIOKafkaConsumer(changelog, bootstrap_servers=stack.broker,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    latest: dict[str, bytes] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    if r.key and r.key.decode() in saved:
                        latest[r.key.decode()] = r.value
            if set(saved) <= latest.keys() and all(
                    orjson.loads(latest[u])["event_count"] == 2 for u in saved):
                break
    finally:
        await consumer.stop()
    assert latest == saved


@pytest.mark.parametrize("consumer_thread", ["true", "false"])
async def test_either_consumer_mode_ingests_and_answers(
    stack: Stack, tmp_path: Path, consumer_thread: str
) -> None:
    """The consumer on the worker's loop (the default) and in Faust's own thread
    (``CONSUMER_THREAD=true``): each worker, in its own group, reads the events,
    saves the signals and answers over the reply topic."""
    import shutil

    run = uuid.uuid4().hex[:6]
    shutil.copytree(Path(stack.env["QDRANT_PATH"]), tmp_path / "qdrant")
    env = {**stack.env, "APP_ID": f"{stack.env['APP_ID']}-mode-{run}",
           "EVENTS_TOPIC": f"{stack.env['EVENTS_TOPIC']}-mode-{run}",
           "REQUESTS_TOPIC": f"{stack.env['REQUESTS_TOPIC']}-mode-{run}",
           "KEY_PREFIX": f"{stack.prefix}m{run}"}
    own = Stack(env, stack.tmp, stack.broker, stack.redis_url)
    w = own.worker(f"mode-{consumer_thread}-{run}", QDRANT_PATH=str(tmp_path / "qdrant"),
                   CONSUMER_THREAD=consumer_thread)
    w.start()
    try:
        w.wait_for_log("[^Worker]: Ready", timeout=120)
        expected = "thread" if consumer_thread == "true" else "loop"
        assert f"consumer={expected}" in w.log()
        user = f"mode-{run}"
        await produce(own, [(user.encode(), track(user, c)) for c in ("120", "121", "122")])
        await saved_signals(own.redis_url, own.prefix, user)
        async with client(own) as c:
            reply = await c.recommend(user, k=5)
        assert not reply.get("cold_start") and len(reply["items"]) == 5, reply
        assert not {it["content_id"] for it in reply["items"]} & {"120", "121", "122"}
    finally:
        w.stop()
