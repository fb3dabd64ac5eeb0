"""Fixes for two aiokafka 0.14 metadata defects, a Faust consumer setting made
configurable (:func:`patch_consumer_fetch`), a cheaper record delivery in
Faust's fetch loop (:func:`patch_consumer_delivery`) and a consumer that runs on
the app's own loop (:func:`patch_consumer_in_loop`), applied when the app is built.

**Untracked topics** (:func:`patch_track_sent_topics`). A client starts with an
empty topic list, which means "fetch metadata for every topic". A producer that
sends to a topic already in that first full fetch does not add it to the list
(``_wait_on_metadata`` returns early). As soon as any other topic is added, the
list is no longer empty, metadata is fetched for the listed topics only, and the
cluster map is replaced: the untracked topic disappears from it. A batch already
queued for it then has no known leader and waits for its delivery timeout (20
minutes under Faust), with no new send to the topic to bring it back. Seen in
the failover scenario: the second worker's first repartition batch waited with
``leader=None`` for 90 s (watchdog log), so its ingest agent, its table writes,
its commits and the next rebalance all hung. Now every topic the client sends to
is tracked.

**Lost wake-up** (:func:`patch_metadata_wakeup`).

``AIOKafkaClient._md_synchronizer`` wakes up on ``_md_update_waiter`` or every
``metadata_max_age_ms``. When it woke up on that timer and the tracked topics
changed while it was fetching metadata (a producer sending to a topic for the
first time adds it), it loops back to wait on the *same, still pending* waiter
without resolving the update future. ``force_metadata_update()`` then sees an
update "in progress", does not wake the waiter, and returns that future: every
caller (the producer's sender waiting for a partition leader, ``send()``
waiting for a new topic) waits until the timer fires again, minutes later.

A consumer replaces its topic list on subscription changes, so it can hit this.
The fix wakes the synchronizer whenever an update is forced.
"""

from __future__ import annotations

from typing import Any

_MARK = "_recsys_wakes_synchronizer"


def patch_track_sent_topics() -> None:
    """Make ``AIOKafkaClient._wait_on_metadata`` track every topic it is asked about."""
    from aiokafka.client import AIOKafkaClient

    original = AIOKafkaClient._wait_on_metadata
    if getattr(original, _MARK, False):
        return

    async def _wait_on_metadata(self: Any, topic: str) -> Any:
        if topic not in self._topics:
            self.add_topic(topic)  # keeps it in every later metadata fetch
        return await original(self, topic)

    setattr(_wait_on_metadata, _MARK, True)
    AIOKafkaClient._wait_on_metadata = _wait_on_metadata  # type: ignore[method-assign]


def apply_all() -> None:
    patch_track_sent_topics()
    patch_metadata_wakeup()
    patch_consumer_fetch()
    patch_consumer_delivery()
    patch_consumer_in_loop()


class _Resume:
    """Awaitable that drives a coroutine already advanced to its first suspension
    (``yielded`` is what it yielded) to the end: it hands ``yielded`` up to the
    task awaiting it, then passes what that task sends or throws back in, as
    ``await`` itself would have (cancellation included)."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Any, yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Any:
        coro, out = self.coro, self.yielded
        while True:
            try:
                sent = yield out
            except BaseException as exc:  # thrown in by the task (a cancel)
                try:
                    out = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                out = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def patch_consumer_delivery() -> None:
    """Deliver a fetched record without four tasks when nothing blocks it.

    Faust's fetch loop (``Consumer._drain_messages``) hands every record to the
    streams with ``await self.wait_first(callback(message),
    self.suspend_flow.wait())``: a task for the delivery, one for the flow
    event, one each for the consumer's stopped and crashed events, then
    ``asyncio.wait`` and the cancellation of the losers. That is most of what
    Faust itself costs per record (py-spy of an agent that only acks: about a
    fifth of the main thread). The delivery almost never waits (it waits when a
    stream's queue is full, or flow is suspended for a rebalance).

    Now the delivery is first run inline, up to its first wait. If it finishes
    there, that is the answer (the flow event's coroutine is closed unawaited).
    If it has to wait, the rest of it races the flow event, stop and crash in
    Faust's own ``wait_first``, exactly as before. When the flow is already
    suspended, or the consumer stopped or crashed, Faust's path runs untouched.
    Only that call site is affected: the consumer is the only caller of its
    ``wait_first`` with two coroutines (the recovery service has its own).
    """
    import inspect

    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    original = Consumer.wait_first
    if getattr(original, _MARK, False):
        return

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if (timeout is not None or len(coros) != 2
                or not (inspect.iscoroutine(coros[0]) and inspect.iscoroutine(coros[1]))
                or self.suspend_flow.is_set() or self._stopped.is_set()
                or self._crashed.is_set()):
            return await original(self, *coros, timeout=timeout)
        delivery, flow = coros
        try:
            yielded = delivery.send(None)
        except StopIteration as stop:
            flow.close()
            return WaitResults([delivery], [stop.value], False)
        except BaseException:
            flow.close()
            raise
        return await original(self, _Resume(delivery, yielded), flow)

    setattr(wait_first, _MARK, True)
    Consumer.wait_first = wait_first  # type: ignore[method-assign]


def patch_consumer_fetch() -> None:
    """Let an app choose its worker consumer's ``fetch_min_bytes`` and
    ``fetch_max_wait_ms`` (Faust hard-codes 1 byte and 1,500 ms).

    With one byte, every record that trickles in ends a fetch: under live traffic
    the fetch path takes a fifth of the worker's CPU (py-spy, 1,000 events/s).
    An app with ``fetch_tuning = (min_bytes, max_wait_ms)`` gets those instead: the
    broker answers when that many bytes are ready or that much time has passed.
    (More bytes also make a fetch of a nearly idle partition wait: measured, it
    cost backlog throughput, so the worker's defaults stay Faust's.)
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, _MARK, False):
        return

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        tuning = getattr(self.app, "fetch_tuning", None)
        if tuning is not None:
            consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = tuning
        return consumer

    setattr(_create_worker_consumer, _MARK, True)
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer


def patch_metadata_wakeup() -> None:
    """Make ``AIOKafkaClient.force_metadata_update`` always wake the synchronizer."""
    from aiokafka.client import AIOKafkaClient

    original = AIOKafkaClient.force_metadata_update
    if getattr(original, _MARK, False):
        return

    def force_metadata_update(self: Any) -> Any:
        fut = original(self)
        waiter = self._md_update_waiter
        if not waiter.done():
            waiter.set_result(None)
        return fut

    setattr(force_metadata_update, _MARK, True)
    force_metadata_update.__doc__ = original.__doc__
    AIOKafkaClient.force_metadata_update = force_metadata_update  # type: ignore[method-assign]


def producer_state(producer: Any) -> dict[str, Any]:
    """What an aiokafka producer's sender is doing (for logs): nodes with a request
    in flight, muted partitions, and per waiting partition its batch count, the
    oldest batch's age and the leader the client knows."""
    import time

    sender = producer._sender
    client = producer.client
    waiting = {}
    for tp, queue in producer._message_accumulator._batches.items():
        if queue:
            waiting[f"{tp.topic}:{tp.partition}"] = {
                "batches": len(queue),
                "age_s": round(time.monotonic() - queue[0]._ctime, 1),
                "leader": client.cluster.leader_for_partition(tp),
            }
    return {
        "in_flight": sorted(sender._in_flight),
        "muted": sorted(str(tp) for tp in sender._muted_partitions),
        "waiting": waiting,
        "metadata_update_pending": client._md_update_fut is not None,
        "synchronizer_woken": client._md_update_waiter.done(),
    }


def nudge_stuck_producer(producer: Any, older_than_s: float) -> dict[str, Any] | None:
    """If batches have waited longer than ``older_than_s`` with no request in
    flight, wake the sender and force a metadata update; returns the state it saw
    (``None`` when nothing was stuck). The sender normally wakes on new data, a
    finished request or a metadata update; a batch left waiting with none of
    these pending would otherwise wait for its delivery timeout."""
    state = producer_state(producer)
    stuck = [w for w in state["waiting"].values() if w["age_s"] > older_than_s]
    if not stuck or state["in_flight"]:
        return None
    producer.client.force_metadata_update()
    acc = producer._message_accumulator
    if not acc._waiter_future.done():
        acc._waiter_future.set_result(None)
    return state


class _InLoopWorker:
    """Stands in for mode's ``WorkerThread``: runs a ``ServiceThread``'s body as a
    task on the loop that started it instead of in a thread with its own loop."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.task: Any = None

    def start(self) -> None:
        self.task = self.service.parent_loop.create_task(self.service._serve())

    def stop(self) -> None:
        """Nothing to join: the task ends by itself once the service stopped."""

    def is_alive(self) -> bool:
        return self.task is not None and not self.task.done()


def patch_consumer_in_loop() -> None:
    """Let an app run its Kafka consumer on the app's event loop
    (``app.consumer_in_loop``) instead of in a thread of its own.

    Faust runs the aiokafka consumer in a ``ServiceThread``: a second thread
    with its own loop. Every fetch is a round trip between the threads (the
    app's loop queues the call, the thread's loop runs it and hands the records
    back), and the two threads take turns on the GIL: in a py-spy at 1,000
    events/s a fifth of the main thread's samples were socket writes waiting to
    get the GIL back. Measured with ``bench_perf.py`` (30 s passes, same state):
    freshness at 1,000 events/s p50/p99 35.2/71.6 ms in the thread, 16.0/42.3 ms
    on the loop; requests at 100/s 7.3/22.6 vs 6.3/13.0 ms, for less CPU.

    Everything Faust's consumer does across the threads is awaiting futures, so
    it runs the same on one loop: the thread's body (``ServiceThread._serve``)
    becomes a task of the app's loop, calls into the "thread" are plain awaits,
    and the rebalance callbacks still go through the consumer's method queue.
    Two parts of the thread machinery cannot run on a shared loop and are
    replaced: the thread itself (``_InLoopWorker``) and the sweep that cancels
    every task left on the thread's loop when it stops (here the app's tasks).

    What Faust wanted the thread for: a busy loop cannot starve the consumer's
    heartbeats. The worker's agents work in bounded batches (a few ms to tens of
    ms); under Faust's settings a heartbeat is due every 3 s and a member is
    dropped after a 60 s session timeout.
    ``CONSUMER_THREAD=true`` brings the thread back.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer
    from mode.utils.futures import maybe_async

    original = Consumer._new_consumer_thread
    if getattr(original, _MARK, False):
        return

    class InLoopConsumerThread(AIOKafkaConsumerThread):
        Worker = _InLoopWorker  # type: ignore[assignment]

        async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
            return await maybe_async(fun(*args, **kwargs))

        async def _gather_remaining_tasks(self) -> None:
            """The thread's sweep would cancel every task of its loop: here that
            is the app's loop. The aiokafka consumer's own tasks end with it."""

    def _new_consumer_thread(self: Any) -> Any:
        if getattr(self.app, "consumer_in_loop", False):
            return InLoopConsumerThread(self, loop=self.loop, thread_loop=self.loop,
                                        beacon=self.beacon)
        return original(self)

    setattr(_new_consumer_thread, _MARK, True)
    Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
