"""The evaluation measures the product: for a sample of MovieLens users, the live
worker answering over the reply topic returns exactly the items that the
evaluation's in-process path (worker.evaluation) computes from the same events."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import SHARED
from tests.faults.harness import snapshot
from tests.servers import REPO, WorkerProcess, free_port
from worker import evaluation as ev
from worker.client import RecsysClient

pytestmark = pytest.mark.kafka
ML = SHARED / "data" / "ml-latest-small"


def _subset() -> list[ev.Rating]:
    """Users whose ratings all fall after 2004 (so the span fits before now) and who
    rated fewer than 300 movies: a small, quick, realistic slice."""
    ratings = ev.read_ratings(ML)
    by_user: dict[str, list[ev.Rating]] = {}
    for r in ratings:
        by_user.setdefault(r.user, []).append(r)
    start = datetime(2004, 1, 1, tzinfo=UTC).timestamp()
    keep = [u for u, rs in by_user.items()
            if min(r.ts for r in rs) >= start and len(rs) < 300][:40]
    return [r for u in keep for r in by_user[u]]


async def test_live_worker_answers_what_the_evaluation_computes(
    kafka_broker: str, redis_url: str, tmp_path: Path
) -> None:
    if not (ML / "ratings.csv").exists():
        pytest.skip(f"MovieLens is absent at {ML}")
    ratings = _subset()
    sp = ev.split(ratings, latest=datetime.now(UTC))
    movies = {r.movie for r in ratings}
    catalogue = tmp_path / "catalogue.csv"
    with (ML / "movies.csv").open() as src, catalogue.open("w") as dst:
        for n, line in enumerate(src):
            if n == 0 or line.split(",", 1)[0] in movies:
                dst.write(line)
    run = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BROKER": kafka_broker, "REDIS_URL": redis_url, "APP_ID": f"par-{run}",
        "EVENTS_TOPIC": f"par-{run}-events", "REQUESTS_TOPIC": f"par-{run}-requests",
        "DEAD_LETTER_TOPIC": f"par-{run}-dlq", "TOPIC_PARTITIONS": "4",
        "QDRANT_PATH": str(tmp_path / "qdrant"), "QDRANT_COLLECTION": "content",
        "POPULARITY_HALF_LIFE_DAYS": "3650", "BATCH_WITHIN_MS": "5",
        # Trimming a heavy item's partners to the strongest CO_KEEP depends on the
        # order in which users' events interleave (two paths interleave them
        # differently); with room for every partner both paths count the same.
        "CO_KEEP": "100000",
    }
    subprocess.run([sys.executable, "-m", "worker", "load-catalog", str(catalogue)],
                   env={**os.environ, **env}, cwd=REPO, check=True, capture_output=True)
    shutil.copytree(tmp_path / "qdrant", tmp_path / "qdrant-live")

    # In-process: the evaluation's own path.
    from worker.bootstrap import build_adapters, build_services
    from worker.settings import load_settings

    settings = load_settings(**{k.lower(): v for k, v in env.items()},
                             key_prefix=f"inproc{run}")
    adapters = build_adapters(settings)
    services = build_services(adapters)
    try:
        await ev.ingest(services.pipeline, sp)
        sample = sorted(sp.relevant, key=int)[:15]
        expected = {u: await ev.recommend_one(services.recommender, adapters.users, sp, u)
                    for u in sample}
    finally:
        await adapters.aclose()

    # Live: the same payloads on the topic, answers over the reply topic.
    # Small apply runs (APPLY_MAX_INTERACTIONS): slicing a batch must not change a thing.
    worker = WorkerProcess({**env, "KEY_PREFIX": f"live{run}", "WEB_PORT": str(free_port()),
                            "APPLY_MAX_INTERACTIONS": "97",
                            "QDRANT_PATH": str(tmp_path / "qdrant-live"),
                            "DATA_DIR": str(tmp_path / "data")}, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_for_log("[^Worker]: Ready", timeout=120)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker, acks="all")
        await producer.start()
        try:
            for r in sp.train:
                await producer.send(env["EVENTS_TOPIC"], key=r.user.encode(),
                                    value=ev.payload(r, sp.shift))
            await producer.flush()
        finally:
            await producer.stop()
        deadline = time.monotonic() + 120
        while (await snapshot(redis_url, f"live{run}")).buffered < (
                await snapshot(redis_url, f"inproc{run}")).buffered:
            assert time.monotonic() < deadline, "the live worker did not catch up"
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the last batch's signals and table writes
        async with RecsysClient(kafka_broker, requests_topic=env["REQUESTS_TOPIC"],
                                timeout=30) as client:
            got = {}
            for u in sample:
                reply = await client.recommend(u, k=ev.K, exclude=sorted(sp.train_items[u]))
                got[u] = [it["content_id"] for it in reply["items"]]
    finally:
        worker.stop()
    assert got == expected, json.dumps({"live": got, "eval": expected})[:2000]
