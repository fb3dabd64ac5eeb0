"""Nobody let in, nothing leaked: the worker on a password-protected Redis with a
least-privilege ACL user, configured with secrets that must never reach a log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import gen_events, produce, snapshot, wait_caught_up
from tests.servers import RedisServer
from worker.client import RecsysClient

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

REDIS_PW = "s3cr3t-Redis-pw-9f2c"
KAFKA_PW = "s3cr3t-Kafka-pw-51ab"
QDRANT_KEY = "s3cr3t-Qdrant-key-77d0"
ADMIN_PW = "adm1n-pw-03e1"

#: Everything the worker needs, nothing more (the README documents this line).
#: The Lua scripts' own commands are checked against the ACL too.
ACL = ("on >{pw} ~{prefix}:* resetchannels -@all +ping +get +set +zrevrange "
       "+evalsha +eval +script|load +script|exists "
       "+hsetnx +hget +hdel +hmget +zadd +zrange +zrangebyscore +zremrangebyscore "
       "+zscore +zincrby +expire +zcard +zremrangebyrank +zmscore")


async def test_least_privilege_redis_user_and_no_secret_in_logs(make_run: Any,
                                                                tmp_path: Path) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import NoPermissionError

    server = RedisServer(tmp_path / "redis-acl")
    server.start()
    admin = Redis.from_url(server.url)
    try:
        run = make_run("acl", LOG_LEVEL="DEBUG", KAFKA_SASL_USERNAME="recsys",
                       KAFKA_SASL_PASSWORD=KAFKA_PW, QDRANT_API_KEY=QDRANT_KEY)
        prefix = run.prefix
        await admin.execute_command("ACL", "SETUSER", "recsys",
                                    *ACL.format(pw=REDIS_PW, prefix=prefix).split())
        await admin.execute_command("ACL", "SETUSER", "default", "on", f">{ADMIN_PW}")
        await admin.aclose()
        admin = Redis.from_url(f"redis://default:{ADMIN_PW}@127.0.0.1:{server.port}/0")
        url = f"redis://recsys:{REDIS_PW}@127.0.0.1:{server.port}/0"
        run.env["REDIS_URL"] = url

        records = gen_events(300, users=30, seed=11)
        w = run.worker("w")
        w.start()
        await asyncio.to_thread(w.wait_for_log, "[^Worker]: Ready", 120)
        await produce(run.broker, run.env["EVENTS_TOPIC"], records)
        await wait_caught_up(run.broker, run.group, run.topics, timeout=120)
        state = await snapshot(f"redis://default:{ADMIN_PW}@127.0.0.1:{server.port}/0", prefix)
        async with RecsysClient(run.broker, requests_topic=run.env["REQUESTS_TOPIC"],
                                timeout=30) as c:
            user = next(iter(state.signals))
            reply = await c.recommend(user, k=3)
            cold = await c.recommend("someone-new", k=3, query="a comedy")
        denied = await admin.execute_command("ACL", "LOG")
        # The ACL user cannot step outside its key prefix or run admin commands.
        limited = Redis.from_url(url)
        refused = 0
        for attempt in (limited.get("other:key"), limited.flushall(), limited.keys("*"),
                        limited.config_get("*")):
            try:
                await attempt
            except NoPermissionError:
                refused += 1
        await limited.aclose()
        w.stop()  # SIGTERM: waits for the exit, so the log is complete
        log = w.log()
    finally:
        await admin.aclose()
        server.stop()

    assert len(state.signals) == 30 and state.buffered > 300, (len(state.signals), state.buffered)
    assert "items" in reply and reply["items"] and not reply["cold_start"], reply
    assert cold.get("items"), cold
    assert denied == [], f"the worker needed commands the ACL refused: {denied}"
    assert refused == 4
    for secret in (REDIS_PW, KAFKA_PW, QDRANT_KEY):
        assert secret not in log, f"a secret reached the worker log: {secret}"
