#!/usr/bin/env python3
"""End-to-end smoke check of the local Kafka broker (``scripts/stack.sh start kafka``).

1. aiokafka: create an 8-partition topic with the admin client, produce a record,
   consume it in a consumer group, commit and read back the committed offset.
2. Faust: a one-agent app (run as a child process with ``faust.Worker``, like
   ``faust -A app worker``) joins a consumer group, receives a record its own
   producer sent, commits, and shuts down cleanly. Proves the broker accepts the
   protocol versions Faust/aiokafka send (Kafka 4 removed many old ones).

Broker: ``--broker`` > ``$KAFKA_BROKER`` > ``.stack/env`` > 127.0.0.1:19092.
Run with the project venv: ``.venv/bin/python scripts/smoke_kafka.py``. Exit 0 = OK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8


def default_broker() -> str:
    if os.environ.get("KAFKA_BROKER"):
        return os.environ["KAFKA_BROKER"]
    stack_dir = Path(os.environ.get("STACK_DIR", ".stack"))
    env_file = stack_dir if stack_dir.is_absolute() else ROOT / stack_dir
    env_file = env_file / "env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "KAFKA_BROKER" and value.strip():
                return value.strip()
    return "127.0.0.1:19092"


def step(msg: str) -> None:
    print(f"smoke: {msg}", flush=True)


# --------------------------------------------------------------------------- aiokafka


async def create_topic(broker: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
        )
        for _ in range(50):  # wait until every partition has a leader
            (desc,) = await admin.describe_topics([topic])
            parts = desc["partitions"]
            if len(parts) == PARTITIONS and all(p["leader"] >= 0 for p in parts):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{topic}: partitions not ready: {desc}")
    finally:
        await admin.close()


async def aiokafka_roundtrip(broker: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    run = uuid.uuid4().hex[:8]
    topic, group = f"smoke-aiokafka-{run}", f"smoke-aiokafka-{run}"
    t0 = time.monotonic()
    await create_topic(broker, topic)
    step(f"created topic {topic} with {PARTITIONS} partitions")

    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        md = await producer.send_and_wait(topic, b"hello " + run.encode(), key=b"user-1")
    finally:
        await producer.stop()
    step(f"produced to partition {md.partition} offset {md.offset}")

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert msg.value == b"hello " + run.encode(), msg
        await consumer.commit()
        tp = TopicPartition(topic, msg.partition)
        committed = await consumer.committed(tp)
        assert committed == msg.offset + 1, (committed, msg.offset)
    finally:
        await consumer.stop()
    step(f"consumed in group {group}, committed offset {committed}")

    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        assert offsets[tp].offset == committed, offsets
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    step(f"aiokafka OK ({time.monotonic() - t0:.1f} s)")


# --------------------------------------------------------------------------- faust


def faust_child(broker: str, topic: str, group: str, timeout: float) -> int:
    """Runs in a child process: a Faust worker with one agent."""
    import faust

    token = uuid.uuid4().hex.encode()
    state = {"got": False, "committed": False}
    tasks: set[asyncio.Future[None]] = set()
    with tempfile.TemporaryDirectory(prefix="smoke-faust-") as datadir:
        app = faust.App(
            group,
            broker=f"kafka://{broker}",
            store="memory://",
            web_enabled=False,
            datadir=datadir,
            topic_partitions=PARTITIONS,
            topic_replication_factor=1,
        )
        source = app.topic(topic, value_type=bytes, value_serializer="raw")

        async def finish() -> None:
            # The event is acked after the agent body returns; commit, then stop.
            for _ in range(50):
                await asyncio.sleep(0.1)
                if await app.consumer.commit():
                    state["committed"] = True
                    break
            os.kill(os.getpid(), signal.SIGTERM)  # graceful worker shutdown

        @app.agent(source)
        async def hello(stream):  # type: ignore[no-untyped-def]
            async for value in stream:
                if value == token:
                    state["got"] = True
                    tasks.add(asyncio.ensure_future(finish()))

        @app.task
        async def send_hello() -> None:
            await source.send(key=b"user-1", value=token)

        worker = faust.Worker(app, loglevel="WARNING", quiet=True)
        worker.loop.call_later(timeout, os.kill, os.getpid(), signal.SIGTERM)
        with contextlib.suppress(SystemExit):
            worker.execute_from_commandline()
    print(f"faust-child: got={state['got']} committed={state['committed']}", flush=True)
    return 0 if state["got"] and state["committed"] else 1


async def faust_check(broker: str, timeout: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    run = uuid.uuid4().hex[:8]
    topic, group = f"smoke-faust-{run}", f"smoke-faust-{run}"
    # Faust does not create source topics; pre-create so the first join sees it.
    await create_topic(broker, topic)
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--faust-child",
        topic,
        group,
        "--broker",
        broker,
        "--timeout",
        str(timeout),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout + 30)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(text[-4000:])
        raise AssertionError(f"faust worker failed (exit {proc.returncode})")

    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        mine = {tp: o.offset for tp, o in offsets.items() if tp.topic == topic}
        assert sum(mine.values()) >= 1, f"no committed offsets for {group}: {offsets}"
        topics = [topic] + [t for t in await admin.list_topics() if t.startswith(group)]
        await admin.delete_topics(topics)
    finally:
        await admin.close()
    step(
        f"faust OK: agent received its record, group {group} committed {mine}"
        f" ({time.monotonic() - t0:.1f} s)"
    )


async def main_async(args: argparse.Namespace) -> None:
    step(f"broker {args.broker}")
    await aiokafka_roundtrip(args.broker)
    if not args.skip_faust:
        await faust_check(args.broker, args.timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=default_broker())
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--skip-faust", action="store_true")
    parser.add_argument(
        "--faust-child", nargs=2, metavar=("TOPIC", "GROUP"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.faust_child:
        return faust_child(args.broker, *args.faust_child, timeout=args.timeout)
    try:
        asyncio.run(main_async(args))
    except Exception as exc:
        print(f"smoke: FAILED: {exc!r}", file=sys.stderr)
        return 1
    step("all OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
