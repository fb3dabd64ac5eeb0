"""Operations on a running worker: /healthz, /readyz, /metrics, logs, SIGTERM.

Real Kafka, real Redis (a private redis-server where a test stops it), the
embedded Qdrant (a copy per extra worker: a shard is locked by its process).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from tests.e2e.conftest import Stack, track
from tests.e2e.test_worker_e2e import client, eventually, produce, saved_signals
from tests.servers import RedisServer, WorkerProcess
from worker.metrics import parse_metrics

pytestmark = pytest.mark.kafka


def http_get(port: str | int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def get(w: WorkerProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http_get, w.env["WEB_PORT"], path)


async def metrics(w: WorkerProcess) -> dict[str, float]:
    status, headers, body = await get(w, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body.decode())


async def wait_ready(w: WorkerProcess, timeout: float = 120.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        if w.proc is not None and w.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{w.log()[-3000:]}")
        try:
            status, _, body = await get(w, "/readyz")
        except OSError:  # the web server starts after table recovery
            return None
        return orjson.loads(body) if status == 200 else None

    return await eventually(probe, timeout=timeout, what="/readyz 200")


def own_qdrant(stack: Stack, tmp: Path, name: str) -> str:
    """A copy of the module's embedded Qdrant (the module worker holds the original)."""
    dest = tmp / f"qdrant-{name}"
    shutil.copytree(Path(stack.env["QDRANT_PATH"]), dest)
    return str(dest)


# --- endpoints on the module's worker ---------------------------------------------------


async def test_healthz_answers(stack: Stack, worker: WorkerProcess) -> None:
    status, headers, body = await get(worker, "/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert orjson.loads(body)["status"] == "ok"


async def test_readyz_is_200_with_the_checks(stack: Stack, worker: WorkerProcess) -> None:
    body = await wait_ready(worker)
    assert body["ready"] is True
    assert body["partitions"] >= 3  # events, interactions and requests, 4 partitions each
    assert body["stores"] == {"redis": "ok", "qdrant": "ok"}
    assert body["retrying"] is None
    assert "reason" not in body


async def test_metrics_move_when_events_flow(stack: Stack, worker: WorkerProcess) -> None:
    await wait_ready(worker)
    before = await metrics(worker)
    user = f"met-{uuid.uuid4().hex[:6]}"
    n = 5
    records = [(user.encode(), track(user, str(100 + i))) for i in range(n)]
    await produce(stack, [*records, (None, b"{not json")])
    await saved_signals(stack.redis_url, stack.prefix, user)
    await produce(stack, records[:1])  # the same record again: a redelivery
    async with client(stack) as c:
        assert "items" in await c.recommend(user, k=3)

    def delta(after: dict[str, float], key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    async def moved() -> dict[str, float] | None:
        after = await metrics(worker)
        ok = (delta(after, "recsys_records_consumed_total") >= n + 1
              and delta(after, "recsys_interactions_written_total") >= n
              and delta(after, "recsys_interactions_redelivered_total") >= 1
              and delta(after, "recsys_dead_lettered_total{reason=invalid_json}") >= 1
              and delta(after, "recsys_requests_total{outcome=served}") >= 1
              and delta(after, "recsys_malloc_trims_total") >= 1)
        return after if ok else None

    after = await eventually(moved, what="counters to move")
    for key in ("recsys_ingest_batch_duration_seconds_count{agent=ingest}",
                "recsys_ingest_batch_duration_seconds_count{agent=apply}",
                "recsys_request_duration_seconds_count",
                "recsys_stage_duration_seconds_count{path=ingest,stage=parse}",
                "recsys_stage_duration_seconds_count{path=apply,stage=redis}",
                "recsys_stage_duration_seconds_count{path=apply,stage=qdrant}",
                "recsys_stage_duration_seconds_count{path=request,stage=ranking}",
                "recsys_stage_duration_seconds_count{path=request,stage=redis}"):
        assert delta(after, key) >= 1, key
    lags = {k: v for k, v in after.items() if k.startswith("recsys_consumer_lag{")}
    assert any(f"topic={stack.events_topic}" in k for k in lags), lags
    assert any(f"topic={stack.requests_topic}" in k for k in lags), lags
    assert all(v >= 0 for v in lags.values())
    assert after["recsys_assigned_partitions"] >= 3
    assert 0 < after["recsys_malloc_trim_seconds_total"] < after["recsys_malloc_trims_total"]
    assert after["recsys_retry_in_progress"] == 0
    assert after["recsys_last_progress_timestamp_seconds"] > time.time() - 120
    # One line per batch with dead letters, with the reasons.
    worker.wait_for_log("dead-lettered 1 of ", timeout=10)
    assert "invalid_json=1" in worker.log()


async def test_records_on_their_users_partition_skip_the_repartition_topic(
        stack: Stack, worker: WorkerProcess) -> None:
    """The events topic has TOPIC_PARTITIONS partitions: a record keyed by its user
    is on its user's partition, and the ingest agent applies it itself; a record
    keyed otherwise goes through the repartition topic. Both are applied."""
    from worker.pipeline import user_partition

    await wait_ready(worker)
    parts = int(stack.env["TOPIC_PARTITIONS"])
    keyed, other = f"dir-{uuid.uuid4().hex[:6]}", f"fwd-{uuid.uuid4().hex[:6]}"
    key = next(k for k in (f"anon-{i}" for i in range(1000))
               if user_partition(k, parts) != user_partition(other, parts))
    before = await metrics(worker)
    await produce(stack, [(keyed.encode(), track(keyed, "100")),
                          (key.encode(), track(other, "101"))])
    await saved_signals(stack.redis_url, stack.prefix, keyed, other)
    after = await metrics(worker)
    forwarded = "recsys_interactions_forwarded_total"
    assert after[forwarded] - before.get(forwarded, 0.0) == 1
    assert after["recsys_interactions_written_total"] - before[
        "recsys_interactions_written_total"] >= 2


# --- readiness follows Redis (a private redis-server) ----------------------------------


async def test_readiness_turns_503_when_redis_stops_and_200_when_it_returns(
    stack: Stack, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    # Its own events topic, created (and given a first commit) by the worker, like in
    # production.
    topic = f"{stack.events_topic}-rd"
    w = stack.worker("redis-down", REDIS_URL=server.url, APP_ID=f"{stack.env['APP_ID']}-rd",
                     EVENTS_TOPIC=topic, QDRANT_PATH=own_qdrant(stack, tmp_path, "rd"),
                     RETRY_MAX_BACKOFF_S="1")
    w.start()
    try:
        await wait_ready(w)
        server.stop()

        async def not_ready() -> dict[str, Any] | None:
            status, _, body = await get(w, "/readyz")
            return orjson.loads(body) if status == 503 else None

        body = await eventually(not_ready, timeout=30, what="/readyz 503")
        assert body["ready"] is False
        assert body["stores"]["redis"] != "ok" and body["stores"]["qdrant"] == "ok"
        assert "redis" in body["reason"]
        # An event arriving during the outage is retried, not lost.
        user = f"outage-{uuid.uuid4().hex[:6]}"
        producer = AIOKafkaProducer(bootstrap_servers=stack.broker, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, key=user.encode(), value=track(user, "101"))
        finally:
            await producer.stop()
        body = await eventually(lambda: _retrying(w), timeout=30, what="a retry in progress")
        assert "retrying" in body["reason"]
        status, _, _ = await get(w, "/healthz")
        assert status == 200, "liveness must not follow Redis"

        server.start()  # same port
        await wait_ready(w, timeout=60)
        redis = Redis.from_url(server.url)
        try:
            await eventually(lambda: redis.zcard(f"{stack.prefix}:{{{user}}}:z"),
                             what="the event applied after the outage")
        finally:
            await redis.aclose()
        after = await metrics(w)
        assert after["recsys_retries_total"] >= 1
        log = w.log()
        assert "not ready: " in log and "transient failure over" in log
    finally:
        w.stop()
        server.stop()


async def _retrying(w: WorkerProcess) -> dict[str, Any] | None:
    status, _, body = await get(w, "/readyz")
    parsed = orjson.loads(body)
    return parsed if status == 503 and parsed.get("retrying") else None


# --- SIGTERM mid-stream: nothing lost, nothing doubled, exit 0 ------------------------


async def _redis_state(redis: Redis, prefix: str, users: list[str]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for u in users:
        members = await redis.zrange(f"{prefix}:{{{u}}}:z", 0, -1, withscores=True)
        sig = await redis.get(f"{prefix}:{{{u}}}:sig")
        state[u] = {"z": sorted((m.decode(), s) for m, s in members),
                    "sig": orjson.loads(sig) if sig else None}
    return state


# Before worker.consumer_guard this lost events in most fresh-clone runs: Faust
# 0.15 committed past records it had jumped over after the restart's rebalance.
async def test_sigterm_mid_stream_loses_nothing_and_exits_0(
    stack: Stack, tmp_path: Path
) -> None:
    app_id = f"{stack.env['APP_ID']}-term"
    topic = f"{stack.events_topic}-term"
    prefix = stack.prefix + "t"
    qdrant = own_qdrant(stack, tmp_path, "term")
    env = {"APP_ID": app_id, "EVENTS_TOPIC": topic, "KEY_PREFIX": prefix,
           "QDRANT_PATH": qdrant, "BATCH_SIZE": "20", "READY_STALL_S": "20"}
    w = stack.worker("term", **env)
    w.start()
    users = [f"term-{i}" for i in range(12)]
    base = datetime.now(UTC) - timedelta(hours=2)
    produced: dict[str, list[str]] = {u: [] for u in users}
    records: list[tuple[bytes, bytes]] = []
    for i in range(900):
        u = users[i % len(users)]
        mid = f"m-{i}"
        produced[u].append(mid)
        ts = (base + timedelta(seconds=i)).isoformat(timespec="milliseconds")
        records.append((u.encode(), track(u, str(100 + i % 60), mid=mid, ts=ts)))
    try:
        await wait_ready(w)
        producer = AIOKafkaProducer(bootstrap_servers=stack.broker, acks="all")
        await producer.start()
        try:
            sent = 0

            async def send(upto: int) -> None:
                nonlocal sent
                while sent < upto:
                    key, value = records[sent]
                    await producer.send(topic, key=key, value=value)
                    sent += 1
                    if sent % 30 == 0:
                        await producer.flush()
                        await asyncio.sleep(0.05)
                await producer.flush()

            await send(450)
            # Stop while events are still arriving and being processed.
            stopping = asyncio.create_task(asyncio.to_thread(_timed_stop, w))
            await send(700)
            code, took = await stopping
            await send(len(records))
        finally:
            await producer.stop()
        assert code == 0, w.log()[-3000:]
        assert took < 30, took
        log = w.log()
        assert "shutdown: draining in-flight events" in log
        assert "shutdown complete: " in log
        print(f"SIGTERM -> exit {code} in {took:.2f}s")  # shown with -s

        # Restart the same group; and a clean pass (new group, other prefix) for comparison.
        w2 = stack.worker("term", **env)
        clean = stack.worker("term-clean", **{**env, "APP_ID": app_id + "-clean",
                                              "KEY_PREFIX": prefix + "c",
                                              "QDRANT_PATH": own_qdrant(stack, tmp_path, "c")})
        w2.start()
        clean.start()
        redis = Redis.from_url(stack.redis_url)
        try:
            async def complete(pfx: str) -> bool:
                for u in users:
                    if await redis.zcard(f"{pfx}:{{{u}}}:z") < len(produced[u]):
                        return False
                return True

            try:
                await eventually(lambda: complete(prefix), timeout=150, what="restart to finish")
            except AssertionError as exc:
                _, _, ready = await get(w2, "/readyz")
                lag = {k: v for k, v in (await metrics(w2)).items() if "lag" in k and v}
                raise AssertionError(f"{exc}; /readyz: {ready.decode()}; lag: {lag}") from None
            await eventually(lambda: complete(prefix + "c"), timeout=150, what="the clean pass")
            await asyncio.sleep(2)  # let any redelivered duplicate arrive (must change nothing)
            resumed = await _redis_state(redis, prefix, users)
            reference = await _redis_state(redis, prefix + "c", users)
            for u in users:
                assert [m for m, _ in resumed[u]["z"]] == sorted(produced[u]), u
                assert resumed[u] == reference[u], u
            pop = dict(await redis.zrange(f"{prefix}:pop", 0, -1, withscores=True))
            pop_ref = dict(await redis.zrange(f"{prefix}c:pop", 0, -1, withscores=True))
            assert pop.keys() == pop_ref.keys()
            assert all(pop[k] == pytest.approx(pop_ref[k], rel=1e-9) for k in pop)
        finally:
            await redis.aclose()
            assert w2.stop() == 0
            assert clean.stop() == 0
    finally:
        w.stop()


async def test_transactional_input_is_fully_processed_and_committed(
    stack: Stack, tmp_path: Path
) -> None:
    """Events written by a transactional producer leave offsets without records
    (commit markers). The worker never commits past a record it did not process,
    so it must prove those offsets empty with the broker before the commit moves:
    every event lands in Redis and the group's lag on the topic reaches 0."""
    app_id = f"{stack.env['APP_ID']}-tx"
    topic = f"{stack.events_topic}-tx"
    prefix = stack.prefix + "x"
    w = stack.worker("tx", APP_ID=app_id, EVENTS_TOPIC=topic, KEY_PREFIX=prefix,
                     QDRANT_PATH=own_qdrant(stack, tmp_path, "tx"))
    w.start()
    users = [f"tx-{i}" for i in range(6)]
    base = datetime.now(UTC) - timedelta(hours=1)
    produced: dict[str, int] = dict.fromkeys(users, 0)
    try:
        await wait_ready(w)
        producer = AIOKafkaProducer(bootstrap_servers=stack.broker,
                                    transactional_id=f"tx-{uuid.uuid4().hex[:8]}")
        await producer.start()
        try:
            n = 0
            for _ in range(5):  # 5 transactions of 24 events: markers between them
                async with producer.transaction():
                    for _ in range(24):
                        u = users[n % len(users)]
                        ts = (base + timedelta(seconds=n)).isoformat(timespec="milliseconds")
                        await producer.send(topic, key=u.encode(),
                                            value=track(u, str(100 + n % 60), mid=f"x-{n}", ts=ts))
                        produced[u] += 1
                        n += 1
        finally:
            await producer.stop()
        redis = Redis.from_url(stack.redis_url)
        try:
            async def complete() -> bool:
                return all([await redis.zcard(f"{prefix}:{{{u}}}:z") == produced[u]
                            for u in users])

            await eventually(complete, timeout=60, what="every transactional event applied")
        finally:
            await redis.aclose()

        async def caught_up() -> dict[str, float] | None:
            m = await metrics(w)
            lag = {k: v for k, v in m.items()
                   if k.startswith("recsys_consumer_lag{") and f"topic={topic}" in k}
            return m if len(lag) == 4 and not any(lag.values()) else None

        m = await eventually(caught_up, timeout=60, what="the commit past the markers")
        assert m["recsys_consumer_gaps_confirmed_total"] >= 1
        _, _, ready = await get(w, "/readyz")
        assert orjson.loads(ready)["ready"] is True
    finally:
        assert w.stop() == 0


def _timed_stop(w: WorkerProcess) -> tuple[int | None, float]:
    time.sleep(0.3)
    t0 = time.monotonic()
    code = w.stop(signal.SIGTERM, timeout=60)
    return code, time.monotonic() - t0


# --- logs: JSON lines, secrets never printed ------------------------------------------


DEAD_LETTER_LINE = re.compile(r"dead-lettered \d+ of \d+ records: .*invalid_json=\d+")


async def test_web_port_0_runs_the_worker_without_its_web_server(
        stack: Stack, tmp_path: Path) -> None:
    """WEB_PORT=0 disables the web server (README). It used to stop the worker at
    start-up: Faust refuses port 0 ("Value 0 is out of range for Port")."""
    prefix = f"{stack.prefix}nw"
    w = stack.worker("noweb", WEB_PORT="0", APP_ID=f"{stack.env['APP_ID']}-noweb",
                     KEY_PREFIX=prefix, QDRANT_PATH=own_qdrant(stack, tmp_path, "noweb"))
    w.start()
    try:
        w.wait_for_log("[^Worker]: Ready", timeout=120)
        user = f"nw-{uuid.uuid4().hex[:6]}"
        await produce(stack, [(user.encode(), track(user, "100"))])
        await saved_signals(stack.redis_url, prefix, user)
    finally:
        assert w.stop() == 0
    log = w.log()
    assert "web_port=off" in log  # the start line
    assert "Traceback" not in log


async def test_json_logs_and_secrets_never_printed(stack: Stack, tmp_path: Path) -> None:
    """A worker at DEBUG with a Redis password and a SASL password set prints neither;
    with LOG_JSON=true our lines and Faust's are JSON objects."""
    redis_pw = "redis-Pa55-" + uuid.uuid4().hex[:8]
    sasl_pw = "sasl-Pa55-" + uuid.uuid4().hex[:8]
    server = RedisServer(tmp_path / "redis-auth", extra=["--requirepass", redis_pw])
    server.start()
    url = f"redis://:{redis_pw}@127.0.0.1:{server.port}/0"
    w = stack.worker("secrets", REDIS_URL=url, KAFKA_SASL_USERNAME="recsys",
                     KAFKA_SASL_PASSWORD=sasl_pw, LOG_LEVEL="DEBUG", LOG_JSON="true",
                     APP_ID=f"{stack.env['APP_ID']}-sec",
                     QDRANT_PATH=own_qdrant(stack, tmp_path, "sec"))
    w.start()
    try:
        await wait_ready(w)
        user = f"sec-{uuid.uuid4().hex[:6]}"
        await produce(stack, [(user.encode(), track(user, "100")), (None, b"[1")])
        redis = Redis.from_url(url)
        try:
            await eventually(lambda: redis.get(f"{stack.prefix}:{{{user}}}:sig"),
                             what="the event applied")

            # The malformed record, maybe in a later batch, maybe beside other
            # malformed records of the shared topic (this new group reads it all).
            async def dead_lettered() -> bool:
                return DEAD_LETTER_LINE.search(w.log()) is not None

            await eventually(dead_lettered, what="the malformed record dead-lettered")
        finally:
            await redis.aclose()
    finally:
        assert w.stop() == 0
        server.stop()
    log = w.log()
    assert redis_pw not in log and sasl_pw not in log
    assert "redis://:***@127.0.0.1" in log  # the start line names Redis, masked
    lines = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    ours = [ln for ln in lines if ln["logger"].startswith("worker.")]
    assert any(ln["msg"].startswith("worker started: ") for ln in ours)
    assert any(ln["msg"].startswith("partitions assigned: ") for ln in ours)
    assert any(DEAD_LETTER_LINE.match(ln["msg"]) for ln in ours)
    assert any(ln["msg"].startswith("shutdown complete: ") for ln in ours)
    assert any(ln["logger"].startswith("faust.") and ln["level"] == "debug" for ln in lines)
    assert any("[^Worker]: Ready" in ln["msg"] for ln in lines)
    # Our lines never carry a user id in clear (Faust's and aiokafka's DEBUG lines
    # print payloads: production runs at INFO).
    assert not [ln for ln in ours if user in json.dumps(ln)]
