"""Replay: re-run a range of the raw events topic through the ingest path to
rebuild Redis state, safely beside the live worker.

* Runs under its own consumer group (``<APP_ID>-replay``), with partitions
  assigned explicitly: it never joins, rebalances or commits the live group.
* Bounded: the end of each partition is captured at start (or found with
  ``offsets_for_times`` for ``--until``), so it finishes by itself.
* A start time is honoured per partition with ``offsets_for_times``.
* It runs the same code as the live worker (``parse_batch`` and
  ``IngestPipeline.apply``), whose effects are idempotent: replaying a range
  twice, or over what the live worker already did, changes nothing. It never
  sends replies or dead letters (the live worker already dead-lettered those
  records; replay counts them).

Per-user arrival order matters only for co-interaction pairing; producers that
key records by user id (as RudderStack does) keep it, so a replay into an empty
Redis rebuilds exactly what the live worker built.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.pipeline import IngestPipeline, parse_batch
from worker.recsys_core.types import AppendStatus
from worker.settings import Settings
from worker.topics import is_sentinel


@dataclass(frozen=True, slots=True)
class PartitionRange:
    partition: int
    start: int  # first offset to read
    end: int  # one past the last offset to read

    @property
    def count(self) -> int:
        return max(self.end - self.start, 0)


@dataclass
class Summary:
    records_read: int = 0
    interactions_written: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    users: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        rate = self.records_read / self.seconds if self.seconds > 0 else 0.0
        return {
            "records_read": self.records_read,
            "interactions_written": self.interactions_written,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "no_interaction": self.skipped,
            "users_touched": len(self.users),
            "duration_s": round(self.seconds, 2),
            "events_per_s": round(rate, 1),
        }


def replay_group(settings: Settings) -> str:
    """The replay's own consumer group: never the live one."""
    return f"{settings.app_id}-replay"


async def plan(
    settings: Settings,
    *,
    start: datetime | None,
    until: datetime | None,
    kafka_options: dict[str, Any],
) -> list[PartitionRange]:
    """Each partition's offset range: from ``start`` (None = earliest) up to the end
    captured now, or to the first record after ``until``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **kafka_options)
    await admin.start()
    try:
        meta = await admin.describe_topics([settings.events_topic])
    finally:
        await admin.close()
    parts = sorted(p["partition"] for m in meta if not m["error_code"] for p in m["partitions"])
    if not parts:
        raise LookupError(f"topic {settings.events_topic!r} does not exist")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False, **kafka_options)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.events_topic, p) for p in parts]
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        first = dict(begin)
        if start is not None:
            found = await consumer.offsets_for_times(
                {tp: int(start.timestamp() * 1000) for tp in tps})
            first = {tp: (found[tp].offset if found[tp] is not None else end[tp]) for tp in tps}
        last = dict(end)
        if until is not None:
            found = await consumer.offsets_for_times(
                {tp: int(until.timestamp() * 1000) + 1 for tp in tps})
            last = {tp: (found[tp].offset if found[tp] is not None else end[tp]) for tp in tps}
        starts = {tp: max(first[tp], begin[tp]) for tp in tps}
        await _skip_leading_sentinels(consumer, starts, last)
        return [PartitionRange(tp.partition, starts[tp], last[tp]) for tp in tps]
    finally:
        await consumer.stop()


async def _skip_leading_sentinels(consumer: AIOKafkaConsumer,
                                  starts: dict[TopicPartition, int],
                                  ends: dict[TopicPartition, int]) -> None:
    """Move a range's start past the sentinel record the worker writes at offset 0."""
    todo = [tp for tp, s in starts.items() if s == 0 and ends[tp] > 0]
    if not todo:
        return
    consumer.assign(todo)
    for tp in todo:
        consumer.seek(tp, 0)
    for tp in todo:
        polled = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        msgs = polled.get(tp, [])
        if msgs and msgs[0].offset == 0 and is_sentinel(msgs[0].headers):
            starts[tp] = 1


async def run(
    settings: Settings,
    ranges: list[PartitionRange],
    pipeline: IngestPipeline,
    *,
    kafka_options: dict[str, Any],
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
) -> Summary:
    """Read every range to its end through the ingest pipeline."""
    summary = Summary()
    todo = {TopicPartition(settings.events_topic, r.partition): r for r in ranges if r.count}
    t0 = time.perf_counter()
    if not todo:
        return summary
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=replay_group(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        **kafka_options,
    )
    await consumer.start()
    try:
        consumer.assign(list(todo))
        for tp in todo:
            # Resolve the group's committed position first: otherwise that lookup
            # can finish after the seek below and move the position back to it.
            await consumer.position(tp)
        for tp, r in todo.items():
            consumer.seek(tp, r.start)
        remaining = dict(todo)
        while remaining:
            polled = await consumer.getmany(*remaining, timeout_ms=1000, max_records=batch_size)
            records: list[tuple[bytes | None, bytes, str]] = []
            done_offsets: dict[TopicPartition, int] = {}
            for tp, msgs in polled.items():
                end = remaining[tp].end
                for m in msgs:
                    if m.offset >= end:
                        break
                    done_offsets[tp] = m.offset + 1
                    if is_sentinel(m.headers):
                        continue
                    records.append((m.key, m.value or b"", f"{tp.topic}/{tp.partition}/{m.offset}"))
            for tp in list(remaining):
                if await consumer.position(tp) >= remaining[tp].end:
                    done_offsets.setdefault(tp, remaining[tp].end)
            if records:
                await _apply(pipeline, records, summary)
            if done_offsets:
                await consumer.commit(done_offsets)
            for tp, off in done_offsets.items():
                if off >= remaining[tp].end:
                    del remaining[tp]
            if on_progress is not None and records:
                on_progress(len(records))
    finally:
        await consumer.stop()
        summary.seconds = time.perf_counter() - t0
    return summary


async def _apply(pipeline: IngestPipeline, records: list[tuple[bytes | None, bytes, str]],
                 summary: Summary) -> None:
    parsed = parse_batch(records)
    summary.records_read += len(records)
    summary.dead_lettered += len(parsed.dead_letters)
    summary.skipped += parsed.skipped
    if not parsed.interactions:
        return
    result = await pipeline.apply(parsed.interactions)
    for ev, st in zip(parsed.interactions, result.statuses, strict=True):
        summary.users.add(ev.user_id)
        if st is AppendStatus.ADDED:
            summary.interactions_written += 1
        elif st is AppendStatus.CONFLICT:
            summary.dead_lettered += 1
        else:
            summary.duplicates += 1
