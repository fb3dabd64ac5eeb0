"""``IngestPipeline.apply`` takes its users ``max_users`` at a time: the outcome
(statuses in input order, signals, encoded JSON, conflicts, stored state) is the
same as one round over the whole batch."""

from __future__ import annotations

import random

from tests.factories import content, event
from worker.adapters.memory import (
    InMemoryContentStore,
    InMemoryEventBuffer,
    InMemoryUserModelStore,
)
from worker.pipeline import IngestPipeline
from worker.recsys_core.config import SignalConfig


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
