"""The ingest path as plain async code: parse a batch of raw records, apply a batch
of interactions. The Faust agents, the replay command and the evaluation all call
this, so they measure and run the same product.

gather -> decide (pure) -> apply:
  raw bytes -> ``parse_record`` (pure) -> dead letters | interactions
  interactions -> buffer.append_many (idempotent) -> fetch windows -> catalogue
  lookups -> ``compute_signals`` (pure) -> save signals
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

import orjson

from worker.adapters.redis_store import signals_to_json
from worker.adapters.rudderstack import parse_record
from worker.recsys_core.codec import event_from_dict, event_to_dict
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.ports import ContentStore, UserModelStore
from worker.recsys_core.signals import WindowRow, signals_from_windows
from worker.recsys_core.types import AppendStatus, InteractionEvent, UserSignals
from worker.stats import StageClock, StageObserver


class BatchBuffer(Protocol):
    """The buffer operations the pipeline needs (RedisEventBuffer and its fake)."""

    async def append_and_fetch(
        self, events: Sequence[InteractionEvent]
    ) -> tuple[list[AppendStatus], dict[str, list[WindowRow]]]: ...


class SignalsWriter(UserModelStore, Protocol):
    async def save_many(self, many: Sequence[UserSignals]) -> None: ...

    async def save_encoded(self, encoded: Mapping[str, bytes]) -> None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An unusable record: the original bytes, why, and where it came from."""

    key: bytes | None
    value: bytes
    reason: str
    detail: str
    source: str = ""


@dataclass(slots=True)
class ParsedBatch:
    interactions: list[InteractionEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0  # no interaction by design (identify, heartbeat, ...)


def parse_batch(
    records: Sequence[tuple[bytes | None, bytes, str]], *, now: datetime | None = None
) -> ParsedBatch:
    """Normalise raw records ``(key, value, source)``; never raises."""
    out = ParsedBatch()
    for key, value, source in records:
        res = parse_record(value, now=now)
        if res.outcome == "interactions":
            out.interactions.extend(res.interactions)
        elif res.outcome == "rejected":
            out.dead_letters.append(
                DeadLetter(key, value if isinstance(value, bytes) else bytes(value or b""),
                           res.reason or "rejected", res.detail or "", source)
            )
        else:
            out.skipped += 1
    return out


def encode_interactions(events: Sequence[InteractionEvent]) -> bytes:
    """One repartition message: a JSON list of compact events."""
    return orjson.dumps([event_to_dict(e) for e in events])


def decode_interactions(value: bytes) -> list[InteractionEvent]:
    """Inverse of :func:`encode_interactions`."""
    return [event_from_dict(d) for d in orjson.loads(value)]


@dataclass(slots=True)
class ApplyResult:
    statuses: list[AppendStatus]
    conflicts: list[InteractionEvent]
    #: each user's signals as saved (``signals_to_json``), encoded once for the
    #: store and the table. Only the bytes are kept: no caller used the
    #: ``UserSignals`` (each with its preference vector as a tuple of floats),
    #: and holding a batch's until the table write raised the RSS after a 100k
    #: ingest from ~380 to ~450 MB.
    encoded: dict[str, bytes] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return sum(1 for s in self.statuses if s is AppendStatus.ADDED)

    @property
    def duplicates(self) -> int:
        """Events already stored with the same body (redeliveries, re-reads)."""
        return sum(1 for s in self.statuses if s is AppendStatus.DUPLICATE)


#: Signals computed between two yields to the event loop (see ``IngestPipeline.apply``),
#: together (``signals_from_windows``).
_YIELD_EVERY = 16

#: Users per append/fetch/save round of ``IngestPipeline.apply`` (APPLY_MAX_USERS).
APPLY_MAX_USERS = 256


class IngestPipeline:
    """Applies interactions to the stores. Every step is idempotent."""

    def __init__(
        self,
        *,
        buffer: BatchBuffer,
        users: SignalsWriter,
        content: ContentStore,
        signal_config: SignalConfig,
        observe: StageObserver | None = None,
        max_users: int = APPLY_MAX_USERS,
    ) -> None:
        self.buffer = buffer
        self.users = users
        self.content = content
        self.signal_config = signal_config
        #: users per append/fetch/save round (see ``apply``)
        self.max_users = max(1, max_users)
        #: ``(stage, seconds)`` per apply: "redis", "qdrant", "signals" (optional)
        self.observe = observe

    async def apply(self, events: Sequence[InteractionEvent]) -> ApplyResult:
        """Append, then recompute and save the signals of every touched user.

        Users are recomputed even when all their events were duplicates: after
        a crash between append and save, the redelivery must still save.

        The users are taken ``max_users`` at a time (all of a user's events in
        the same round, in their order): each round reads back its users' whole
        windows, so the memory one apply needs is bounded by ``max_users`` x the
        window, not by the batch (a batch of a few thousand users with full
        windows is tens of MB of transient objects, and the allocator keeps its
        high-water mark).

        Rounds overlap: the next round's append and fetch (Redis's work, on
        Redis's core) is sent before this round's signals are computed (this
        process's work). Rounds touch disjoint users, and what they share
        (popularity, counts, co-interaction rows) only takes increments, so the
        stored state is that of the rounds one after the other; at most two
        rounds' windows are held at once.
        """
        per_user: dict[str, list[int]] = {}
        for i, ev in enumerate(events):
            per_user.setdefault(ev.user_id, []).append(i)
        uids = list(per_user)
        rounds = [sorted(i for u in uids[start:start + self.max_users] for i in per_user[u])
                  for start in range(0, len(uids), self.max_users)]
        statuses: list[AppendStatus] = [AppendStatus.DUPLICATE] * len(events)
        out = ApplyResult(statuses, [], {})

        def fetch(r: int) -> asyncio.Future[Any]:
            return asyncio.ensure_future(
                self.buffer.append_and_fetch([events[i] for i in rounds[r]]))

        ahead = fetch(0) if rounds else None
        try:
            for r, idxs in enumerate(rounds):
                clock = StageClock(self.observe)
                try:
                    with clock("redis"):
                        fetched = await cast(asyncio.Future[Any], ahead)
                    ahead = fetch(r + 1) if r + 1 < len(rounds) else None
                    if ahead is not None:
                        await asyncio.sleep(0)  # it sends its call before the CPU work
                    part = await self._finish([events[i] for i in idxs], fetched, clock)
                finally:
                    clock.report()
                for i, st in zip(idxs, part.statuses, strict=True):
                    statuses[i] = st
                out.encoded.update(part.encoded)
                out.conflicts.extend(part.conflicts)
        finally:
            if ahead is not None:  # on an error: stop the read ahead, leave nothing unretrieved
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
        return out

    async def _finish(
        self,
        events: Sequence[InteractionEvent],
        fetched: tuple[list[AppendStatus], dict[str, list[WindowRow]]],
        clock: StageClock,
    ) -> ApplyResult:
        """Signals from the windows ``append_and_fetch`` read back, then saved."""
        statuses, by_user = fetched
        conflicts = [e for e, s in zip(events, statuses, strict=True)
                     if s is AppendStatus.CONFLICT]
        users = list(by_user)
        windows = [by_user[u] for u in users]
        ids = {row[1] for w in windows for row in w}
        with clock("qdrant"):
            contents = await self.content.get(ids)
            vectors = await self.content.get_vectors(ids)
        encoded: dict[str, bytes] = {}
        with clock("signals"):
            for start in range(0, len(users), _YIELD_EVERY):
                if start:
                    await asyncio.sleep(0)  # a round read ahead sends and reads meanwhile
                some = list(zip(users[start:start + _YIELD_EVERY],
                                windows[start:start + _YIELD_EVERY], strict=True))
                for (uid, _), s in zip(some, signals_from_windows(
                        some, contents=contents, vectors=vectors, config=self.signal_config),
                        strict=True):
                    if s is not None:
                        encoded[uid] = signals_to_json(s)
        if encoded:
            with clock("redis"):
                await self.users.save_encoded(encoded)
        return ApplyResult(statuses, conflicts, encoded)


def user_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives a record keyed by
    ``user_id``: the partition of the signals table and of requests keyed by it."""
    return _murmur2_partition(user_id.encode(), partitions)


@functools.lru_cache(maxsize=16_384)
def _murmur2_partition(key: bytes, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def group_by_partition(
    events: Sequence[InteractionEvent], partitions: int
) -> dict[int, list[InteractionEvent]]:
    """Group events by their user's partition (``user_partition``)."""
    out: dict[int, list[InteractionEvent]] = defaultdict(list)
    for ev in events:
        out[user_partition(ev.user_id, partitions)].append(ev)
    return out


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka headers carried by a dead-lettered record."""
    return [
        ("x-dlq-reason", dl.reason.encode()),
        ("x-dlq-detail", dl.detail.encode("utf-8", "replace")[:1024]),
        ("x-dlq-source", dl.source.encode()),
    ]


def conflict_dead_letter(ev: InteractionEvent) -> DeadLetter:
    """A same-id-different-body event, dead-lettered as its normalised JSON."""
    body: dict[str, Any] = event_to_dict(ev)
    return DeadLetter(ev.user_id.encode(), orjson.dumps(body), "message_id_conflict",
                      f"message id {ev.message_id} was already stored with another body")
