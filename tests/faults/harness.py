"""Fault-suite helpers: event streams, the clean reference pass, Redis snapshots,
consumer-group lag, and the ``benchmarks/results/reliability.json`` report.

The reference ("clean pass") runs the product's own ingest code in-process,
``parse_batch`` + ``IngestPipeline`` from ``build_services(build_adapters(...))``,
over the same raw records, under another key prefix, on a copy of the same
embedded Qdrant. Every generated event lies within the last 10 days, so nothing
is pruned and the expected state does not depend on arrival order: a faulted run
must end with exactly the same buffers, signals and popularity.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from tests.polling import eventually
from tests.servers import REPO

RESULTS = REPO / "benchmarks" / "results" / "reliability.json"
CATALOGUE_IDS = [str(c) for c in range(100, 160)]

EVENTS = [  # (event name, needs products[]); weights come from the normaliser
    ("Product Viewed", False),
    ("Product Viewed", False),
    ("Product Clicked", False),
    ("Product Added", False),
    ("Product Added to Wishlist", False),
    ("Order Completed", True),
    ("Checkout Started", True),
]


# --------------------------------------------------------------------------- streams


def gen_events(n: int, *, users: int, seed: int, dup_rate: float = 0.05,
               now: datetime | None = None) -> list[tuple[bytes, bytes]]:
    """``n`` raw RudderStack records ``(key, value)``: several users, multi-product
    orders, and ``dup_rate`` exact redeliveries (same messageId, same bytes)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    out: list[tuple[bytes, bytes]] = []
    while len(out) < n:
        if out and rng.random() < dup_rate:
            out.append(out[rng.randrange(len(out))])
            continue
        user = f"u{rng.randrange(users):05d}"
        name, multi = rng.choice(EVENTS)
        ts = now - timedelta(seconds=rng.uniform(60, 10 * 86_400))
        props: dict[str, Any]
        if multi:
            items = rng.sample(CATALOGUE_IDS, rng.randint(2, 4))
            props = {"order_id": f"o-{uuid.UUID(int=rng.getrandbits(128)).hex[:10]}",
                     "products": [{"product_id": f"content_{c}", "quantity": 1} for c in items]}
        else:
            props = {"product_id": f"content_{rng.choice(CATALOGUE_IDS)}"}
        body = {
            "type": "track", "event": name, "userId": user,
            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "properties": props,
        }
        out.append((user.encode(), orjson.dumps(body)))
    return out


def gen_malformed(n: int, *, seed: int) -> list[bytes]:
    """``n`` distinct hostile records, each of which the normaliser must reject."""
    rng = random.Random(seed)

    def valid_body() -> dict[str, Any]:
        return {"type": "track", "event": "Product Viewed", "userId": f"h{rng.randrange(50)}",
                "messageId": uuid.UUID(int=rng.getrandbits(128)).hex,
                "timestamp": datetime.now(UTC).isoformat(),
                "properties": {"product_id": f"content_{rng.choice(CATALOGUE_IDS)}"}}

    def deep(i: int) -> bytes:
        d = rng.choice([33, 40, 300, 5_000, 50_000])
        body = orjson.dumps({**valid_body(), "n": i})
        return body[:-1] + b', "deep": ' + b"[" * d + b"1" + b"]" * d + b"}"

    kinds: list[Callable[[int], bytes]] = [
        lambda i: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))),  # random bytes
        lambda i: b"\xff\xfe" + f"not utf-8 {i}".encode() + bytes([0xC3, 0x28]),  # non-UTF-8
        lambda i: b"\x00" + os.urandom(20),  # Avro/Confluent framing
        deep,
        lambda i: orjson.dumps({**valid_body(), "userId": rng.choice(
            [[1], {"a": i}, True, 1.5, "u\x01" + str(i), "x" * 300])}),
        lambda i: orjson.dumps({**valid_body(), "timestamp": rng.choice(
            [f"yesterday {i}", "2999-01-01T00:00:00Z", [i], 1.5e11 + i])}),
        lambda i: orjson.dumps({**valid_body(), "properties": {"product_id": rng.choice(
            [[i], {"x": i}, "c" * 200, "c\x07" + str(i)])}}),
        lambda i: orjson.dumps({**valid_body(), "properties": {"products": f"nope {i}"},
                                "event": "Order Completed"}),
        lambda i: orjson.dumps([i, "top-level array"]),
        lambda i: f'{{"type": "track", "n": {i}, "x": NaN}}'.encode(),
        lambda i: f'{{"truncated": {i}, "json": '.encode(),
        lambda i: orjson.dumps({**valid_body(), "messageId": ["m", i]}),
    ]
    out: list[bytes] = []
    seen: set[bytes] = set()
    i = 0
    while len(out) < n:
        if i % 250 == 0:  # a few huge fields (over the 256 KiB record limit)
            raw = orjson.dumps({**valid_body(), "pad": "x" * rng.randint(263_000, 300_000)})
        else:
            raw = kinds[i % len(kinds)](i)
        i += 1
        if raw not in seen:
            seen.add(raw)
            out.append(raw)
    return out


async def produce(broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes]], *,
                  rate: float | None = None, **kafka_options: Any) -> int:
    """Send records (optionally paced at ``rate`` per second); wait for delivery."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5,
                                max_request_size=2_000_000, **kafka_options)
    await producer.start()
    n = 0
    started = time.monotonic()
    try:
        for key, value in records:
            await producer.send(topic, key=key, value=value)
            n += 1
            if rate and n % 200 == 0:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return n


# --------------------------------------------------------------------------- reference


async def clean_pass(records: Sequence[tuple[bytes | None, bytes]], env: dict[str, str], *,
                     prefix: str, tmp: Path, redis_url: str | None = None) -> set[str]:
    """Apply ``records`` once, in-process, with the product's ingest code.

    Returns the user ids that got interactions. The state lands under ``prefix``.
    """
    from worker.bootstrap import build_adapters, build_services
    from worker.pipeline import parse_batch
    from worker.settings import load_settings

    qdir = tmp / f"qdrant-clean-{prefix}"
    if not qdir.exists():
        shutil.copytree(env["QDRANT_PATH"], qdir)
    settings = load_settings(
        redis_url=redis_url or env["REDIS_URL"], key_prefix=prefix, qdrant_path=qdir,
        embedding=env.get("EMBEDDING", "fastembed"), qdrant_collection="content",
    )
    services = build_services(build_adapters(settings))
    try:
        parsed = parse_batch([(k, v, "clean") for k, v in records])
        evs = sorted(parsed.interactions, key=lambda e: e.user_id)
        for i in range(0, len(evs), 5000):
            await services.pipeline.apply(evs[i:i + 5000])
        return {e.user_id for e in evs}
    finally:
        await services.adapters.aclose()


# --------------------------------------------------------------------------- state


@dataclass
class State:
    buffers: dict[str, dict[str, tuple[float, bytes]]] = field(default_factory=dict)
    signals: dict[str, Any] = field(default_factory=dict)
    popularity: dict[str, float] = field(default_factory=dict)

    @property
    def buffered(self) -> int:
        return sum(len(b) for b in self.buffers.values())


async def snapshot(redis_url: str, prefix: str) -> State:
    """Every user's buffer (id -> score, body), signals, and ``<prefix>:pop``."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    st = State()
    try:
        keys = [k.decode() async for k in client.scan_iter(match=f"{prefix}:*", count=2000)]
        zs = [k for k in keys if k.endswith(":z")]
        sigs = [k for k in keys if k.endswith(":sig")]
        async with client.pipeline(transaction=False) as pipe:
            for k in zs:
                pipe.zrange(k, 0, -1, withscores=True)
                pipe.hgetall(k[:-2] + ":h")
            for k in sigs:
                pipe.get(k)
            pipe.zrange(f"{prefix}:pop", 0, -1, withscores=True)
            res = await pipe.execute()
        for i, k in enumerate(zs):
            uid = k[len(prefix) + 2:-3]
            members, bodies = res[2 * i], res[2 * i + 1]
            st.buffers[uid] = {m.decode(): (s, bodies.get(m, b"")) for m, s in members}
        for j, k in enumerate(sigs):
            uid = k[len(prefix) + 2:-5]
            raw = res[2 * len(zs) + j]
            if raw:
                st.signals[uid] = orjson.loads(raw)
        st.popularity = {m.decode(): s for m, s in res[-1]}
    finally:
        await client.aclose()
    return st


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, int | float) and isinstance(b, int | float)
                and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass
class Diff:
    lost: int  # expected buffer entries missing or different, + items under-counted
    duplicated: int  # unexpected buffer entries + over-counted popularity items / events
    signals_mismatched: int
    examples: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.signals_mismatched)


def compare(expected: State, actual: State) -> Diff:
    lost = dup = sig_bad = 0
    ex: list[str] = []
    for uid in expected.buffers.keys() | actual.buffers.keys():
        e, a = expected.buffers.get(uid, {}), actual.buffers.get(uid, {})
        for mid, val in e.items():
            if a.get(mid) != val:
                lost += 1
                if len(ex) < 5:
                    ex.append(f"buffer {uid}/{mid}: expected {val!r:.80}, got {a.get(mid)!r:.80}")
        extra = a.keys() - e.keys()
        dup += len(extra)
        if extra and len(ex) < 5:
            ex.append(f"buffer {uid}: unexpected ids {sorted(extra)[:3]}")
    for uid in expected.signals.keys() | actual.signals.keys():
        e_sig, a_sig = expected.signals.get(uid), actual.signals.get(uid)
        if not _close(e_sig, a_sig):
            sig_bad += 1
            if e_sig and a_sig:
                dup += max(0, a_sig["event_count"] - e_sig["event_count"])
            if len(ex) < 5:
                ex.append(f"signals {uid}: expected {str(e_sig)[:120]}, got {str(a_sig)[:120]}")
    for item in expected.popularity.keys() | actual.popularity.keys():
        e_pop, a_pop = expected.popularity.get(item, 0.0), actual.popularity.get(item, 0.0)
        if not math.isclose(e_pop, a_pop, rel_tol=1e-9):
            if a_pop > e_pop:
                dup += 1
            else:
                lost += 1
            if len(ex) < 5:
                ex.append(f"popularity {item}: expected {e_pop}, got {a_pop}")
    return Diff(lost, dup, sig_bad, ex)


# --------------------------------------------------------------------------- kafka


async def group_lag(broker: str, group: str, topics: Sequence[str],
                    **kafka_options: Any) -> int:
    """Messages not yet committed by ``group`` on ``topics`` (end offset - committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=broker, **kafka_options)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, **kafka_options)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        meta = await admin.describe_topics(list(topics))
        if any(m["error_code"] or not m["partitions"] for m in meta):
            raise RuntimeError(f"topics not ready: {meta}")
        tps = [TopicPartition(m["topic"], p["partition"]) for m in meta
               for p in m["partitions"]]
        ends = await consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            c = committed.get(tp)
            lag += ends[tp] - (c.offset if c is not None and c.offset >= 0 else 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def wait_caught_up(broker: str, group: str, topics: Sequence[str], *,
                         timeout: float, **kafka_options: Any) -> None:
    """Until the group has committed everything on ``topics``."""
    async def probe() -> bool:
        try:
            return await group_lag(broker, group, topics, **kafka_options) == 0
        except Exception:  # the broker may still be coming back
            return False

    await eventually(probe, timeout=timeout, what=f"group {group} lag 0 on {list(topics)}",
                     interval=1.0)


# --------------------------------------------------------------------------- report


def record_scenario(name: str, *, faults_injected: int, events_sent: int, diff: Diff | None,
                    passed: bool, **extra: Any) -> None:
    """Add/replace one scenario in ``benchmarks/results/reliability.json``."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc = json.loads(RESULTS.read_text())
        scenarios = [s for s in doc.get("scenarios", []) if s.get("name") != name]
    except (OSError, ValueError):
        scenarios = []
    row = {
        "name": name,
        "faults_injected": faults_injected,
        "events_sent": events_sent,
        "events_lost": diff.lost if diff else 0,
        "events_duplicated": diff.duplicated if diff else 0,
        "passed": passed,
        **({"signals_mismatched": diff.signals_mismatched} if diff else {}),
        **extra,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    scenarios.append(row)
    order = ["worker_killed", "redis_outage", "sigterm_during_outage", "broker_restart",
             "scale_out_failover", "hostile_input", "request_flood"]
    scenarios.sort(key=lambda s: order.index(s["name"]) if s["name"] in order else 99)
    RESULTS.write_text(json.dumps({"scenarios": scenarios}, indent=2) + "\n")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
