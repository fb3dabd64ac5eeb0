"""``IngestPipeline.apply`` takes its users ``max_users`` at a time: the outcome
(statuses in input order, signals, encoded JSON, conflicts, stored state) is the
same as one round over the whole batch."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.factories import content, event
from worker.adapters.memory import (
    InMemoryContentStore,
    InMemoryEventBuffer,
    InMemoryUserModelStore,
)
from worker.pipeline import IngestPipeline
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.errors import TransientStoreError


def _batches(seed: int = 7) -> list[list]:
    rng = random.Random(seed)
    batches = []
    for b in range(3):
        evs = []
        for i in range(300):
            u = f"u{rng.randrange(40)}"
            c = str(rng.randrange(1, 20))
            evs.append(event(u, c, kind=rng.choice(["view", "purchase", "add_to_cart"]),
                             days=b + i / 1000, mid=f"m{b}-{i}"))
        evs += evs[:25]  # redeliveries in the same batch
        first = evs[0]  # same message id, another body: a conflict
        evs.append(event(first.user_id, "19" if first.content_id != "19" else "18",
                         days=b, mid=first.message_id))
        rng.shuffle(evs)
        batches.append(evs)
    return batches


async def _run(max_users: int):
    store = InMemoryContentStore(dim=4)
    await store.upsert([(content(str(c), f"genre:g{c % 3}"), (1.0, c, 0.5, c % 2))
                        for c in range(1, 20)])
    buffer, users = InMemoryEventBuffer(), InMemoryUserModelStore()
    pipe = IngestPipeline(buffer=buffer, users=users, content=store,
                          signal_config=SignalConfig(), max_users=max_users)
    results = [await pipe.apply(b) for b in _batches()]
    return results, users.signals


async def test_rounds_of_users_give_the_same_outcome_as_one_round() -> None:
    whole, saved_whole = await _run(100_000)
    for n in (1, 3, 16):
        parts, saved = await _run(n)
        assert saved == saved_whole
        for a, b in zip(whole, parts, strict=True):
            assert a.statuses == b.statuses
            assert a.encoded == b.encoded  # each user's signals, as saved
            assert sorted(e.message_id for e in a.conflicts) == sorted(
                e.message_id for e in b.conflicts)
            assert a.added == b.added
    assert any(r.conflicts for r in whole) and all(r.added < len(r.statuses) for r in whole)


class _Traced:
    """Wraps the buffer and the users store: logs each call's start and end, and
    lets a round's append take a little while (so rounds can overlap) or fail."""

    def __init__(self, buffer, users, log: list, fail_round: int | None = None) -> None:
        self.buffer, self.users, self.log, self.fail_round = buffer, users, log, fail_round
        self.rounds = self.saves = 0

    async def append_and_fetch(self, events):
        r = self.rounds
        self.rounds += 1
        self.log.append(("fetch start", r))
        await asyncio.sleep(0.01)
        if r == self.fail_round:
            self.log.append(("fetch failed", r))
            raise TransientStoreError("redis went away")
        out = await self.buffer.append_and_fetch(events)
        self.log.append(("fetch end", r))
        return out

    async def save_encoded(self, encoded):
        self.log.append(("save", self.saves))
        self.saves += 1
        await self.users.save_encoded(encoded)

    def __getattr__(self, name):
        return getattr(self.users, name)


async def _traced_pipeline(log: list, fail_round: int | None = None):
    store = InMemoryContentStore(dim=4)
    await store.upsert([(content(str(c), f"genre:g{c % 3}"), (1.0, c, 0.5, c % 2))
                        for c in range(1, 20)])
    buffer, users = InMemoryEventBuffer(), InMemoryUserModelStore()
    traced = _Traced(buffer, users, log, fail_round)
    pipe = IngestPipeline(buffer=traced, users=traced, content=store,
                          signal_config=SignalConfig(), max_users=8)
    return pipe


async def test_the_next_round_is_read_while_this_one_is_computed() -> None:
    log: list = []
    pipe = await _traced_pipeline(log)
    result = await pipe.apply(_batches()[0])
    # the next round's append/fetch starts before this round's signals are saved
    fetches = [r for what, r in log if what == "fetch start"]
    assert len(fetches) == 5  # 40 users, 8 a round
    for r in range(len(fetches) - 1):
        assert log.index(("fetch start", r + 1)) < log.index(("save", r)), log
        # ... and only once this round's append is done: appends run in order
        assert log.index(("fetch end", r)) < log.index(("fetch start", r + 1)), log
    # and the outcome is that of one round over the whole batch
    whole, _ = await _run(100_000)
    assert result.statuses == whole[0].statuses
    assert result.encoded == whole[0].encoded


async def test_a_failing_round_fails_the_apply_and_leaves_no_read_running() -> None:
    log: list = []
    pipe = await _traced_pipeline(log, fail_round=2)
    before = asyncio.all_tasks()
    with pytest.raises(TransientStoreError):
        await pipe.apply(_batches()[0])
    assert asyncio.all_tasks() == before  # nothing left running or unretrieved
    assert ("fetch start", 3) not in log  # no round after the failed one was sent
    assert ("fetch failed", 2) in log and ("save", 1) in log  # while round 1 was computed
