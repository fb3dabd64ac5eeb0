"""Fault-suite fixtures: a catalogue embedded once (hash embedding: fast, and the
same in the worker and the reference pass), and a factory of isolated runs (own
topics, consumer group, key prefix and Qdrant copy per scenario)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import catalogue_lines
from tests.servers import REPO, WorkerProcess, free_port


@pytest.fixture(scope="session")
def catalogue_qdrant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded Qdrant directory with the 60-item test catalogue (hash embedding)."""
    tmp = tmp_path_factory.mktemp("faults-catalogue")
    path = tmp / "catalogue.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in catalogue_lines()) + "\n")
    qdir = tmp / "qdrant"
    subprocess.run([sys.executable, "-m", "worker", "load-catalog", str(path)],
                   env={**os.environ, "EMBEDDING": "hash", "QDRANT_PATH": str(qdir)},
                   cwd=REPO, check=True, capture_output=True)
    return qdir


@dataclass
class Run:
    """One scenario's isolated configuration."""

    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def broker(self) -> str:
        return self.env["KAFKA_BROKER"]

    @property
    def group(self) -> str:
        return self.env["APP_ID"]

    @property
    def prefix(self) -> str:
        return self.env["KEY_PREFIX"]

    @property
    def topics(self) -> list[str]:
        """The topics the group consumes to ingest (raw events, interactions)."""
        return [self.env["EVENTS_TOPIC"], f"{self.env['APP_ID']}-interactions"]

    def worker(self, name: str, **overrides: str) -> WorkerProcess:
        """A worker process with its own copy of the Qdrant dir and data dir."""
        qdir = self.tmp / f"qdrant-{name}"
        if not qdir.exists():
            shutil.copytree(self.env["QDRANT_PATH"], qdir)
        env = {**self.env, "QDRANT_PATH": str(qdir), "WEB_PORT": str(free_port()),
               "DATA_DIR": str(self.tmp / f"data-{name}"), **overrides}
        w = WorkerProcess(env, self.tmp / f"{name}.log")
        self.workers.append(w)
        return w


@pytest.fixture
def make_run(kafka_broker: str, redis_url: str, catalogue_qdrant: Path,
             tmp_path: Path) -> Iterator[object]:
    """``make_run(name, **env)`` -> a Run; every worker it made is killed at the end."""
    runs: list[Run] = []

    def make(name: str, **overrides: str) -> Run:
        rid = f"{name}-{uuid.uuid4().hex[:6]}"
        env = {
            "KAFKA_BROKER": kafka_broker,
            "REDIS_URL": redis_url,
            "APP_ID": f"flt-{rid}",
            "EVENTS_TOPIC": f"flt-{rid}-events",
            "REQUESTS_TOPIC": f"flt-{rid}-requests",
            "DEAD_LETTER_TOPIC": f"flt-{rid}-dlq",
            "KEY_PREFIX": f"f{uuid.uuid4().hex[:8]}",
            "QDRANT_PATH": str(catalogue_qdrant),
            "EMBEDDING": "hash",
            "TOPIC_PARTITIONS": "4",
            "BATCH_WITHIN_MS": "20",
            "RETRY_MAX_BACKOFF_S": "1",
            "LOG_LEVEL": "INFO",
            # A SIGKILLed member is dropped from the group after 10 s, not 60 s.
            "BROKER_SESSION_TIMEOUT": "10",
            "BROKER_HEARTBEAT_INTERVAL": "1",
            **overrides,
        }
        run = Run(env, tmp_path / rid)
        run.tmp.mkdir(parents=True)
        runs.append(run)
        return run

    yield make
    for run in runs:
        for w in run.workers:
            w.stop(timeout=15)
