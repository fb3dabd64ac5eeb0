"""The offset guard's commit rule: the commit never passes a record that was not
processed; it passes a range only once the broker proved it empty.

These exercise the guard's own logic over the few consumer attributes it reads
and writes (the ones of Faust 0.15's ``Consumer``); the guard running inside a
real worker on a real broker is covered by ``tests/e2e`` (SIGTERM restart,
transactional input) and ``tests/faults`` (failover).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from worker.consumer_guard import OffsetGuard

T0 = TP("events", 0)
CHANGELOG = TP("app-user-signals-changelog", 0)


class FakeFlow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


def make_guard(committed: int | None = 10) -> tuple[OffsetGuard, Any]:
    resumed: list[set[TP]] = []
    seeks: list[Any] = []
    consumer = SimpleNamespace(
        _acked=defaultdict(list), _acked_index=defaultdict(set),
        _committed_offset=defaultdict(lambda: None), _read_offset=defaultdict(lambda: None),
        _unacked_messages=set(), _buffered_partitions=set(), paused=set(),
        resumed=resumed, seeks=seeks,
    )
    if committed is not None:
        consumer._committed_offset[T0] = committed

    def ack(message: Any) -> bool:
        consumer._acked[message.tp].append(message.offset)
        consumer._acked_index[message.tp].add(message.offset)
        return True

    async def perform_seek() -> None:
        seeks.append("all")

    async def seek_wait(parts: dict[TP, int]) -> None:
        seeks.append(parts)

    consumer.ack = ack
    consumer.resume_partitions = lambda tps: resumed.append(set(tps))
    consumer.pause_partitions = lambda tps: consumer.paused.update(tps)
    consumer.perform_seek = perform_seek
    consumer.assignment = lambda: {T0, CHANGELOG}
    consumer._thread = SimpleNamespace(seek_wait=seek_wait)
    app = SimpleNamespace(consumer=consumer, flow_control=FakeFlow(), consumer_generation_id=3,
                          tables=SimpleNamespace(changelog_topics={CHANGELOG.topic}))
    guard = OffsetGuard(app)
    guard.install()
    return guard, consumer


def acked(consumer: Any, *offsets: int) -> None:
    for o in offsets:
        consumer._acked[T0].append(o)
        consumer._acked_index[T0].add(o)


class Msg:
    def __init__(self, offset: int, generation: int) -> None:
        self.tp, self.offset, self.generation_id, self.acked = T0, offset, generation, False


def message(offset: int, generation: int = 3) -> Msg:
    return Msg(offset, generation)


def test_commit_moves_over_consecutive_acks_only() -> None:
    _guard, consumer = make_guard(committed=10)
    acked(consumer, 12, 10, 11, 14)
    assert consumer._new_offset(T0) == 13
    assert consumer._acked[T0] == [14]  # what is committed is forgotten
    assert consumer._acked_index[T0] == {14}


def test_a_missing_head_record_blocks_the_commit() -> None:
    # Faust 0.15 accepted this (min(acked) - committed == 1) and committed 13,
    # skipping record 10 that nobody processed.
    _guard, consumer = make_guard(committed=10)
    acked(consumer, 11, 12)
    assert consumer._new_offset(T0) is None
    assert consumer._acked[T0] == [11, 12]


def test_a_commit_is_pending_only_once_the_record_at_it_was_acked() -> None:
    """What the watchdog asks before re-reading a partition whose commit has not
    moved: a processed record at the commit point means a slow commit, not a drop."""
    guard, consumer = make_guard(committed=10)
    assert not guard.commit_pending(T0)  # nothing acked
    assert not guard.acked_beyond(T0)
    acked(consumer, 11, 12)
    assert not guard.commit_pending(T0)  # record 10 missing: a drop, re-read it
    assert guard.acked_beyond(T0)
    acked(consumer, 10)
    assert guard.commit_pending(T0)
    assert consumer._new_offset(T0) == 13
    assert not guard.commit_pending(T0)  # committed: waits for record 13 again


def test_a_suspected_gap_is_never_committed() -> None:
    guard, consumer = make_guard(committed=10)
    asyncio.run(consumer._add_gap(T0, 10, 15))
    acked(consumer, 15, 16)
    assert consumer._new_offset(T0) is None
    assert guard.suspected[T0] == {10}
    assert guard.counters.gaps_suspected == 1


def test_a_confirmed_empty_range_is_committed_past() -> None:
    guard, consumer = make_guard(committed=10)
    acked(consumer, 10, 13, 14)
    guard.confirm_empty(T0, 11, 13)
    assert consumer._new_offset(T0) == 15
    assert not guard.suspected[T0]
    assert guard.empty[T0] == []


def test_an_empty_range_alone_moves_the_commit() -> None:
    guard, consumer = make_guard(committed=10)
    guard.confirm_empty(T0, 10, 12)
    assert consumer._new_offset(T0) == 12


def test_redelivered_duplicates_below_the_commit_are_dropped() -> None:
    _guard, consumer = make_guard(committed=10)
    acked(consumer, 8, 9, 10)
    assert consumer._new_offset(T0) == 11
    assert consumer._acked[T0] == []


def test_no_commit_means_offset_zero() -> None:
    _guard, consumer = make_guard(committed=None)
    acked(consumer, 1, 2)
    assert consumer._new_offset(T0) is None  # record 0 not processed
    acked(consumer, 0)
    assert consumer._new_offset(T0) == 3


def test_acks_refused_while_paused_or_from_an_old_generation() -> None:
    guard, consumer = make_guard(committed=10)
    old = message(10, generation=2)
    consumer._unacked_messages.add(old)
    assert consumer.ack(old) is False
    assert old.acked and old not in consumer._unacked_messages
    guard.app.flow_control.active = False
    assert consumer.ack(message(11)) is False
    assert consumer._acked[T0] == []
    assert guard.counters.acks_refused == 2
    guard.app.flow_control.active = True
    assert consumer.ack(message(10)) is True
    assert consumer._new_offset(T0) == 11


def test_stream_partitions_resume_only_after_the_seek() -> None:
    guard, consumer = make_guard()
    consumer.resume_partitions({T0, CHANGELOG})
    assert consumer.resumed == [{CHANGELOG}]  # the changelog is read during recovery
    asyncio.run(consumer.perform_seek())
    assert consumer.seeks == ["all"]
    assert consumer.resumed == [{CHANGELOG}, {T0}]
    assert guard.pending_resume == set()


def test_reseek_pauses_seeks_to_the_committed_offset_and_resumes() -> None:
    guard, consumer = make_guard(committed=42)
    consumer._buffered_partitions.add(T0)
    assert asyncio.run(guard.reseek(T0)) == 42
    assert T0 in consumer.paused and T0 not in consumer._buffered_partitions
    assert consumer.seeks == [{T0: 42}]
    assert consumer._read_offset[T0] == 42
    assert consumer.resumed == [{T0}]
    assert guard.counters.reseeks == 1
