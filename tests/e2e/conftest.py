"""End-to-end fixtures: a real Kafka broker, a real Redis, the embedded Qdrant with
a small catalogue embedded by the real FastEmbed model, and the worker running as
its own process (``python -m worker worker``), exactly as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.servers import REPO, WorkerProcess, free_port

GENRES = {
    "Comedy": ["a laugh-out-loud comedy", "a slapstick farce", "a witty romantic comedy"],
    "Horror": ["a haunted house horror", "a slasher in the woods", "a zombie outbreak"],
    "Documentary": ["a nature documentary", "a history documentary", "a science documentary"],
}


def catalogue_lines() -> list[dict[str, object]]:
    """60 items, 20 per genre; ids 100-159 (Comedy 100-119, Horror 120-139, ...)."""
    out = []
    cid = 100
    for genre, blurbs in GENRES.items():
        for i in range(20):
            out.append({"id": str(cid), "title": f"{blurbs[i % 3].capitalize()} number {i}",
                        "tags": [f"genre:{genre}"]})
            cid += 1
    return out


def genre_of(cid: str) -> str:
    return list(GENRES)[(int(cid) - 100) // 20]


@dataclass
class Stack:
    env: dict[str, str]
    tmp: Path
    broker: str
    redis_url: str

    @property
    def events_topic(self) -> str:
        return self.env["EVENTS_TOPIC"]

    @property
    def requests_topic(self) -> str:
        return self.env["REQUESTS_TOPIC"]

    @property
    def dlq_topic(self) -> str:
        return self.env["DEAD_LETTER_TOPIC"]

    @property
    def prefix(self) -> str:
        return self.env["KEY_PREFIX"]

    def worker(self, name: str, **overrides: str) -> WorkerProcess:
        env = {**self.env, "WEB_PORT": str(free_port()),
               "DATA_DIR": str(self.tmp / f"data-{name}"), **overrides}
        return WorkerProcess(env, self.tmp / f"{name}.log")


@pytest.fixture(scope="module")
def stack(kafka_broker: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """Unique topics, app id and key prefix for this module; the catalogue loaded."""
    tmp = tmp_path_factory.mktemp("e2e")
    run = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BROKER": kafka_broker,
        "REDIS_URL": redis_url,
        "APP_ID": f"e2e-{run}",
        "EVENTS_TOPIC": f"e2e-{run}-events",
        "REQUESTS_TOPIC": f"e2e-{run}-requests",
        "DEAD_LETTER_TOPIC": f"e2e-{run}-dlq",
        "KEY_PREFIX": f"e2e{run}",
        "QDRANT_PATH": str(tmp / "qdrant"),
        "TOPIC_PARTITIONS": "4",
        "BATCH_WITHIN_MS": "5",
        "LOG_LEVEL": "INFO",
    }
    catalogue = tmp / "catalogue.jsonl"
    catalogue.write_text("\n".join(json.dumps(x) for x in catalogue_lines()) + "\n")
    subprocess.run([sys.executable, "-m", "worker", "load-catalog", str(catalogue)],
                   env={**__import__("os").environ, **env}, cwd=REPO, check=True,
                   capture_output=True)
    return Stack(env, tmp, kafka_broker, redis_url)


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[WorkerProcess]:
    """One running worker for the module."""
    proc = stack.worker("w1", MALLOC_TRIM_INTERVAL_S="1")  # often enough to be seen
    proc.start()
    try:
        proc.wait_for_log("partitions assigned: ", timeout=120)
        proc.wait_for_log("[^Worker]: Ready", timeout=120)
        yield proc
    finally:
        proc.stop()


def track(user: str, cid: str, *, event: str = "Product Viewed", mid: str | None = None,
          ts: str | None = None, **props: object) -> bytes:
    """A RudderStack track payload as raw bytes (timestamp: an hour ago by default)."""
    if ts is None:
        ts = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="milliseconds")
    body = {
        "type": "track", "event": event, "userId": user,
        "messageId": mid or uuid.uuid4().hex, "timestamp": ts,
        "properties": {"product_id": f"content_{cid}", **props},
    }
    return json.dumps(body).encode()
