"""`make bench`: performance of the worker on the real stack (Kafka, Redis, embedded
Qdrant with the MovieLens catalogue embedded by the real FastEmbed model).

Writes benchmarks/results/perf.json and perf.png. A benchmark, not a test: it never
fails on a number (exit code 1 only when the harness itself breaks).

Parts (``--only ingest,freshness,requests,memory``; default: all, in that order):

* ingest     cold ``python -m worker worker`` over N pre-loaded RudderStack events,
             beside a plain aiokafka consume+parse loop over the same topic (the
             ceiling), interleaved trials; plus one py-spy-profiled trial
* freshness  paced producer (1,000 events/s) against the running worker; probe
             events' produce -> signals-saved latency (Redis keyspace notifications)
* requests   100 req/s at concurrency 8 over the reply topic (RecsysClient), and
             the same ranking in-process (Recommender.recommend, same signals)
* memory     worker RSS after 100k and after up to 1M replayed events; Redis bytes
             per active user

  python benchmarks/bench_perf.py [--only ingest,...] [--events N] [--duration S] ...
  python benchmarks/bench_perf.py --quick       # 50k events, 20 s phases, 200k RSS

Uses the local stack (``.stack/env``; `scripts/stack.sh start all`), Redis database 3
(flushed at start and at the end), and topics/app ids/key prefixes unique to the run
(deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.metadata as md
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from benchmarks.perf_events import EventFactory, Generated, user_id  # noqa: E402
from tests.faults.harness import group_lag, rss_mb  # noqa: E402
from tests.servers import WorkerProcess, free_port  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_ML = ROOT.parent / "shared" / "data" / "ml-latest-small"
DEMO_CATALOGUE = ROOT / "worker" / "demo" / "catalog.jsonl"
EVAL_QDRANT = ROOT / ".cache" / "eval" / "qdrant-movielens"
PARTS = ("ingest", "freshness", "requests", "memory")
TARGETS = {
    "ingest_events_per_s": ">= 20000 per worker",
    "freshness_p99_ms": "<= 25 at 1,000 events/s",
    "request_p99_ms": "<= 20 at 100 req/s",
    "rss_growth": "rss_mb_1m within 15% of rss_mb_100k",
}


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def r2(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def latency_summary(lat_s: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in lat_s]
    return {"n": len(ms), "p50_ms": r2(pct(ms, 50)), "p90_ms": r2(pct(ms, 90)),
            "p99_ms": r2(pct(ms, 99)), "max_ms": r2(max(ms) if ms else None),
            "mean_ms": r2(statistics.fmean(ms) if ms else None)}


# --------------------------------------------------------------------------- context


@dataclass
class Catalogue:
    name: str
    path: Path
    ids: list[str]
    fallback: bool
    qdrant: Path  # cached embedded Qdrant (closed; copied per process)
    collection: str


@dataclass
class Live:
    """A running worker with users' state (for freshness and requests)."""

    name: str
    worker: WorkerProcess
    env: dict[str, str]
    port: int
    users: int


@dataclass
class Bench:
    args: argparse.Namespace
    broker: str
    redis_url: str  # database 3
    run_id: str
    workdir: Path
    catalogue: Catalogue | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    live: Live | None = None
    out: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> int:
        return int(self.redis_url.rsplit("/", 1)[1])

    def topic(self, what: str) -> str:
        return f"{self.run_id}-{what}"

    def worker_env(self, name: str, events_topic: str) -> dict[str, str]:
        assert self.catalogue is not None
        qdir = self.workdir / f"qdrant-{name}"
        if not qdir.exists():
            shutil.copytree(self.catalogue.qdrant, qdir)
        return {
            "KAFKA_BROKER": self.broker,
            "REDIS_URL": self.redis_url,
            "APP_ID": f"{self.run_id}-{name}",
            "EVENTS_TOPIC": events_topic,
            "REQUESTS_TOPIC": f"{self.run_id}-{name}-requests",
            "DEAD_LETTER_TOPIC": f"{self.run_id}-{name}-dlq",
            "KEY_PREFIX": f"{self.run_id[-6:]}{name}"[:32],
            "QDRANT_PATH": str(qdir),
            "QDRANT_COLLECTION": self.catalogue.collection,
            "TOPIC_PARTITIONS": str(self.args.partitions),
            "WEB_PORT": str(free_port()),
            "DATA_DIR": str(self.workdir / f"data-{name}"),
            "LOG_LEVEL": "INFO",
        }

    def start_worker(self, name: str, env: dict[str, str]) -> WorkerProcess:
        # Others may edit worker/ while a run is going: record what each worker ran.
        self.details.setdefault("code_at_worker_start", {})[name] = \
            code_fingerprint()["worker_sources_sha1"]
        w = WorkerProcess(env, self.workdir / f"{name}.log")
        w.start()
        self.workers.append(w)
        return w


def kafka_version() -> str:
    if os.environ.get("KAFKA_VERSION"):
        return os.environ["KAFKA_VERSION"]
    try:
        out = subprocess.run(["bash", str(ROOT / "scripts" / "stack.sh"), "status"],
                             capture_output=True, text=True, cwd=ROOT, timeout=30).stdout
        m = re.search(r"kafka\s+running.*version\s+(\S+)", out)
        if m:
            return m.group(1)
    except Exception:
        pass
    m = re.search(r'KAFKA_VERSION="\$\{KAFKA_VERSION:-([^}]+)\}"',
                  (ROOT / "scripts" / "stack.sh").read_text())
    return m.group(1) if m else "unknown"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_gb": mem,
            "platform": platform.platform(), "loadavg_at_start": list(os.getloadavg())}


def versions(redis_server: str) -> dict[str, str]:
    def v(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), "faust-streaming": v("faust-streaming"),
            "aiokafka": v("aiokafka"), "redis-py": v("redis"), "redis-server": redis_server,
            "kafka": kafka_version(), "qdrant-edge-py": v("qdrant-edge-py"),
            "fastembed": v("fastembed"), "orjson": v("orjson")}


def code_fingerprint() -> dict[str, Any]:
    """Which code was measured: HEAD plus a hash of the working tree's worker/ sources."""
    h = hashlib.sha1()
    for p in sorted((ROOT / "worker").rglob("*.py")):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "worker"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip())
    return {"git_head": head, "worker_tree_dirty": dirty, "worker_sources_sha1": h.hexdigest()[:12]}


# --------------------------------------------------------------------------- catalogue


async def prepare_catalogue(args: argparse.Namespace) -> Catalogue:
    """Embed the catalogue once into a cached embedded Qdrant (real FastEmbed model)."""
    from worker.bootstrap import build_adapters
    from worker.catalog import load_catalog, read_catalog
    from worker.settings import load_settings

    movies = Path(args.ml_path) / "movies.csv"
    if movies.exists():
        path, name, coll, fallback = movies, "movielens-" + Path(args.ml_path).name, "movies", False
    else:
        log(f"MovieLens not found at {movies}; falling back to the bundled demo catalogue")
        path, name, coll, fallback = DEMO_CATALOGUE, "demo-catalog", "content", True
    items = read_catalog(path)
    cache = ROOT / ".cache" / "bench" / f"qdrant-{name}"
    if not cache.exists() and not fallback and (EVAL_QDRANT / coll).exists() \
            and name == "movielens-ml-latest-small":
        shutil.copytree(EVAL_QDRANT, cache)  # `make eval` embedded the same movies already
    settings = load_settings(qdrant_path=cache, qdrant_collection=coll)
    adapters = build_adapters(settings)
    try:
        store = adapters.content
        await store.ensure_collection(adapters.embedder.dim)
        if await store.count() != len(items):
            log(f"embedding {len(items)} catalogue items into {cache} (once)")
            await load_catalog(items, store=store, embedder=adapters.embedder)
    finally:
        await adapters.aclose()
    return Catalogue(name, path, [c.id for c in items], fallback, cache, coll)


# --------------------------------------------------------------------------- kafka


async def create_topic(b: Bench, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=b.broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=1)])
    finally:
        await admin.close()


async def delete_run_topics(b: Bench) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=b.broker)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(b.run_id)]
        if mine:
            await admin.delete_topics(mine)
        return len(mine)
    finally:
        await admin.close()


async def preload(b: Bench, topic: str, factory: EventFactory, count: int) -> Generated:
    """Produce ``count`` generated records to ``topic`` (keyed by user id)."""
    from aiokafka import AIOKafkaProducer

    gen = Generated()
    producer = AIOKafkaProducer(bootstrap_servers=b.broker, acks="all", linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        for key, value, n in factory.stream(count):
            gen.add(value, n)
            await producer.send(topic, key=key, value=value)
            if gen.records % 100_000 == 0:
                log(f"  produced {gen.records:,}/{count:,}")
        await producer.flush()
    finally:
        await producer.stop()
    dt = time.perf_counter() - t0
    log(f"preloaded {gen.records:,} records ({gen.interactions:,} interactions, "
        f"{gen.mean_bytes:.0f} B mean) to {topic} in {dt:.1f}s")
    return gen


async def ceiling_trial(b: Bench, topic: str, n: int) -> dict[str, Any]:
    """Plain aiokafka: assign every partition, getmany batches, orjson.loads each value."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=b.broker, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(b.args.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got, t_first, parsed_bytes = 0, None, 0
        deadline = time.monotonic() + 300
        while got < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            if batches and t_first is None:
                t_first = time.perf_counter()
            for msgs in batches.values():
                for m in msgs:
                    orjson.loads(m.value)
                    parsed_bytes += len(m.value)
                got += len(msgs)
        dt = time.perf_counter() - (t_first or time.perf_counter())
    finally:
        await consumer.stop()
    return {"records": got, "seconds": round(dt, 3),
            "events_per_s": round(got / dt, 1) if dt > 0 else None}


# --------------------------------------------------------------------------- worker probes


_METRIC_RE = re.compile(rb"^(recsys_records_consumed_total|recsys_interactions_written_total)"
                        rb" ([0-9.e+]+)$", re.M)


async def scrape(session: Any, port: int) -> dict[str, float] | None:
    """The worker's counters from /metrics (None while the web server is not up)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            if resp.status != 200:
                return None
            body = await resp.read()
    except Exception:
        return None
    return {k.decode(): float(v) for k, v in _METRIC_RE.findall(body)}


_STAGE_KEY = re.compile(r"^recsys_(?:(?:stage|ingest_batch)_duration_seconds_(sum|count)"
                        r"\{(?:agent=(\w+)|path=(\w+),stage=(\w+))\}"
                        r"|request_duration_seconds_(sum|count))$")


async def stage_totals(port: int) -> dict[str, dict[str, float]]:
    """The worker's stage histograms as ``{"path/stage": {"sum": s, "count": n}}``
    (``agent/total`` for whole batches, ``request/total`` for whole requests);
    empty if /metrics is not answering."""
    return (await worker_snapshot(port))[1]


#: the counters a freshness pass reads before and after (how far the worker got)
_PROGRESS = ("recsys_records_consumed_total", "recsys_interactions_written_total")


async def worker_snapshot(port: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """From one read of the worker's /metrics: the records consumed and
    interactions written so far, and the stage histograms (``stage_totals``);
    both empty if /metrics is not answering."""
    import aiohttp

    from worker.metrics import parse_metrics

    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except Exception:
        return {}, {}
    counts: dict[str, float] = {}
    stages: dict[str, dict[str, float]] = {}
    for key, value in parse_metrics(text).items():
        if key in _PROGRESS:
            counts[key] = float(value)
        found = _STAGE_KEY.match(key)
        if found:
            kind, agent, path, stage, request_kind = found.groups()
            name = ("request/total" if request_kind else f"{agent}/total" if agent
                    else f"{path}/{stage}")
            stages.setdefault(name, {})[kind or request_kind] = float(value)
    return counts, stages


def stage_share(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
                seconds: float) -> dict[str, dict[str, float]]:
    """Per stage over a pass: how often it ran, its mean in ms, and its share of
    the pass's wall time (the worker's main thread spent that fraction in it)."""
    out = {}
    for name, now in sorted(after.items()):
        was = before.get(name, {})
        n = now.get("count", 0.0) - was.get("count", 0.0)
        total = now.get("sum", 0.0) - was.get("sum", 0.0)
        if n > 0:
            out[name] = {"count": int(n), "mean_ms": round(total / n * 1000, 2),
                         "share_of_wall": round(total / seconds, 3)}
    return out


def cpu_seconds(w: WorkerProcess) -> dict[str, float] | None:
    """CPU seconds (user + system) the worker has used, all threads, and its main
    thread's (the event loop) alone, from /proc; None if it is not running or
    /proc is not Linux's."""
    if w.proc is None:
        return None
    pid, tick = w.proc.pid, os.sysconf("SC_CLK_TCK")

    def read(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    try:
        return {"process": read(f"/proc/{pid}/stat"), "main": read(f"/proc/{pid}/task/{pid}/stat")}
    except (OSError, ValueError, IndexError):
        return None


def cpu_share(before: dict[str, float] | None, after: dict[str, float] | None,
              seconds: float) -> dict[str, float] | None:
    """Cores the worker used over a pass: the process, its main thread (asyncio
    loop: the agents, the producer, Redis and Qdrant calls) and its other threads
    (Faust's consumer thread, RocksDB, the trim). The main thread near 1.0 is a
    saturated loop: latency is then queueing."""
    if before is None or after is None or seconds <= 0:
        return None
    process = (after["process"] - before["process"]) / seconds
    main = (after["main"] - before["main"]) / seconds
    return {"process_cores": round(process, 3), "main_thread_cores": round(main, 3),
            "other_threads_cores": round(process - main, 3)}


async def redis_load(client: Any) -> dict[str, Any]:
    """Redis's CPU seconds so far and its per-command totals (``INFO``)."""
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    return {"cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            "commands": {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                         for k, v in stats.items()}}


async def redis_load_at(url: str) -> dict[str, Any]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        return await redis_load(client)
    finally:
        await client.aclose()


def redis_share(before: dict[str, Any], after: dict[str, Any], seconds: float,
                top: int = 6) -> dict[str, Any]:
    """Cores Redis used over a pass, and its costliest commands then (calls, µs each,
    Redis cores): whether the worker waited on Redis's CPU or on itself. A script's
    (``evalsha``) time includes the commands it ran, which are listed too."""
    rows = []
    for name, (calls, usec) in after["commands"].items():
        c0, u0 = before["commands"].get(name, (0, 0))
        if calls > c0:
            rows.append((usec - u0, name, calls - c0))
    rows.sort(reverse=True)
    return {"redis_cores": round((after["cpu_s"] - before["cpu_s"]) / seconds, 3),
            "top_commands": [{"command": name, "calls": calls,
                              "usec_per_call": round(usec / calls, 2),
                              "cores": round(usec / 1e6 / seconds, 3)}
                             for usec, name, calls in rows[:top]]}


def check_alive(w: WorkerProcess) -> None:
    if w.proc is not None and w.proc.poll() is not None:
        raise RuntimeError(f"worker exited ({w.proc.returncode}):\n{w.log()[-3000:]}")


async def wait_committed(b: Bench, env: dict[str, str], timeout: float = 90) -> float | None:
    """Seconds until the worker's group has committed everything on both topics."""
    t0 = time.perf_counter()
    topics = [env["EVENTS_TOPIC"], f"{env['APP_ID']}-interactions"]
    while time.perf_counter() - t0 < timeout:
        with contextlib.suppress(Exception):
            if await group_lag(b.broker, env["APP_ID"], topics) == 0:
                return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    return None


async def redis_counts(b: Bench, prefix: str) -> dict[str, int]:
    """Buffered interactions (sum of ZCARD over users' buffers) and saved signals."""
    from redis.asyncio import Redis

    client = Redis.from_url(b.redis_url)
    try:
        zs = [k async for k in client.scan_iter(match=f"{prefix}:{{*}}:z", count=5000)]
        sigs = 0
        async for _ in client.scan_iter(match=f"{prefix}:{{*}}:sig", count=5000):
            sigs += 1
        total = 0
        for i in range(0, len(zs), 5000):
            async with client.pipeline(transaction=False) as pipe:
                for k in zs[i:i + 5000]:
                    pipe.zcard(k)
                total += sum(await pipe.execute())
        return {"users_buffered": len(zs), "interactions_buffered": total, "signals_saved": sigs}
    finally:
        await client.aclose()


@dataclass
class Trial:
    name: str
    env: dict[str, str]
    worker: WorkerProcess
    result: dict[str, Any]
    #: (t since first consumption, consumed, written, rss MiB)
    series: list[tuple[float, float, float, float]]


async def worker_ingest(b: Bench, name: str, topic: str, gen: Generated, *,
                        profile_s: float = 0.0, rss_at: int = 0,
                        poll_s: float = 0.1, stop_after_s: float | None = None) -> Trial:
    """Start a cold worker on ``topic`` and time it until every interaction is buffered.

    Clock: from the first /metrics scrape (polled every 50 ms) that shows consumed
    records (the records already consumed by then are subtracted) to the scrape at
    which ``interactions_written`` reaches the generated count (signals are saved
    before that counter moves; if a re-read made some come back as redeliveries,
    which that counter leaves out, to the first check, every 5 s, at which Redis
    holds them all: ``completed_by`` says which); then until the group's lag is 0 on the events and
    interactions topics (everything committed). With ``stop_after_s`` the trial ends
    that long after the first consumption (a profiled sample, not a full run).
    """
    import aiohttp

    env = b.worker_env(name, topic)
    port = int(env["WEB_PORT"])
    t_spawn = time.perf_counter()
    w = b.start_worker(name, env)
    pid = w.proc.pid if w.proc else 0
    series: list[tuple[float, float, float, float]] = []
    t_first = t_done = None
    c0 = 0.0
    t_up = None
    rss_small = None
    spy: subprocess.Popen[bytes] | None = None
    spy_out = b.workdir / f"profile-{name}.txt"
    timeout = 180.0 + gen.records / 250
    m: dict[str, float] | None = None
    next_redis_check = 0.0
    done_by = "counter"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            now = time.perf_counter()
            if now - t_spawn > timeout:
                log(f"  {name}: TIMED OUT after {timeout:.0f}s: {m}")
                break
            check_alive(w)
            m = await scrape(session, port)
            if m is None:
                await asyncio.sleep(0.05)
                continue
            now = time.perf_counter()
            t_up = t_up or now
            consumed = m.get("recsys_records_consumed_total", 0.0)
            written = m.get("recsys_interactions_written_total", 0.0)
            if t_first is None:
                if consumed <= 0:
                    await asyncio.sleep(0.05)
                    continue
                t_first, c0 = now, consumed
                load_first = (cpu_seconds(w), await stage_totals(port),
                              await redis_load_at(b.redis_url))
                if profile_s > 0:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                         str(pid), "-d", str(int(profile_s)), "-r", "100", "--nonblocking",
                         "--idle", "--threads", "--format", "raw", "-o", str(spy_out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            rss = rss_mb(pid)
            series.append((round(now - t_first, 3), consumed, written, round(rss, 1)))
            applied = written * gen.records / gen.interactions  # in records
            if rss_at and rss_small is None and applied >= rss_at:
                rss_small = (applied, rss)
            if written >= gen.interactions:
                t_done = now
                load_done = (cpu_seconds(w), await stage_totals(port),
                             await redis_load_at(b.redis_url))
                break
            # After a re-read some interactions come back as redeliveries and are not
            # counted as written: then Redis itself says whether everything is in.
            redelivered = m.get("recsys_interactions_redelivered_total", 0.0)
            if written + redelivered >= gen.interactions and now >= next_redis_check:
                next_redis_check = now + 5.0
                buffered = (await redis_counts(b, env["KEY_PREFIX"]))["interactions_buffered"]
                if buffered >= gen.interactions:
                    t_done, done_by = now, "redis"
                    break
            if stop_after_s is not None and now - t_first >= stop_after_s:
                break
            await asyncio.sleep(poll_s)
    rss_done = rss_mb(pid)
    if spy is not None:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not spy_out.exists():
            log(f"  py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
    if stop_after_s is not None:
        w1 = series[-1][2] * gen.records / gen.interactions if series else 0.0
        dt = series[-1][0] if series else 0.0
        res_p: dict[str, Any] = {
            "records": gen.records, "partial": True, "seconds": round(dt, 3),
            "events_applied": int(w1), "startup_s": r2(t_first - t_spawn if t_first else None),
            "events_per_s": round(w1 / dt, 1) if dt > 0 else None,
            "rss_mb": round(rss_done, 1),
        }
        if spy is not None:
            res_p["profile_raw"] = str(spy_out)
        log(f"  {name}: {res_p['events_per_s']} events/s over the first {dt:.1f}s (partial)")
        return Trial(name, env, w, res_p, series)
    commit_s = await wait_committed(b, env)
    counts = await redis_counts(b, env["KEY_PREFIX"])
    res: dict[str, Any] = {
        "records": gen.records, "interactions_expected": gen.interactions,
        "startup_s": r2(t_first - t_spawn if t_first else None),
        "web_up_s": r2(t_up - t_spawn if t_up else None),
        "consumed_at_first_scrape": int(c0),
        "completed": t_done is not None,
        "completed_by": done_by if t_done is not None else None,
        **counts,
        "commit_wait_s": r2(commit_s),
    }
    if t_first and t_done:
        dt = t_done - t_first
        res["seconds"] = round(dt, 3)
        res["events_per_s"] = round((gen.records - c0) / dt, 1)
        res["interactions_per_s"] = round((gen.interactions - c0 * gen.interactions
                                           / gen.records) / dt, 1)
        if commit_s is not None:
            res["events_per_s_to_committed"] = round((gen.records - c0) / (dt + commit_s), 1)
        if done_by == "counter":  # the load from the first consumption to the last write
            res["worker_cpu"] = cpu_share(load_first[0], load_done[0], dt)
            res["worker_stages"] = stage_share(load_first[1], load_done[1], dt)
            res["redis_cpu"] = redis_share(load_first[2], load_done[2], dt)
    res["rss_mb_done"] = round(rss_done, 1)
    if rss_small:
        res["rss_small"] = {"events_applied": int(rss_small[0]),
                            "rss_mb": round(rss_small[1], 1)}
    if spy is not None:
        res["profile_raw"] = str(spy_out)
    log(f"  {name}: {res.get('events_per_s')} events/s over {res.get('seconds')}s "
        f"(startup {res['startup_s']}s, buffered {counts['interactions_buffered']:,}/"
        f"{gen.interactions:,}, commit +{res['commit_wait_s']}s, rss {rss_done:.0f} MB)")
    return Trial(name, env, w, res, series)


# --------------------------------------------------------------------------- profile


_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_IDLE_FUNCS = ("select", "poll", "wait", "_wait_for_tstate_lock", "sleep", "epoll")


def _frame(f: str) -> str:
    m = _FRAME_RE.match(f.strip())
    if not m:
        return f.strip()
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('func')} ({file})"


def _is_idle(leaf: str) -> bool:
    func = leaf.split(" (", 1)[0].rsplit(".", 1)[-1]
    return func in _IDLE_FUNCS


def summarise_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output recorded with --threads --idle: per thread,
    the share of samples waiting (leaf = selector select/poll, a lock or condition
    wait, sleep: I/O wait or idle) and busy; then over all busy samples, own time
    (leaf frame) and total time (anywhere on the stack) per function."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: dict[str, Counter[str]] = defaultdict(Counter)
    thread_own: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        parts = stack.split(";")
        thread = "?"
        if parts and parts[0].startswith("thread ("):
            thread = parts[0].split(": ", 1)[-1]
            parts = parts[1:]
        frames = [_frame(f) for f in parts if not f.startswith("process ")]
        if not frames:
            continue
        threads[thread]["samples"] += count
        if _is_idle(frames[-1]):
            threads[thread]["waiting"] += count
            continue
        own[frames[-1]] += count
        thread_own[thread][frames[-1]] += count
        for f in set(frames):
            total[f] += count
    busy = sum(own.values())

    def rows(c: Counter[str], denom: int, k: int = top) -> list[dict[str, Any]]:
        return [{"function": f, "samples": n, "pct_of_busy": round(100 * n / denom, 1)}
                for f, n in c.most_common(k)] if denom else []

    roots = ("click/", "runpy", "faust/cli/", "mode/worker.py", "worker/cli.py",
             "worker/__main__.py", "asyncio/base_events.py", "asyncio/events.py",
             "mode/threads.py", "threading.py", "asyncio/runners.py", "faust/app/base.py")
    inner = Counter({f: n for f, n in total.items() if not any(r in f for r in roots)})
    mine = Counter({f: n for f, n in inner.items() if "(worker/" in f})
    return {
        "busy_samples": busy,
        "threads": {t: {"samples": c["samples"], "waiting_pct":
                        round(100 * c["waiting"] / c["samples"], 1) if c["samples"] else None,
                        "top_own": rows(thread_own[t], c["samples"] - c["waiting"], 8)}
                    for t, c in sorted(threads.items(), key=lambda kv: -kv[1]["samples"])},
        "top_own": rows(own, busy), "top_total": rows(inner, busy),
        "top_total_worker_code": rows(mine, busy),
    }



# --------------------------------------------------------------------------- parts


async def part_ingest(b: Bench) -> None:
    a = b.args
    assert b.catalogue is not None
    topic = b.topic("ingest-events")
    await create_topic(b, topic, a.partitions)
    factory = EventFactory(b.catalogue.ids, users=a.users, seed=11)
    log(f"ingest: preloading {a.events:,} events over {a.users:,} users")
    gen = await preload(b, topic, factory, a.events)
    ceilings: list[dict[str, Any]] = []
    trials: list[Trial] = []
    for i in range(a.ingest_trials):
        c = await ceiling_trial(b, topic, gen.records)
        ceilings.append(c)
        log(f"  ceiling {i + 1}: {c['events_per_s']} events/s "
            f"({c['records']:,} in {c['seconds']}s)")
        t = await worker_ingest(b, f"ing{i + 1}", topic, gen)
        trials.append(t)
        if i < a.ingest_trials - 1:
            t.worker.stop()
    c = await ceiling_trial(b, topic, gen.records)
    ceilings.append(c)
    log(f"  ceiling {len(ceilings)}: {c['events_per_s']} events/s")
    profile: dict[str, Any] | None = None
    prof: Trial | None = None
    if a.profile_seconds > 0 and not (Path(sys.executable).parent / "py-spy").exists():
        log("  py-spy not installed in the virtualenv: no profile (pip install py-spy)")
    elif a.profile_seconds > 0:
        # A separate cold worker (own group) on the same topic, profiled for
        # profile_seconds from its first consumption, then stopped. The last
        # measured worker stays up (idle) for the freshness and request parts.
        prof = await worker_ingest(b, "prof", topic, gen, profile_s=a.profile_seconds,
                                   stop_after_s=a.profile_seconds + 1)
        prof.worker.stop()
        raw = Path(prof.result.get("profile_raw", ""))
        if raw.is_file():
            dest = ROOT / ".cache" / "bench" / "perf-profile.txt"
            shutil.copy(raw, dest)
            profile = summarise_profile(raw)
            profile["raw_collapsed_stacks"] = str(dest.relative_to(ROOT))
            profile["seconds"] = a.profile_seconds
            profile["events_per_s_while_profiled"] = prof.result.get("events_per_s")
    trials_live = trials[-1]
    rates = [t.result["events_per_s"] for t in trials if t.result.get("events_per_s")]
    crates = [c["events_per_s"] for c in ceilings if c.get("events_per_s")]
    ing, ceil = median(rates), median(crates)
    b.out.update({
        "ingest_events_per_s": r2(ing, 1),
        "ceiling_events_per_s": r2(ceil, 1),
        "ingest_ratio": round(ing / ceil, 4) if ing and ceil else None,
    })
    b.details["ingest"] = {
        "events": gen.records, "interactions": gen.interactions, "users": a.users,
        "mean_record_bytes": round(gen.mean_bytes, 1), "partitions": a.partitions,
        "worker_trials": [t.result for t in trials],
        "worker_events_per_s_trials": rates,
        "ceiling_trials": ceilings,
        "ceiling_events_per_s_trials": crates,
        "profiled_trial": prof.result if prof else None,
    }
    b.series["ingest"] = {t.name: t.series for t in trials}
    if profile:
        b.details["profile"] = profile
    b.live = Live(trials_live.name, trials_live.worker, trials_live.env,
                  int(trials_live.env["WEB_PORT"]), a.users)


async def ensure_live(b: Bench) -> Live:
    """A running worker with state for ``--users`` users (the ingest part leaves one)."""
    if b.live is not None:
        return b.live
    a = b.args
    assert b.catalogue is not None
    topic = b.topic("live-events")
    await create_topic(b, topic, a.partitions)
    n = max(a.users * 2, 10_000)
    log(f"live worker: preloading {n:,} warm-up events over {a.users:,} users")
    gen = await preload(b, topic, EventFactory(b.catalogue.ids, users=a.users, seed=12), n)
    t = await worker_ingest(b, "live", topic, gen)
    b.details["live_warmup"] = t.result
    b.live = Live(t.name, t.worker, t.env, int(t.env["WEB_PORT"]), a.users)
    return b.live


class SigWatcher:
    """Redis keyspace notifications for the worker's ``<prefix>:{uid}:sig`` keys, in a
    thread. A probe (user, event time) is done at the first SET of the user's
    signals after which the saved ``as_of`` (newest event time in the window) is at
    least the probe's event time: its signals now include it."""

    AS_OF = re.compile(rb'"as_of":(\d+)')

    def __init__(self, redis_url: str, db: int, prefix: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url)
        self.getter = redis.Redis.from_url(redis_url)
        self.chan_prefix = f"__keyspace@{db}__:"
        self.pattern = f"{self.chan_prefix}{prefix}:*:sig"
        self.lock = threading.Lock()
        self.pending: dict[str, list[tuple[int, float]]] = defaultdict(list)
        #: (send time, latency) of every probe seen
        self.timeline: list[tuple[float, float]] = []
        self.notifications = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def add(self, key: str, ts_ms: int, t_sent: float) -> None:
        with self.lock:
            self.pending[key].append((ts_ms, t_sent))

    @property
    def latencies(self) -> list[float]:
        return [lat for _, lat in self.timeline]

    def in_flight(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.pending.values())

    def _run(self) -> None:
        ps = self.client.pubsub(ignore_subscribe_messages=True)
        ps.psubscribe(self.pattern)
        ps.get_message(timeout=1.0)  # the subscribe confirmation
        self.ready.set()
        while not self.stop.is_set():
            msg = ps.get_message(timeout=0.2)
            if msg is None:
                continue
            t = time.perf_counter()
            self.notifications += 1
            key = msg["channel"].decode()[len(self.chan_prefix):]
            with self.lock:
                if key not in self.pending:
                    continue
            raw = self.getter.get(key)
            m = self.AS_OF.search(raw or b"")
            if not m:
                continue
            as_of = int(m.group(1))
            with self.lock:
                waiting = self.pending.get(key, [])
                keep = []
                for ts, sent in waiting:
                    if as_of >= ts:
                        self.timeline.append((sent, t - sent))
                    else:
                        keep.append((ts, sent))
                if keep:
                    self.pending[key] = keep
                else:
                    self.pending.pop(key, None)
        ps.close()


def worst_per_second(timeline: list[tuple[float, float]], t0: float, elapsed: float
                     ) -> list[float | None]:
    """The slowest probe sent in each second of a pass (ms; None: no probe seen):
    whether the tail is spread over the pass or comes in a few stalls."""
    n = max(1, math.ceil(elapsed))
    worst: dict[int, float] = {}
    for sent, lat in timeline:
        i = min(max(int(sent - t0), 0), n - 1)
        worst[i] = max(worst.get(i, 0.0), lat)
    return [round(worst[i] * 1000, 1) if i in worst else None for i in range(n)]


async def freshness_pass(b: Bench, live: Live, rate: float, duration: float, seed: int,
                         probe_every: int) -> tuple[dict[str, Any], list[float]]:
    """Offer ``rate`` events/s for ``duration`` s; latency of every probe event."""
    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    a = b.args
    assert b.catalogue is not None
    prefix = live.env["KEY_PREFIX"]
    topic = live.env["EVENTS_TOPIC"]
    admin = Redis.from_url(b.redis_url)
    orig = (await admin.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
    flags = "".join(sorted(set(orig) | set("K$")))
    await admin.config_set("notify-keyspace-events", flags)
    watcher = SigWatcher(b.redis_url, b.db, prefix)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    factory = EventFactory(b.catalogue.ids, users=live.users, seed=seed)
    rng = random.Random(seed + 1)
    producer = AIOKafkaProducer(bootstrap_servers=b.broker, acks="all", linger_ms=0)
    await producer.start()
    sent = probes = 0
    last_ts: dict[str, int] = {}
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    tick = per_tick / rate
    lag_end = None
    progress_end: dict[str, float] | None = None
    progress_before, stages_before = await worker_snapshot(live.port)
    cpu_before = cpu_seconds(live.worker)
    redis_before = await redis_load(admin)
    try:
        watcher.thread.start()
        watcher.ready.wait(5)
        log(f"freshness: {rate:g}/s for {duration:g}s, 1 probe every {probe_every} events")
        t0 = time.perf_counter()
        for i in range(int(duration / tick)):
            delay = t0 + i * tick - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for _ in range(per_tick):
                if sent % probe_every == 0:
                    uid = user_id(rng.randrange(live.users))
                    ts = max(int(time.time() * 1000), last_ts.get(uid, 0) + 1)
                    last_ts[uid] = ts
                    key, value, _ = factory.record(uid=uid, ts_ms=ts)
                    t_sent = time.perf_counter()
                    watcher.add(f"{prefix}:{{{uid}}}:sig", ts, t_sent)
                    probes += 1
                else:
                    key, value, _ = factory.record()
                await producer.send(topic, key=key, value=value)
                sent += 1
        elapsed = time.perf_counter() - t0
        cpu = cpu_share(cpu_before, cpu_seconds(live.worker), elapsed)
        redis_cpu = redis_share(redis_before, await redis_load(admin), elapsed)
        await producer.flush()
        # How far behind the worker was, in events: the group lag below counts
        # messages, and a message of the interactions topic carries a batch.
        progress_now, stages_now = await worker_snapshot(live.port)
        if progress_before and progress_now:
            progress_end = {"sent": sent, **{
                k.removeprefix("recsys_").removesuffix("_total"): progress_now[k] - v
                for k, v in progress_before.items()}}
        stages = stage_share(stages_before, stages_now, elapsed)
        with contextlib.suppress(Exception):
            lag_end = await group_lag(b.broker, live.env["APP_ID"],
                                      [topic, f"{live.env['APP_ID']}-interactions"])
        deadline = time.perf_counter() + a.freshness_drain_s
        while watcher.in_flight() and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
    finally:
        watcher.stop.set()
        watcher.thread.join(5)
        sys.setswitchinterval(old_switch)
        await producer.stop()
        await admin.config_set("notify-keyspace-events", orig)
        await admin.aclose()
    summary = {
        "offered_rate": rate, "achieved_rate": round(sent / elapsed, 1), "probe_every": probe_every,
        "duration_s": round(elapsed, 1), "events_sent": sent, "probes": probes,
        "probes_seen": len(watcher.latencies), "probes_missing": watcher.in_flight(),
        "lag_when_producing_ended": lag_end,
        "events_when_producing_ended": progress_end,
        **latency_summary(watcher.latencies),
        "worker_stages": stages,
        "worker_cpu": cpu,
        "redis_cpu": redis_cpu,
        "worst_ms_per_second": worst_per_second(watcher.timeline, t0, elapsed),
    }
    log(f"  freshness at {rate:g}/s: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms "
        f"({len(watcher.latencies)}/{probes} probes, {summary['achieved_rate']} events/s "
        f"sent, lag {lag_end} messages and progress {progress_end} when producing ended; "
        f"worker cpu {cpu}; redis {redis_cpu['redis_cores']} of a core)")
    return summary, watcher.latencies


async def part_freshness(b: Bench) -> None:
    a = b.args
    live = await ensure_live(b)
    await wait_committed(b, live.env, timeout=600)
    summary, lat = await freshness_pass(b, live, a.rate, a.duration, seed=21,
                                        probe_every=a.probe_every)
    b.out.update({"freshness_p50_ms": summary["p50_ms"], "freshness_p99_ms": summary["p99_ms"]})
    b.details["freshness"] = summary
    b.series["freshness_ms"] = sorted(round(x * 1000, 2) for x in lat)
    # Lower offered rates, each after the worker caught up: where the latency above
    # is mostly queueing, these show the latency of an unsaturated worker.
    extra = {}
    for i, rate in enumerate(a.freshness_extra_rates):
        caught = await wait_committed(b, live.env, timeout=600)
        log(f"  worker caught up ({caught and round(caught, 1)}s)")
        dur = max(10.0, min(a.duration / 2, 30.0))
        every = max(1, min(a.probe_every, int(rate * dur / 300)))
        s2, _ = await freshness_pass(b, live, rate, dur, seed=23 + i, probe_every=every)
        extra[f"{rate:g}"] = s2
    if extra:
        b.details["freshness_other_rates"] = extra
        b.out["freshness_p99_ms_by_rate"] = {
            f"{a.rate:g}": summary["p99_ms"], **{k: v["p99_ms"] for k, v in extra.items()}}
    await wait_committed(b, live.env, timeout=600)


async def part_requests(b: Bench) -> None:
    from worker.bootstrap import build_adapters, build_services
    from worker.client import RecsysClient, RequestTimeout
    from worker.serving import Request
    from worker.settings import load_settings

    a = b.args
    assert b.catalogue is not None
    live = await ensure_live(b)
    await wait_committed(b, live.env, timeout=600)  # no ingest backlog meanwhile
    rng = random.Random(31)
    n = int(a.request_rate * a.duration)
    users = [user_id(rng.randrange(live.users)) for _ in range(n)]
    replies: dict[str, list[str]] = {}

    async def run_pass(client: RecsysClient, rate: float, users: list[str]
                       ) -> tuple[dict[str, Any], list[float]]:
        """Open loop: request i is due at t0 + i/rate; at most `concurrency` in flight."""
        n = len(users)
        lat: list[float] = []
        lat_sched: list[float] = []
        timeline: list[tuple[float, float]] = []
        errors: Counter[str] = Counter()
        nxt = 0
        t0 = time.perf_counter() + 0.05
        cpu_before = cpu_seconds(live.worker)

        async def runner() -> None:
            nonlocal nxt
            while nxt < n:
                i = nxt
                nxt += 1
                sched = t0 + i / rate
                delay = sched - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                start = time.perf_counter()
                try:
                    reply = await client.recommend(users[i], k=10)
                except RequestTimeout:
                    errors["timeout"] += 1
                    continue
                end = time.perf_counter()
                if "error" in reply:
                    errors[str(reply["error"])] += 1
                    continue
                lat.append(end - start)
                lat_sched.append(end - sched)
                timeline.append((start, end - start))
                replies.setdefault(users[i], [it["content_id"] for it in reply["items"]])

        await asyncio.gather(*(runner() for _ in range(a.concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = cpu_share(cpu_before, cpu_seconds(live.worker), elapsed)
        summ = {"offered_rate": rate, "concurrency": a.concurrency, "requests": n,
                "achieved_rate": round((len(lat) + sum(errors.values())) / elapsed, 1),
                "errors": dict(errors), "k": 10, **latency_summary(lat),
                "from_schedule": latency_summary(lat_sched), "worker_cpu": cpu,
                "worst_ms_per_second": worst_per_second(timeline, t0, elapsed)}
        log(f"  requests at {rate:g}/s: p50 {summ['p50_ms']} ms, p99 {summ['p99_ms']} ms "
            f"({len(lat)}/{n} answered, errors {dict(errors)}; worker cpu {cpu})")
        return summ, lat

    log(f"requests: {a.request_rate}/s for {a.duration}s at concurrency {a.concurrency}")
    async with RecsysClient(b.broker, requests_topic=live.env["REQUESTS_TOPIC"],
                            timeout=10) as client:
        for u in users[:30]:  # warm-up (reply topic, metadata, caches)
            with contextlib.suppress(RequestTimeout):
                await client.recommend(u, k=10)
        req, lat = await run_pass(client, a.request_rate, users)
        extra = {}
        for rate in a.request_extra_rates:
            k = int(rate * max(10.0, min(a.duration / 2, 30.0)))
            extra[f"{rate:g}"], _ = await run_pass(client, rate, users[:k])
    b.out.update({"request_p50_ms": req["p50_ms"], "request_p99_ms": req["p99_ms"]})
    b.details["requests"] = req
    if extra:
        b.details["requests_other_rates"] = extra
        b.out["request_p99_ms_by_rate"] = {f"{a.request_rate:g}": req["p99_ms"],
                                           **{k: v["p99_ms"] for k, v in extra.items()}}
    b.series["request_ms"] = sorted(round(x * 1000, 2) for x in lat)

    # The same ranking in-process, on the same signals (read from the worker's Redis
    # prefix beforehand, not timed), on a copy of the same embedded Qdrant.
    qdir = b.workdir / "qdrant-inprocess"
    if not qdir.exists():
        shutil.copytree(b.catalogue.qdrant, qdir)
    settings = load_settings(redis_url=b.redis_url, key_prefix=live.env["KEY_PREFIX"],
                             qdrant_path=qdir, qdrant_collection=b.catalogue.collection)
    adapters = build_adapters(settings)
    try:
        services = build_services(adapters)
        m = min(n, a.inprocess_requests)
        signals = {u: await adapters.users.get_signals(u) for u in set(users[:m])}
        for u in users[:50]:
            await services.recommender.recommend(Request(u, 10), signals.get(u)
                                                 or await adapters.users.get_signals(u))
        ilat: list[float] = []
        same = compared = 0
        cpu0 = time.process_time()
        for u in users[:m]:
            t = time.perf_counter()
            rec = await services.recommender.recommend(Request(u, 10), signals[u])
            ilat.append(time.perf_counter() - t)
            if u in replies and compared < 500:
                compared += 1
                same += [it.content_id for it in rec.items] == replies[u]
        cpu_ms = (time.process_time() - cpu0) * 1000 / max(m, 1)
    finally:
        await adapters.aclose()
    inp = latency_summary(ilat)
    b.out.update({"inprocess_p50_ms": inp["p50_ms"], "inprocess_p99_ms": inp["p99_ms"]})
    b.details["inprocess"] = {**inp, "same_items_as_worker": f"{same}/{compared}",
                              "mode": "sequential, closed loop",
                              "cpu_ms_per_request": round(cpu_ms, 2)}
    b.series["inprocess_ms"] = sorted(round(x * 1000, 3) for x in ilat)
    log(f"  in-process p50 {inp['p50_ms']} ms, p99 {inp['p99_ms']} ms, cpu {cpu_ms:.2f} ms "
        f"per request (same items as the worker for {same}/{compared} users)")


async def redis_memory(b: Bench, prefix: str, users: int, sample: int = 1000) -> dict[str, Any]:
    """MEMORY USAGE (exact, SAMPLES 0) of sampled users' keys, plus the shared keys
    (popularity, counts, co-interaction partners) divided by the active users."""
    from redis.asyncio import Redis

    client = Redis.from_url(b.redis_url)
    try:
        active = 0
        async for _ in client.scan_iter(match=f"{prefix}:{{*}}:z", count=5000):
            active += 1
        rng = random.Random(41)
        cand = [user_id(i) for i in rng.sample(range(users), min(users, sample * 2))]
        per_user: list[int] = []
        kinds: dict[str, list[int]] = defaultdict(list)
        async with client.pipeline(transaction=False) as pipe:
            for u in cand:
                for kind in ("z", "h", "i", "sig"):
                    pipe.memory_usage(f"{prefix}:{{{u}}}:{kind}", samples=0)
            res = await pipe.execute()
        for j in range(len(cand)):
            vals = res[4 * j:4 * j + 4]
            if vals[0] is None or len(per_user) >= sample:
                continue
            per_user.append(sum(v or 0 for v in vals))
            for kind, v in zip(("z", "h", "i", "sig"), vals, strict=True):
                kinds[kind].append(v or 0)
        shared_keys = [f"{prefix}:pop", f"{prefix}:cnt"]
        shared_keys += [k async for k in client.scan_iter(match=f"{prefix}:co:*", count=5000)]
        shared = 0
        for i in range(0, len(shared_keys), 5000):
            async with client.pipeline(transaction=False) as pipe:
                for k in shared_keys[i:i + 5000]:
                    pipe.memory_usage(k, samples=0)
                shared += sum(v or 0 for v in await pipe.execute())
        used = (await client.info("memory"))["used_memory"]
    finally:
        await client.aclose()
    mean_user = statistics.fmean(per_user) if per_user else 0.0
    return {
        "active_users": active, "users_sampled": len(per_user),
        "per_user_keys_bytes_mean": round(mean_user),
        "per_user_keys_bytes_by_kind": {k: round(statistics.fmean(v)) for k, v in kinds.items()},
        "shared_keys": len(shared_keys), "shared_keys_bytes": shared,
        "bytes_per_user": round(mean_user + shared / max(active, 1)),
        "redis_used_memory_bytes": used,
    }


async def time_restart(b: Bench, env: dict[str, str], store: str,
                       timeout: float = 600.0) -> dict[str, Any]:
    """Start a worker on the state a finished run left (same app id and DATA_DIR)
    with table store ``store``; seconds from spawn until /readyz answers 200 (the
    web server starts once the signals table is recovered), and its RSS then."""
    import aiohttp

    port = free_port()
    w = WorkerProcess({**env, "TABLE_STORE": store, "WEB_PORT": str(port)},
                      b.workdir / f"restart-{store[:-3]}.log")
    t0 = time.perf_counter()
    w.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.perf_counter() - t0 < timeout:
                check_alive(w)
                with contextlib.suppress(Exception):
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                return {"ready_s": None, "timed_out_after_s": timeout}
        ready_s = time.perf_counter() - t0
        pid = w.proc.pid if w.proc else 0
        return {"ready_s": round(ready_s, 2), "rss_mb_ready": round(rss_mb(pid), 1),
                "read_changelog": "Restoring state from changelog topics" in w.log()}
    finally:
        w.stop()


async def part_memory(b: Bench) -> None:
    from redis.asyncio import Redis

    a = b.args
    assert b.catalogue is not None
    if b.live is not None:  # free the CPU
        b.live.worker.stop()
        b.live = None
    large = a.rss_events
    if large is None:
        rate = b.out.get("ingest_events_per_s")
        large = 1_000_000
        if rate:
            large = int(min(1_000_000, max(2 * a.rss_small, rate * a.rss_budget_s)) // 50_000
                        * 50_000)
    topic = b.topic("mem-events")
    await create_topic(b, topic, a.partitions)
    client = Redis.from_url(b.redis_url)
    used0 = (await client.info("memory"))["used_memory"]
    log(f"memory: preloading {large:,} events over {a.users:,} users")
    gen = await preload(b, topic, EventFactory(b.catalogue.ids, users=a.users, seed=51), large)
    t = await worker_ingest(b, "mem", topic, gen, rss_at=a.rss_small, poll_s=0.25)
    await asyncio.sleep(3)
    rss_idle = rss_mb(t.worker.proc.pid) if t.worker.proc else None
    used1 = (await client.info("memory"))["used_memory"]
    await client.aclose()
    mem = await redis_memory(b, t.env["KEY_PREFIX"], a.users)
    t.worker.stop()
    # The same state, restarted: first with the run's own store (RocksDB keeps the
    # table in DATA_DIR), then with the other one (memory:// re-reads the changelog;
    # a RocksDB store that did not run here starts empty and reads it too).
    from worker.settings import Settings

    store = (t.env.get("TABLE_STORE") or os.environ.get("TABLE_STORE")
             or Settings.model_fields["table_store"].default)
    restarts = {}
    for st in (store, "memory://" if store != "memory://" else "rocksdb://"):
        restarts[st] = await time_restart(b, t.env, st)
        log(f"  restart with {st}: {restarts[st]}")
    small = t.result.get("rss_small") or {}
    b.out.update({
        "rss_mb_100k": small.get("rss_mb"),
        "rss_mb_1m": t.result.get("rss_mb_done"),
        "rss_events_small": small.get("events_applied"),
        "rss_events_large": gen.records if t.result.get("completed") else None,
        "redis_bytes_per_user": mem["bytes_per_user"],
    })
    if small.get("rss_mb") and t.result.get("rss_mb_done"):
        b.out["rss_growth_ratio"] = round(t.result["rss_mb_done"] / small["rss_mb"], 3)
    b.details["memory"] = {
        "worker": t.result, "rss_mb_idle_after": r2(rss_idle, 1),
        "events_per_user": round(gen.records / a.users, 1),
        "events_per_interaction": round(gen.records / gen.interactions, 5),
        "redis": mem,
        "table_store": store,
        "restart": restarts,
        "redis_used_memory_delta_per_user": round((used1 - used0) / max(mem["active_users"], 1)),
        "note": "used_memory is server-wide (other databases may change meanwhile); "
                "redis_bytes_per_user is MEMORY USAGE of the user's own keys plus the "
                "shared keys divided by the active users",
    }
    b.series["memory"] = t.series
    log(f"  rss {small.get('rss_mb')} MB after {small.get('events_applied')} events, "
        f"{t.result.get('rss_mb_done')} MB after {gen.records:,}; "
        f"redis {mem['bytes_per_user']} B/user")


# --------------------------------------------------------------------------- plot


def plot(doc: dict[str, Any], series: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = doc["results"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    names, vals, cols = [], [], []
    for label, key, col in (("worker", "ingest_events_per_s", "#2b7bba"),
                            ("aiokafka\nceiling", "ceiling_events_per_s", "#999999")):
        if o.get(key):
            names.append(label)
            vals.append(o[key])
            cols.append(col)
    if names:
        bars = ax.bar(names, vals, color=cols)
        for bar, v in zip(bars, vals, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:,.0f}", ha="center",
                    va="bottom", fontsize=9)
        ax.axhline(20_000, ls="--", color="#d62728", lw=1, label="target 20,000/s")
        ax.legend(fontsize=8)
    ax.set_title("ingest throughput (events/s, median of trials)")

    ax = axes[0][1]
    groups = [("freshness", doc["details"].get("freshness")),
              ("request\n(reply topic)", doc["details"].get("requests")),
              ("in-process\nranking", doc["details"].get("inprocess"))]
    groups = [(g, d) for g, d in groups if d and d.get("p50_ms") is not None]
    width = 0.25
    for j, (q, col) in enumerate((("p50_ms", "#2b7bba"), ("p90_ms", "#74a9cf"),
                                  ("p99_ms", "#e08214"))):
        xs = [i + (j - 1) * width for i in range(len(groups))]
        ys = [d[q] for _, d in groups]
        ax.bar(xs, ys, width, label=q.replace("_ms", ""), color=col)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax.set_title("latency percentiles (ms, log scale)")

    ax = axes[1][0]
    mem = series.get("memory")
    if mem:
        ratio = doc["details"]["memory"]["events_per_interaction"]
        ax.plot([p[2] * ratio for p in mem], [p[3] for p in mem], color="#2b7bba",
                label="vs events applied (buffered + signals saved)")
        ax.plot([p[1] for p in mem], [p[3] for p in mem], color="#bbbbbb", lw=0.8,
                label="vs raw records consumed")
        if o.get("rss_mb_100k"):
            ax.axvline(o["rss_events_small"], ls=":", color="#999999")
            ax.axhline(o["rss_mb_100k"] * 1.15, ls="--", color="#d62728", lw=1,
                       label="rss after 100k + 15%")
            ax.legend(fontsize=8)
        ax.set_xlabel("events")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title("worker RSS while replaying events")

    ax = axes[1][1]
    for key, label in (("freshness_ms", "freshness"), ("request_ms", "request"),
                       ("inprocess_ms", "in-process")):
        xs = series.get(key)
        if xs:
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=8)
    ax.set_title("latency CDF")
    m = doc["machine"]
    fig.suptitle(f"recsys-worker perf, {doc['run']['finished_at'][:16]}, {m['cores']} cores "
                 f"({m['cpu_model']}), catalogue {doc['catalogue']['name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- main


HOW = {
    "ingest_events_per_s": "cold `python -m worker worker` (own APP_ID, KEY_PREFIX, Qdrant copy) "
        "over a pre-loaded topic; from the first /metrics scrape (50 ms polling) showing "
        "consumed records (those already consumed subtracted) to the scrape where "
        "interactions_written reaches the generated count (buffer appended and signals "
        "saved); median of the trials. events_per_s_to_committed adds the wait until the "
        "group lag is 0 on the events and interactions topics",
    "ceiling_events_per_s": "AIOKafkaConsumer in the bench process, all partitions assigned, "
        "getmany batches, orjson.loads of every value; from the first non-empty batch; "
        "median of trials interleaved with the worker's",
    "freshness": "paced producer (10 ms ticks) onto the running worker's events topic; every "
        "Nth event is a probe for a random user with event time = now (newer than anything "
        "that user has). Latency = from just before producer.send to the Redis keyspace "
        "notification of the SET of the user's :sig key whose saved as_of >= the probe's "
        "event time (checked with a GET), seen by a listener thread in the bench process",
    "worker_cpu": "details.freshness*.worker_cpu and details.requests*.worker_cpu: CPU seconds "
        "(utime + stime, /proc/<pid>/stat and /proc/<pid>/task/<pid>/stat) the worker used "
        "while the load was offered, divided by that time: the process, its main thread "
        "(the asyncio loop) and the rest (Faust's consumer thread when CONSUMER_THREAD=true, "
        "RocksDB, the trim, the embedded Qdrant's threads)",
    "worst_ms_per_second": "details.freshness*.worst_ms_per_second and "
        "details.requests*.worst_ms_per_second: the slowest probe or request sent in each "
        "second of the pass (null: none seen), to tell a tail spread over the pass from a "
        "few stalls",
    "request": "RecsysClient over the reply topic, open-loop schedule at the offered rate, "
        "at most `concurrency` in flight; latency from the call to the reply (from_schedule: "
        "from the scheduled time); users drawn from those with signals; k=10, no query",
    "inprocess": "Recommender.recommend from build_services(build_adapters(settings)) on the "
        "worker's Redis prefix and a copy of its Qdrant, the user's signals read beforehand "
        "(untimed); sequential; cpu_ms_per_request is the bench process's CPU time over "
        "the loop divided by the requests",
    "rss": "VmRSS (/proc/<pid>/status) of a cold worker replaying a pre-loaded topic: at the "
        "first scrape (every 250 ms) where the applied events (interactions_written scaled "
        "to records) reach rss_small, and when every interaction of the replay is buffered",
    "redis_bytes_per_user": "MEMORY USAGE (SAMPLES 0) of sampled users' :z, :h, :i, :sig "
        "keys, plus pop/cnt/co:* keys divided by the active users, after the memory replay",
    "restart": "details.memory.restart: after the memory replay, a worker started on its "
        "state (same APP_ID and DATA_DIR) with each TABLE_STORE, the run's own first; "
        "seconds from spawn to /readyz 200 (served once the table is recovered), RSS then, "
        "and whether Faust logged reading the changelog back",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"comma-separated parts: {','.join(PARTS)}")
    p.add_argument("--quick", action="store_true",
                   help="50k events, 20 s phases, 2 trials, 200k RSS replay (harness check)")
    p.add_argument("--events", type=int, default=200_000, help="ingest: records pre-loaded")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--ingest-trials", type=int, default=2)
    p.add_argument("--profile-seconds", type=float, default=20.0,
                   help="py-spy an extra ingest trial for this long (0: no profile)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of the freshness and request phases")
    p.add_argument("--rate", type=float, default=1000.0, help="freshness: offered events/s")
    p.add_argument("--probe-every", type=int, default=10)
    p.add_argument("--freshness-drain-s", type=float, default=120.0,
                   help="how long to wait for the last probes after producing ends")
    p.add_argument("--freshness-extra-rates", default="250,50",
                   help="comma-separated lower offered rates measured after the main one")
    p.add_argument("--request-rate", type=float, default=100.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--request-extra-rates", default="10",
                   help="comma-separated lower request rates measured after the main one")
    p.add_argument("--inprocess-requests", type=int, default=3000)
    p.add_argument("--rss-small", type=int, default=100_000)
    p.add_argument("--rss-events", type=int, default=None,
                   help="memory: records replayed (default: up to 1M, what the measured "
                        "ingest rate does in --rss-budget-s)")
    p.add_argument("--rss-budget-s", type=float, default=480.0)
    p.add_argument("--ml-path", default=os.environ.get("ML_PATH", str(DEFAULT_ML)))
    p.add_argument("--broker", default=None)
    p.add_argument("--redis-url", default=None, help="default: the stack's Redis, database 3")
    p.add_argument("--out", type=Path, default=RESULTS / "perf.json")
    p.add_argument("--keep", action="store_true", help="keep topics, Redis data and workdir")
    args = p.parse_args(argv)
    if args.quick:
        args.events = min(args.events, 50_000)
        args.duration = min(args.duration, 20.0)
        args.rss_events = args.rss_events or 200_000
        args.profile_seconds = min(args.profile_seconds, 10.0)
        args.inprocess_requests = min(args.inprocess_requests, 1000)
    args.parts = [x.strip() for x in args.only.split(",") if x.strip()]
    args.freshness_extra_rates = [float(x) for x in args.freshness_extra_rates.split(",")
                                  if x.strip()]
    args.request_extra_rates = [float(x) for x in args.request_extra_rates.split(",")
                                if x.strip()]
    bad = set(args.parts) - set(PARTS)
    if bad:
        p.error(f"unknown part(s) {sorted(bad)}; choose from {PARTS}")
    return args


def stack_env() -> dict[str, str]:
    env: dict[str, str] = {}
    path = ROOT / ".stack" / "env"
    if path.exists():
        for line in path.read_text().splitlines():
            k, _, v = line.partition("=")
            if k:
                env[k.strip()] = v.strip()
    return env


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from redis.asyncio import Redis

    st = stack_env()
    broker = args.broker or os.environ.get("KAFKA_BROKER") or st.get("KAFKA_BROKER",
                                                                     "127.0.0.1:19092")
    base = os.environ.get("REDIS_URL") or st.get("REDIS_URL", "redis://127.0.0.1:16379/0")
    redis_url = args.redis_url or base.rsplit("/", 1)[0] + "/3"
    run_id = f"perf{datetime.now().strftime('%m%d%H%M')}{uuid.uuid4().hex[:4]}"
    workdir = ROOT / ".cache" / "bench" / "runs" / run_id
    workdir.mkdir(parents=True)
    b = Bench(args, broker, redis_url, run_id, workdir)
    client = Redis.from_url(redis_url)
    await client.flushdb(asynchronous=True)  # emptied at once, freed in the background
    redis_server = (await client.info("server"))["redis_version"]
    await client.aclose()
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    machine = machine_info()
    code_start = code_fingerprint()
    log(f"run {run_id}: parts {args.parts}, broker {broker}, redis {redis_url}")
    b.catalogue = await prepare_catalogue(args)
    errors: dict[str, str] = {}
    try:
        for part in args.parts:
            tp = time.perf_counter()
            try:
                await {"ingest": part_ingest, "freshness": part_freshness,
                       "requests": part_requests, "memory": part_memory}[part](b)
            except Exception as exc:  # a broken part must not lose the others' numbers
                import traceback

                traceback.print_exc()
                errors[part] = f"{type(exc).__name__}: {exc}"
            b.details.setdefault("part_seconds", {})[part] = round(time.perf_counter() - tp, 1)
    finally:
        for w in b.workers:
            w.stop(timeout=20)
        if not args.keep:
            with contextlib.suppress(Exception):
                n = await delete_run_topics(b)
                log(f"deleted {n} topics of the run")
            # ASYNC: a 1M-event replay leaves ~2.5 GB in the database, and a
            # synchronous FLUSHDB outlasted the client's read timeout (the run's
            # figures were lost with it). A failed clean-up must not lose them.
            with contextlib.suppress(Exception):
                client = Redis.from_url(redis_url)
                await client.flushdb(asynchronous=True)
                await client.aclose()
            logs = ROOT / ".cache" / "bench" / "last-run-logs"
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir(parents=True)
            for f in workdir.glob("*.log"):
                shutil.copy(f, logs / f.name)
            shutil.rmtree(workdir, ignore_errors=True)
    keys = ["ingest_events_per_s", "ceiling_events_per_s", "ingest_ratio", "freshness_p50_ms",
            "freshness_p99_ms", "freshness_p99_ms_by_rate", "request_p50_ms", "request_p99_ms",
            "request_p99_ms_by_rate", "inprocess_p50_ms",
            "inprocess_p99_ms", "rss_mb_100k", "rss_mb_1m", "rss_events_small",
            "rss_events_large", "rss_growth_ratio", "redis_bytes_per_user"]
    results = {k: b.out.get(k) for k in keys}
    machine["loadavg_at_end"] = list(os.getloadavg())
    cat = b.catalogue
    doc: dict[str, Any] = {
        **results,
        "results": results,
        "targets": TARGETS,
        "how_measured": HOW,
        "details": b.details,
        "errors": errors,
        "catalogue": {"name": cat.name, "path": str(cat.path), "items": len(cat.ids),
                      "fallback_to_demo": cat.fallback,
                      "note": ("MovieLens not found: the bundled demo catalogue was used"
                               if cat.fallback else "MovieLens movies.csv")},
        "machine": machine,
        "versions": versions(redis_server),
        "code": code_info(code_start, b.details.get("code_at_worker_start", {})),
        "settings": {
            "parts": args.parts, "events": args.events, "users": args.users,
            "partitions": args.partitions, "ingest_trials": args.ingest_trials,
            "profile_seconds": args.profile_seconds, "duration_s": args.duration,
            "freshness_rate": args.rate, "probe_every": args.probe_every,
            "freshness_extra_rates": args.freshness_extra_rates,
            "request_rate": args.request_rate, "concurrency": args.concurrency,
            "request_extra_rates": args.request_extra_rates,
            "inprocess_requests": args.inprocess_requests, "rss_small": args.rss_small,
            "rss_events": args.rss_events, "rss_budget_s": args.rss_budget_s,
            "worker": worker_settings(), "redis_db": b.db,
            "embedding": "FastEmbed all-MiniLM-L6-v2 (int8 ONNX), embedded Qdrant (qdrant-edge-py)",
            "event_mix": "Product Viewed 55%, Product Added 20%, Order Completed 10% (1-3 "
                         "products), Product Reviewed 15%; users uniform; items Zipf-like; "
                         "event times within the last 20 days",
        },
        "run": {"id": run_id, "started_at": started.isoformat(timespec="seconds"),
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - t0, 1),
                "command": " ".join(sys.argv)},
    }
    b.series_doc = b.series  # type: ignore[attr-defined]
    return {"doc": doc, "series": b.series}


def code_info(start: dict[str, Any], per_worker: dict[str, str]) -> dict[str, Any]:
    end = code_fingerprint()
    seen = {start["worker_sources_sha1"], end["worker_sources_sha1"], *per_worker.values()}
    return {**end, "worker_sources_sha1_at_start": start["worker_sources_sha1"],
            "changed_during_run": len(seen) > 1}


def worker_settings() -> dict[str, Any]:
    from worker.settings import load_settings

    s = load_settings()
    return {k: getattr(s, k) for k in ("batch_size", "batch_within_ms", "window_days",
                                       "co_partners", "co_keep", "table_store",
                                       "popularity_half_life_days", "request_deadline_ms")}


def main() -> int:
    args = parse_args()
    res = asyncio.run(main_async(args))
    doc, series = res["doc"], res["series"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    png = args.out.with_suffix(".png")
    try:
        plot(doc, series, png)
    except Exception as exc:  # the numbers matter more than the picture
        print(f"plot failed: {exc!r}")
    print(json.dumps(doc["results"], indent=2))
    if doc["errors"]:
        print(f"errors: {doc['errors']}")
    print(f"wrote {args.out} and {png} in {doc['run']['duration_s']}s")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
