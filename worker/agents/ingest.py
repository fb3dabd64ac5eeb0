"""Ingest: raw RudderStack records -> dead letters | per-user interactions -> stores.

Two agents, because per-user state must be owned by the worker that owns the user:

* ``ingest`` reads the raw events topic in batches, normalises, dead-letters what
  is unusable, and forwards interactions to the ``<app>-interactions`` topic,
  one message per destination partition (murmur2 of the user id, the same
  partition as the signals table and the requests keyed by that user).
* ``apply`` reads those messages and runs the idempotent ingest pipeline, then
  writes each touched user's signals into the table.

When the events topic has the table's partition count, Faust assigns its
partition ``p`` to the worker that owns the table's partition ``p`` (same
count, same subscribers: one co-partitioned group), so a record keyed by its
user id is already where its user's state is. The ingest agent then applies
those interactions itself (``DIRECT_APPLY``) and forwards only the others: no
repartition message, no second consumer hop. Within a raw partition a user's
interactions all take the same path, so their order is kept; across raw
partitions there never was an order. The two agents never apply at the same
time on a worker (one lock), so a user's signals are saved in the order its
interactions were applied.

Both ack a record only after its effects are durable (``noack`` streams), and
retry transient failures without moving on, so nothing is lost or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from worker.batching import take_batches, weighted_runs
from worker.logs import user_ref
from worker.pipeline import (
    DeadLetter,
    conflict_dead_letter,
    dead_letter_headers,
    decode_interactions,
    encode_interactions,
    group_by_partition,
    parse_batch,
    user_partition,
)
from worker.recsys_core.errors import StoreError, TransientStoreError
from worker.retry import RetryState, retry_forever
from worker.stats import Stats
from worker.table_writes import write_table_batch
from worker.topics import is_sentinel

if TYPE_CHECKING:
    from worker.app import RecsysApp

log = logging.getLogger("worker.ingest")

#: Repartition messages stay well under Faust's producer limit (1,000,000 bytes).
MAX_INTERACTIONS_MESSAGE_BYTES = 256 * 1024
#: Parsed ingest batches waiting for the ingest agent's own apply (see ``ingest``).
DIRECT_QUEUE_BATCHES = 16
#: Dead letters keep at most this much of the original record (x-dlq-truncated says).
DLQ_MAX_VALUE_BYTES = 512 * 1024
DLQ_MAX_KEY_BYTES = 1024


def encode_bounded(events: list[Any], limit: int = MAX_INTERACTIONS_MESSAGE_BYTES) -> list[bytes]:
    """Encode one partition's interactions as one or more messages of at most ``limit``.

    One valid 256 KiB order can fan out to thousands of line items (~2 MB encoded):
    a single message that large fails with MessageSizeTooLarge, a KafkaError that
    the send retry would repeat forever, stalling the partition. Halving keeps the
    order of events within the partition.
    """
    payload = encode_interactions(events)
    if len(payload) <= limit or len(events) <= 1:
        return [payload]
    mid = len(events) // 2
    return encode_bounded(events[:mid], limit) + encode_bounded(events[mid:], limit)


def register_ingest(app: RecsysApp, table: Any) -> None:
    s = app.settings
    svc = app.services
    stats: Stats = app.stats
    retry: RetryState = app.retry_state
    events_topic = app.topic(s.events_topic)
    dlq_topic = app.topic(s.dead_letter_topic)
    interactions_topic = app.topic(
        f"{s.app_id}-interactions", partitions=s.topic_partitions, internal=True
    )

    async def send_all(sends: list[Callable[[], Awaitable[Any]]]) -> None:
        """Send and wait for delivery; a broker hiccup is retried (dupes are harmless)."""

        async def attempt() -> None:
            try:
                futs = [await send() for send in sends]
                for fut in futs:
                    await fut
            except KafkaError as exc:
                raise TransientStoreError(f"kafka send failed: {exc}") from exc

        if sends:
            await retry_forever(attempt, retry, max_backoff=s.retry_max_backoff_s)

    def dead_letter_send(dl: DeadLetter) -> Callable[[], Awaitable[Any]]:
        stats.dead_lettered[dl.reason] += 1
        # A raw record can be as large as the broker allows (~1 MB), more than
        # Faust's producer accepts once headers are added: MessageSizeTooLarge is a
        # KafkaError, so the send would be retried forever and stall the partition.
        # Keep a bounded prefix and say how large the original was.
        key, value, headers = dl.key, dl.value, dead_letter_headers(dl)
        if len(value) > DLQ_MAX_VALUE_BYTES or (key and len(key) > DLQ_MAX_KEY_BYTES):
            headers.append(("x-dlq-truncated", f"{len(value)}".encode()))
            key = key[:DLQ_MAX_KEY_BYTES] if key else key
            value = value[:DLQ_MAX_VALUE_BYTES]
        return lambda: dlq_topic.send(key=key, value=value, headers=headers)

    interactions_name = interactions_topic.get_topic_name()
    apply_lock = asyncio.Lock()  # one apply at a time on this worker (see the docstring)

    def direct_apply() -> bool:
        """Whether the events topic is co-partitioned with the table in this
        generation's assignment: the leader's assignor put it in the group of the
        interactions topic (same partition count), and this worker has the same
        partitions of both."""
        if not s.direct_apply:
            return False
        assignor = app.assignor
        try:
            if (assignor.group_for_topic(s.events_topic)
                    != assignor.group_for_topic(interactions_name)):
                return False
        except KeyError:  # not assigned yet
            return False
        mine: dict[str, set[int]] = {s.events_topic: set(), interactions_name: set()}
        for tp in assignor.assigned_actives():
            if tp.topic in mine:
                mine[tp.topic].add(tp.partition)
        return mine[s.events_topic] == mine[interactions_name]

    @app.agent(events_topic, name="ingest")
    async def ingest(stream: Any) -> None:
        # A batch's own users are applied by a task of the agent (``apply_queued``),
        # so that the next batches are taken, parsed and forwarded while Redis
        # works, and so that under a backlog one apply takes several batches (up
        # to APPLY_MAX_INTERACTIONS): applied batch by batch in the agent's loop,
        # a backlog went 20 % slower than through the apply agent. Batches are
        # applied, and acked, in the order they came.
        queue: asyncio.Queue[tuple[list[Any], list[tuple[Any, list[Any]]]]] = \
            asyncio.Queue(maxsize=DIRECT_QUEUE_BATCHES)
        applier = asyncio.ensure_future(apply_queued(stream, queue))
        try:
            async for batch in take_batches(stream, s.batch_size,
                                            linger=s.batch_within_ms / 1000):
                with stats.timed("ingest"):
                    owned = await forward(batch)
                put = asyncio.ensure_future(queue.put((batch, owned)))
                await asyncio.wait({put, applier}, return_when=asyncio.FIRST_COMPLETED)
                if not put.done():  # the applier failed: fail the agent with its error
                    put.cancel()
                    applier.result()
                    raise RuntimeError("the ingest agent's applier stopped")
            await queue.join()  # the stream stopped: what was taken is applied and acked
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier

    async def apply_queued(stream: Any,
                           queue: asyncio.Queue[tuple[list[Any], list[tuple[Any, list[Any]]]]]
                           ) -> None:
        """Apply the queued batches' own users, as many batches at a time as are
        queued (up to APPLY_MAX_INTERACTIONS, in runs of at most that many, as the
        apply agent works), then ack every record of those batches."""
        limit = s.apply_max_interactions
        while True:
            items = [await queue.get()]
            n = sum(len(ies) for _, ies in items[0][1])
            while not queue.empty() and n < limit:
                items.append(queue.get_nowait())
                n += sum(len(ies) for _, ies in items[-1][1])
            pieces = [(ev, ies[i:i + limit]) for _, owned in items for ev, ies in owned
                      for i in range(0, len(ies), limit)]
            for run in weighted_runs(pieces, lambda m: len(m[1]), limit):
                await apply_owned(run)
            for batch, _ in items:
                for ev in batch:
                    await stream.ack(ev)
                queue.task_done()
            stats.progress()

    async def forward(batch: list[Any]) -> list[tuple[Any, list[Any]]]:
        """Normalise a batch, dead-letter what is unusable, forward the interactions
        of users whose partition their record is not on (all of them unless
        ``direct_apply()``), and return the others: ``(an event of partition p,
        the interactions of its users)`` per partition."""
        by_partition: dict[int, list[Any]] = {}
        for ev in batch:
            if not is_sentinel(ev.headers):
                by_partition.setdefault(ev.message.partition, []).append(ev)
        records = sum(len(evs) for evs in by_partition.values())
        stats.records_consumed += records
        direct = direct_apply()
        owned: list[tuple[Any, list[Any]]] = []
        forwarded: list[Any] = []
        dead_letters: list[DeadLetter] = []
        with stats.timed("ingest", "parse"):
            for p, evs in by_partition.items():
                parsed = parse_batch([
                    (ev.key, ev.value,
                     f"{ev.message.topic}/{ev.message.partition}/{ev.message.offset}")
                    for ev in evs])
                dead_letters += parsed.dead_letters
                if not direct:
                    forwarded += parsed.interactions
                    continue
                mine = []
                for ie in parsed.interactions:
                    (mine if user_partition(ie.user_id, s.topic_partitions) == p
                     else forwarded).append(ie)
                if mine:
                    owned.append((evs[0], mine))
        stats.interactions_forwarded += len(forwarded)
        sends = [dead_letter_send(dl) for dl in dead_letters]
        for partition, fevs in group_by_partition(forwarded, s.topic_partitions).items():
            for payload in encode_bounded(fevs):
                sends.append(lambda p=partition, v=payload: interactions_topic.send(
                    value=v, partition=p))
        await send_all(sends)
        if dead_letters:
            reasons = Counter(dl.reason for dl in dead_letters)
            log.info("dead-lettered %d of %d records: %s", len(dead_letters),
                     records, ", ".join(f"{r}={n}" for r, n in sorted(reasons.items())))
        return owned

    async def apply_refused_retried(evs: list[Any]) -> Any:
        """Apply; a store that *refuses* (Redis NOPERM from a too-narrow ACL, OOM,
        READONLY, ...) is retried like an outage. Raising would crash the actor and
        Faust would ack the message: its interactions would be lost silently. These
        are operator-fixable conditions of the store, not properties of the events
        (which were validated upstream), so wait, loudly, until they are fixed."""
        try:
            return await svc.pipeline.apply(evs)
        except StoreError as exc:
            log.error("store refused the write; retrying until it is fixed: %s", exc)
            raise TransientStoreError(f"store refused: {exc}") from exc

    @app.agent(interactions_topic, name="apply")
    async def apply(stream: Any) -> None:
        # Messages are taken in batches (one ingest batch sends one message per
        # partition): one pipeline run, two Redis calls and one changelog batch per
        # partition for all of them. Order within a partition, hence per user, is
        # kept; every message is acked after its effects are durable.
        async for batch in take_batches(stream, s.batch_size, linger=s.apply_within_ms / 1000):
            # Worked on in runs of at most APPLY_MAX_INTERACTIONS (whole messages,
            # in order), each message decoded as its run comes: a backlog makes
            # big batches (500 messages of ~70 interactions), and decoding a whole
            # batch first held all of them at once (measured: 27 MB of the heap).
            decoded = ((event, [] if is_sentinel(event.headers)
                        else decode_interactions(event.value)) for event in batch)
            for run in weighted_runs(decoded, lambda m: len(m[1]), s.apply_max_interactions):
                await apply_messages(stream, [m[0] for m in run], [m[1] for m in run])

    async def apply_messages(stream: Any, messages: list[Any], decoded: list[list[Any]]
                             ) -> None:
        await apply_owned(list(zip(messages, decoded, strict=True)))
        for event in messages:
            await stream.ack(event)

    async def apply_owned(parts: list[tuple[Any, list[Any]]]) -> None:
        """Apply interactions, in order, and write the touched users' signals into
        the table: ``parts`` pairs an event being processed, of the partition its
        users belong to (the table's partition for their writes), with their
        interactions. Retries transient failures without moving on; returns once
        the effects are durable (the caller then acks)."""
        async with apply_lock:
            with stats.timed("apply"):
                evs: list[Any] = []
                owner: dict[str, Any] = {}  # user id -> the event (partition) it came in
                for event, interactions in parts:
                    evs.extend(interactions)
                    for ie in interactions:
                        owner[ie.user_id] = event
                result = await retry_forever(lambda evs=evs: apply_refused_retried(evs), retry,
                                             max_backoff=s.retry_max_backoff_s)
                by_partition: dict[int, tuple[Any, dict[bytes, bytes]]] = {}
                for uid, raw in result.encoded.items():
                    event = owner[uid]
                    by_partition.setdefault(event.message.partition, (event, {}))[1][
                        uid.encode()] = raw
                for event, values in by_partition.values():
                    await write_table_batch(app, table, values, event=event)
                stats.interactions_written += result.added
                stats.interactions_redelivered += result.duplicates
                stats.last_applied_at = stats.clock()
                if result.conflicts:
                    await send_all([dead_letter_send(conflict_dead_letter(c))
                                    for c in result.conflicts])
        stats.progress()
        if result.conflicts:
            log.info("dead-lettered %d message id conflicts (users %s)",
                     len(result.conflicts),
                     " ".join(sorted({user_ref(c.user_id) for c in result.conflicts})))
