"""Batches of events from a Faust stream, acked by the caller (like ``noack_take``).

Faust's ``Stream.noack_take(max_, within)`` wakes up every ``within`` seconds
and yields what has arrived: an idle worker's agents poll hundreds of times a
second (with ``within`` of a few milliseconds, two tasks and two futures per
wake-up), and an event that arrives just after a wake-up waits a whole
``within`` for the next one.

``take_batches`` waits for the first event without a timer and yields as soon
as nothing more is queued on the stream's channel (everything a fetch
delivered is in the batch), the batch is full, or, with ``linger``, that long
after the queue emptied. Under load the batches grow by themselves: the events
that arrive while one batch is processed make the next.

As with ``noack_take``, the stream does not ack: the caller acks each event of
a batch once its effects are durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: While a batch is partly filled and more events are queued, how often to check
#: that the queue was not emptied under it (see ``take_batches``).
STRANDED_CHECK_S = 0.05


def weighted_runs(items: Iterable[T], weight: Callable[[T], int], limit: int
                  ) -> Iterator[list[T]]:
    """Consecutive runs of ``items`` whose weights sum to at most ``limit`` (an
    item heavier than ``limit`` makes a run of its own), in order, nothing split
    or dropped. Lazy: ``items`` is read only as far as the run being yielded and
    the first item of the next, so a batch of messages decoded on the way in
    holds one run's decoded interactions at a time, not the whole batch's."""
    run: list[T] = []
    total = 0
    for item in items:
        w = weight(item)
        if run and total + w > limit:
            yield run
            run, total = [], 0
        run.append(item)
        total += w
    if run:
        yield run


async def take_batches(stream: Any, max_: int, *, linger: float = 0.0
                       ) -> AsyncIterator[list[Any]]:
    """Yield lists of at most ``max_`` events (``faust.Event``) from ``stream``."""
    events: list[Any] = []
    ready = asyncio.Event()  # a batch can go: the queue is drained, or it is full
    full = asyncio.Event()
    consumed = asyncio.Event()
    started = asyncio.Event()  # the batch has its first event
    consuming: asyncio.Future[None] | None = None
    queue_empty = stream.channel.queue.empty

    async def add(value: Any) -> Any:
        # A processor: the stream runs it for each event in the background.
        nonlocal consuming
        try:
            if consuming is not None:  # a batch is being handled: wait for it
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("batch: the stream has no current event")
            events.append(event)
            started.set()
            if len(events) >= max_:
                full.set()
                ready.set()
                consumed.clear()
                await stream.wait(consumed)  # never more than max_ per batch
            elif queue_empty():
                ready.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("error adding to a batch: %r", exc)
            await stream.crash(exc)
        return value

    saved_acks = stream.enable_acks
    stream.enable_acks = False  # the caller acks
    stream.add_processor(add)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not events:
                await stream.wait_for_stopped(started)
            while not ready.is_set() and not stream.should_stop:
                await stream.wait_for_stopped(ready, timeout=STRANDED_CHECK_S)
                if not ready.is_set() and queue_empty():
                    # The queue emptied without another event reaching ``add``:
                    # Faust clears the channels' queues when it stops and when
                    # partitions are revoked. The events taken go now, or their
                    # messages would never be acked (a shutdown would wait forever).
                    break
            if linger > 0 and events and not full.is_set():
                await stream.wait_for_stopped(full, timeout=linger)
            if not events:
                continue
            consuming = asyncio.get_running_loop().create_future()
            try:
                yield list(events)
            finally:
                events.clear()
                started.clear()
                ready.clear()
                full.clear()
                if consuming is not None and not consuming.done():
                    consuming.set_result(None)
                consumed.set()
    finally:
        stream.enable_acks = saved_acks
        stream._processors.remove(add)
