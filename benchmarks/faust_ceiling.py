"""What Faust itself costs per record: an empty agent next to a plain aiokafka loop.

Pre-loads ``--events`` bench records (benchmarks/perf_events.py) onto a fresh topic,
then, interleaved for ``--trials`` rounds, times

* ``aiokafka``: ``AIOKafkaConsumer.getmany`` + ``orjson.loads`` of every value (the
  ceiling `make bench` reports), and
* ``faust``: a Faust app (own process, own group) whose only agent takes the topic
  with ``noack_take(500, within=5 ms)`` and acks every event, with no other work
  (stock Faust), and
* ``faust_worker_way``: the same agent taking batches as the worker's ingest agent
  does (``worker.batching.take_batches(500, linger=5 ms)``) with the worker's
  record-delivery patch (``worker.kafka_patches.patch_consumer_delivery``),

from the first record to the last, and writes ``benchmarks/results/faust_ceiling.json``.
The worker cannot ingest faster than the ``faust_worker_way`` figure on the same
machine.

  python benchmarks/faust_ceiling.py [--events 200000] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.perf_events import EventFactory  # noqa: E402

FAUST_APP = textwrap.dedent("""
    import os, sys, time
    import faust
    topic, n = os.environ["FC_TOPIC"], int(os.environ["FC_N"])
    app = faust.App(os.environ["FC_GROUP"], broker="kafka://" + os.environ["FC_BROKER"],
                    value_serializer="raw", key_serializer="raw", web_enabled=False,
                    consumer_auto_offset_reset="earliest")
    state = {"n": 0, "t0": None}
    worker_way = os.environ.get("FC_MODE") == "worker"
    if worker_way:  # the worker's delivery patch and batching
        from worker.batching import take_batches
        from worker.kafka_patches import patch_consumer_delivery
        patch_consumer_delivery()

    @app.agent(app.topic(topic))
    async def empty(stream):
        batches = (take_batches(stream, 500, linger=0.005) if worker_way
                   else stream.noack_take(500, within=0.005))
        async for batch in batches:
            if state["t0"] is None:
                state["t0"] = time.perf_counter()
            state["n"] += len(batch)
            for ev in batch:
                await stream.ack(ev)
            if state["n"] >= n:
                print(f"RESULT={n / (time.perf_counter() - state['t0']):.1f}", flush=True)
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
""")


async def preload(broker: str, topic: str, count: int, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    factory = EventFactory([f"content_{i}" for i in range(1, 9_000)], users=20_000, seed=7)
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key)
                   for key, value, _ in factory.stream(count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def aiokafka_rate(broker: str, topic: str, count: int, partitions: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        seen, t0 = 0, None
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                if t0 is None:
                    t0 = time.perf_counter()
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
        assert t0 is not None
        return count / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def faust_rate(broker: str, topic: str, count: int, mode: str = "faust") -> float:
    env = {**os.environ, "FC_MODE": mode, "PYTHONPATH": str(ROOT), "FC_TOPIC": topic,
           "FC_N": str(count), "FC_BROKER": broker,
           "FC_GROUP": f"{topic}-fc{uuid.uuid4().hex[:6]}"}  # its topics start with ours
    proc = subprocess.run([sys.executable, "-c", FAUST_APP], env=env, capture_output=True,
                          text=True, timeout=900, cwd="/tmp")
    found = re.search(r"RESULT=([0-9.]+)", proc.stdout + proc.stderr)
    if found:
        return float(found.group(1))
    raise RuntimeError(f"the Faust app gave no result:\n{proc.stderr[-2000:]}")


async def main(args: argparse.Namespace) -> None:
    topic = f"faust-ceiling-{uuid.uuid4().hex[:8]}"
    await preload(args.broker, topic, args.events, args.partitions)
    rates: dict[str, list[float]] = {"aiokafka": [], "faust": [], "faust_worker_way": []}
    try:
        for i in range(args.trials):
            rates["aiokafka"].append(round(await aiokafka_rate(args.broker, topic, args.events,
                                                              args.partitions), 1))
            rates["faust"].append(round(faust_rate(args.broker, topic, args.events), 1))
            rates["faust_worker_way"].append(round(faust_rate(args.broker, topic, args.events,
                                                              "worker"), 1))
            print(f"trial {i + 1}: aiokafka {rates['aiokafka'][-1]:,.0f}/s, "
                  f"faust empty agent {rates['faust'][-1]:,.0f}/s, the worker's way "
                  f"{rates['faust_worker_way'][-1]:,.0f}/s", flush=True)
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=args.broker)
        await admin.start()
        try:
            await admin.delete_topics([t for t in await admin.list_topics()
                                       if t.startswith(topic)])
        finally:
            await admin.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "faust_empty_agent_events_per_s": med["faust"],
        "aiokafka_events_per_s": med["aiokafka"],
        "faust_over_aiokafka": round(med["faust"] / med["aiokafka"], 4),
        "faust_worker_way_events_per_s": med["faust_worker_way"],
        "trials": rates,
        "events": args.events,
        "partitions": args.partitions,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "how_measured": __doc__.split("\n\n")[1].strip(),
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "how_measured"}, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--broker", default=os.environ.get("KAFKA_BROKER", "127.0.0.1:19092"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                   / "faust_ceiling.json")
    asyncio.run(main(p.parse_args()))
