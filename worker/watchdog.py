"""Unstick a partition whose commit cannot move.

The consumer guard (``worker.consumer_guard``) never commits past a record that
was not processed. When Faust drops a fetched record (around a rebalance, a
pause or a seek), or jumps over offsets, the committed offset of that partition
stops moving while records wait. This timer notices a partition whose committed
offset has not moved for ``STALL_RESEEK_S`` while it has lag, the record at that
offset has not been processed and no record of the partition waits in the worker
(sooner, after one second, when the consumer reported a jump at the head) and
asks the broker
for the first record at that offset: if there is none up to the next record
(transaction markers, compaction), the commit moves past the range; otherwise
the partition is re-read from the committed offset. Every effect is
idempotent, so re-reading what was already applied changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from worker.consumer_guard import first_offsets_from
from worker.kafka_patches import nudge_stuck_producer
from worker.ops import consumer_state, watched_topics

if TYPE_CHECKING:
    from worker.app import RecsysApp

log = logging.getLogger("worker.watchdog")

#: How long the commit may wait at a suspected jump before the partition is re-read.
SUSPECTED_GAP_WAIT_S = 1.0
#: A producer batch waiting this long with no request in flight wakes the sender.
PRODUCER_STUCK_S = 3.0


def register_watchdog(app: RecsysApp) -> None:
    from worker.app import kafka_options

    after = app.settings.stall_reseek_s
    if after <= 0:
        return
    since: dict[Any, tuple[int, float]] = {}  # tp -> (committed offset, unchanged since)

    @app.timer(interval=min(max(after / 4, 0.25), SUSPECTED_GAP_WAIT_S / 2))
    async def unstick() -> None:
        nudge_producer()
        consumer = getattr(app, "_consumer", None)
        guard = getattr(app, "offset_guard", None)
        if (consumer is None or guard is None or not app.flow_control.is_active()
                or app.retry_state.failing is not None or app.rebalancing
                or getattr(app, "in_recovery", False)):
            since.clear()
            return
        topics = watched_topics(app)
        now = time.monotonic()
        for tp in list(consumer.assignment()):
            if tp.topic not in topics:
                continue
            committed = guard.start_offset(tp)
            suspected = guard.suspected.get(tp)
            if suspected:
                for offset in [o for o in suspected if o < committed]:
                    suspected.discard(offset)  # re-delivered meanwhile
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not known yet
                highwater = None
            if highwater is None or highwater <= committed:
                since.pop(tp, None)
                continue
            seen = since.get(tp)
            if seen is None or seen[0] != committed:
                since[tp] = (committed, now)
                continue
            wait = SUSPECTED_GAP_WAIT_S if suspected else after
            if now - seen[1] < wait:
                continue
            if guard.commit_pending(tp) or (not guard.acked_beyond(tp)
                                            and waiting_in_worker(consumer, tp)):
                # Not a stall: under a long backlog the commit itself can lag, or
                # the partition's records wait in the stream's queue, for longer
                # than ``after``. Re-reading them then only adds work (a 1M-event
                # replay re-read each partition every few seconds). A later record
                # acked while the one at the commit is not is a drop: re-read.
                since[tp] = (committed, now)
                continue
            await unstick_partition(tp, committed, highwater, now - seen[1])
            since[tp] = (committed, time.monotonic())

    def waiting_in_worker(consumer: Any, tp: Any) -> bool:
        """Whether a record of ``tp`` waits in a stream's queue (fetched, not yet
        taken by its agent) or in an agent's hands (taken, not yet acked). Faust
        internals: the conductor's channels per topic, and the consumer's unacked
        messages; if they change, this says False and the watchdog acts as before."""
        try:
            if any(m.tp == tp for m in list(consumer._unacked_messages)):
                return True
            for chan in list(app.topics._topic_name_index.get(tp.topic, ())):
                if any(ev.message.tp == tp for ev in list(chan.queue._queue)):
                    return True
        except Exception as exc:
            log.debug("cannot inspect the stream queues: %r", exc)
        return False

    def nudge_producer() -> None:
        try:
            producer = app.producer._ensure_producer()
        except Exception:  # not started yet
            return
        try:
            seen = nudge_stuck_producer(producer, PRODUCER_STUCK_S)
        except Exception as exc:  # internals changed: never break the watchdog
            log.debug("cannot inspect the Kafka producer: %r", exc)
            return
        if seen is not None:
            app.stats.producer_nudges += 1
            log.warning("Kafka producer: batches waiting over %gs with nothing in flight; "
                        "woke its sender: %s", PRODUCER_STUCK_S, seen)

    async def unstick_partition(tp: Any, committed: int, highwater: int, idle: float) -> None:
        guard = app.offset_guard
        wanted = [committed, *sorted(o for o in guard.suspected.get(tp, ()) if o > committed)]
        try:
            first = await first_offsets_from(app.settings.bootstrap_servers,
                                             kafka_options(app.settings), tp, wanted[:100])
        except Exception as exc:  # broker unreachable: try again next time
            log.warning("partition %s:%d: cannot ask the broker about offset %d: %r",
                        tp.topic, tp.partition, committed, exc)
            return
        for offset, nxt in first.items():
            if nxt > offset:
                guard.confirm_empty(tp, offset, nxt)
            else:  # records are there: a real drop; the re-read below covers it
                guard.suspected.get(tp, set()).discard(offset)
        if first.get(committed, committed) > committed:
            return
        state = consumer_state(app).get(f"{tp.topic}:{tp.partition}")
        log.warning("partition %s:%d: commit waits at offset %d (lag %d, no progress "
                    "for %.1fs): re-reading from there", tp.topic, tp.partition,
                    committed, highwater - committed, idle)
        log.info("partition %s:%d consumer state before the re-read: %s", tp.topic,
                 tp.partition, state)
        await guard.reseek(tp)
