"""Make Faust's offset bookkeeping safe: a committed offset never passes a record
that was not processed.

Faust 0.15.3 (with aiokafka 0.14) can commit past records nobody processed. Seen
here (``tests/e2e/test_operations.py``, SIGTERM restart): after a rebalance,
table recovery *resumes* the stream partitions and only then seeks them to their
committed offsets; records fetched in between are delivered, the seek moves the
fetch position back, and the consumer's read-offset bookkeeping ends up both
dropping records ("DROPPED MESSAGE ROFF") and jumping over others. A jump is
treated as a gap in the log (as left by compaction or transaction markers) and
*marked acked*, so the commit moves past records that were never delivered: 52
events lost in one run. Its head-of-queue check also tolerates one missing
record (``min(acked) - committed > 1``).

This module replaces those pieces on the app's consumer instance:

* **acks** (:func:`ack`): never mark a record committable while flow control is
  paused or when it comes from an older group generation (Faust "skips" those by
  acking them; our own acks come only after processing).
* **commit position** (:meth:`OffsetGuard.new_offset`): walk up from the committed
  offset over acked records and over gaps *proven* empty; anything else stops it.
* **gaps** (:meth:`OffsetGuard.add_gap`): a jump in the offsets is only a
  suspicion. The commit moves past it only once the broker confirms that the
  range holds no records (:func:`first_offsets_from`, asked by the watchdog).
* **resume after recovery** (:meth:`OffsetGuard.resume_partitions`): stream
  partitions stay paused until the seek to the committed offsets is done, so
  nothing is delivered from the old position.
* **re-read** (:meth:`OffsetGuard.reseek`): the watchdog's way to unstick a
  partition whose commit waits on a record that was dropped: pause, seek back to
  the committed offset, resume. Every effect is idempotent, so re-reading what
  was already applied changes nothing.

With these, every race in the consumer costs at most a redelivery or a short
stall that the watchdog (``worker.watchdog``) resolves, never a lost record.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger("worker.consumer")


@dataclass
class GuardCounters:
    gaps_suspected: int = 0
    gaps_confirmed: int = 0
    reseeks: int = 0
    acks_refused: int = 0


@dataclass
class OffsetGuard:
    """State and replacements for one app's consumer (see the module doc)."""

    app: Any
    counters: GuardCounters = field(default_factory=GuardCounters)
    #: tp -> proven-empty offset ranges [start, end), sorted by start
    empty: dict[Any, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    #: tp -> first offsets of suspected gaps (jumps the consumer reported)
    suspected: dict[Any, set[int]] = field(default_factory=lambda: defaultdict(set))
    #: stream partitions whose resume waits for the seek to committed offsets
    pending_resume: set[Any] = field(default_factory=set)

    # -- install -------------------------------------------------------------

    def install(self) -> None:
        consumer = self.app.consumer
        self._orig_ack = consumer.ack
        self._orig_resume = consumer.resume_partitions
        self._orig_perform_seek = consumer.perform_seek
        consumer.ack = self.ack
        consumer._new_offset = self.new_offset
        consumer._add_gap = self.add_gap
        consumer.resume_partitions = self.resume_partitions
        consumer.perform_seek = self.perform_seek

    @property
    def consumer(self) -> Any:
        return self.app.consumer

    # -- acks ----------------------------------------------------------------

    def ack(self, message: Any) -> bool:
        app = self.app
        if not app.flow_control.is_active() or (
            message.generation_id is not None
            and message.generation_id != app.consumer_generation_id
        ):
            # Done with as far as shutdown's wait_empty is concerned, but its
            # offset is not marked committable (that is what Consumer.ack adds):
            # it is fetched again from the committed offset.
            if not message.acked:
                self.counters.acks_refused += 1
            message.acked = True
            self.consumer._unacked_messages.discard(message)
            return False
        return bool(self._orig_ack(message))

    # -- commit position -----------------------------------------------------

    def start_offset(self, tp: Any) -> int:
        """The committed offset (Kafka's: the next record to process).

        Faust keeps ``None`` for "no commit" and for 0 alike, so ``None`` means 0
        here. Where the log starts later (retention), the commit waits at 0 until
        the watchdog has the broker confirm the range below the first record empty.
        """
        committed = self.consumer._committed_offset.get(tp)
        return int(committed) if committed is not None else 0

    def commit_pending(self, tp: Any) -> bool:
        """Whether the record at the committed offset has been acked: the partition
        made progress and the next commit moves past it (a dropped record is
        never acked, so its commit waits with this False)."""
        acked = self.consumer._acked_index.get(tp)
        return bool(acked) and self.start_offset(tp) in acked

    def acked_beyond(self, tp: Any) -> bool:
        """Whether a record after the committed offset has been acked (with the
        record at it not acked: the sign of a dropped record)."""
        start = self.start_offset(tp)
        return any(o > start for o in self.consumer._acked_index.get(tp) or ())

    def new_offset(self, tp: Any) -> int | None:
        """The offset to commit for ``tp``: the committed offset, advanced over
        acked records and proven-empty ranges only; ``None`` if it cannot move."""
        consumer = self.consumer
        acked: list[int] = consumer._acked[tp]
        start = self.start_offset(tp)
        empty = self.empty.get(tp) or []
        if not acked and not empty:
            return None
        acked.sort()
        nxt = start
        i = 0
        j = 0
        while True:
            if i < len(acked) and acked[i] < nxt:
                i += 1  # already covered (a redelivered duplicate)
            elif i < len(acked) and acked[i] == nxt:
                nxt += 1
                i += 1
            else:
                while j < len(empty) and empty[j][1] <= nxt:
                    j += 1
                if j < len(empty) and empty[j][0] <= nxt < empty[j][1]:
                    nxt = empty[j][1]
                    j += 1
                else:
                    break
        if i:
            consumer._acked_index[tp].difference_update(acked[:i])
            del acked[:i]
        if j:
            del empty[:j]
        return nxt if nxt > start else None

    # -- gaps ------------------------------------------------------------------

    async def add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Faust read offset ``offset_to`` right after ``offset_from - 1``: only a
        suspicion (it also happens when Faust dropped the records in between);
        the watchdog checks with the broker once the commit reaches it."""
        if offset_from >= offset_to:
            return
        self.counters.gaps_suspected += 1
        self.suspected[tp].add(offset_from)
        log.info("the consumer jumped over offsets %d..%d of %s:%d; not committed until "
                 "the broker confirms they hold no records", offset_from, offset_to - 1,
                 tp.topic, tp.partition)

    def confirm_empty(self, tp: Any, start: int, end: int) -> None:
        """The broker's first record at or after ``start`` is ``end``: nothing to
        process in between (transaction markers, compaction)."""
        bisect.insort(self.empty[tp], (start, end))
        self.suspected[tp].discard(start)
        self.counters.gaps_confirmed += 1
        log.info("offsets %d..%d of %s:%d hold no records; the commit moves past them",
                 start, end - 1, tp.topic, tp.partition)

    # -- resume only after the seek ------------------------------------------

    def _is_stream(self, tp: Any) -> bool:
        try:
            changelogs = self.app.tables.changelog_topics
        except Exception:
            changelogs = set()
        return tp.topic not in changelogs

    def resume_partitions(self, tps: Any) -> None:
        """Faust's recovery resumes the stream partitions and then seeks them to
        their committed offsets; resume them only once that seek is done."""
        tps = set(tps)
        stream = {tp for tp in tps if self._is_stream(tp)}
        if stream:
            self.pending_resume |= stream
        rest = tps - stream
        if rest:
            self._orig_resume(rest)

    async def perform_seek(self) -> None:
        try:
            await self._orig_perform_seek()
        finally:
            self.release_pending()

    def release_pending(self) -> None:
        pending, self.pending_resume = self.pending_resume, set()
        try:
            assigned = self.consumer.assignment()
        except Exception:
            assigned = pending
        tps = {tp for tp in pending if tp in assigned}
        if tps:
            self._orig_resume(tps)

    # -- re-read ---------------------------------------------------------------

    async def reseek(self, tp: Any) -> int:
        """Re-read ``tp`` from its committed offset; returns that offset."""
        consumer = self.consumer
        offset = self.start_offset(tp)
        consumer.pause_partitions([tp])
        consumer._buffered_partitions.discard(tp)
        try:
            await consumer._thread.seek_wait({tp: offset})
        finally:
            consumer._read_offset[tp] = offset or None
            self.counters.reseeks += 1
            self._orig_resume([tp])
        return offset


def install_offset_guard(app: Any) -> OffsetGuard:
    guard = OffsetGuard(app)
    guard.install()
    return guard


async def first_offsets_from(bootstrap: list[str], kafka_options: dict[str, Any], tp: Any,
                             offsets: list[int], *, timeout_s: float = 5.0) -> dict[int, int]:
    """Ask the broker directly (a group-less consumer) for the offset of the first
    record at or after each of ``offsets`` in ``tp``: more than the offset proves
    the range in between empty. Offsets it cannot tell within ``timeout_s`` are
    left out."""
    ktp = TopicPartition(tp.topic, tp.partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", **kafka_options)
    await consumer.start()
    out: dict[int, int] = {}
    try:
        consumer.assign([ktp])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for offset in sorted(set(offsets)):
            consumer.seek(ktp, offset)
            while loop.time() < deadline:
                batch = await consumer.getmany(ktp, timeout_ms=500, max_records=1)
                records = batch.get(ktp) or []
                if records:
                    out[offset] = int(records[0].offset)
                    break
                position = await consumer.position(ktp)
                if position > offset:  # only control records up to the log end
                    out[offset] = int(position)
                    break
        return out
    finally:
        await consumer.stop()
