"""Unstick a partition that has lag but makes no progress.

Faust (0.15) can drop records it fetched around a rebalance or a pause without
handing them to the agent; the worker refuses to ack those (see
``worker.app.guard_acks``), so they are not lost, but the consumer's fetch
position is already past them and the committed offset stays stuck: the
partition stalls until the next rebalance. This timer notices a partition whose
committed offset has not moved for ``STALL_RESEEK_S`` while records wait, and
seeks it back to the committed offset so the records are read again. Every
effect is idempotent, so re-reading what was already applied changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from worker.ops import watched_topics

if TYPE_CHECKING:
    from worker.app import RecsysApp

log = logging.getLogger("worker.watchdog")


def register_watchdog(app: RecsysApp) -> None:
    after = app.settings.stall_reseek_s
    if after <= 0:
        return
    since: dict[Any, tuple[int, float]] = {}  # tp -> (committed offset, unchanged since)

    @app.timer(interval=max(after / 4, 0.5))
    async def unstick() -> None:
        consumer = getattr(app, "_consumer", None)
        if (consumer is None or not app.flow_control.is_active()
                or app.retry_state.failing is not None or app.rebalancing):
            since.clear()
            return
        topics = watched_topics(app)
        committed_map = getattr(consumer, "_committed_offset", {})
        now = time.monotonic()
        for tp in list(consumer.assignment()):
            if tp.topic not in topics:
                continue
            committed = committed_map.get(tp)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # not known yet
                highwater = None
            if committed is None or highwater is None or highwater <= committed:
                since.pop(tp, None)
                continue
            seen = since.get(tp)
            if seen is None or seen[0] != committed:
                since[tp] = (committed, now)
                continue
            if now - seen[1] >= after:
                log.warning("partition %s:%d has lag %d and no progress for %.0fs: "
                            "re-reading from committed offset %d", tp.topic, tp.partition,
                            highwater - committed, now - seen[1], committed)
                app.stats.reseeks += 1
                await consumer.seek(tp, committed)
                since[tp] = (committed, now)
