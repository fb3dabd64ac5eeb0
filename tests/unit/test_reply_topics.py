"""Replies go to topics given by name: the app reuses one ``Topic`` per name.

Faust's ``App.send`` builds a new ``Topic`` for every send to a name; each is
34 objects in reference cycles, which only the cyclic garbage collector frees
(it paused the worker 10-13 ms every ~2 s at 100 requests/s).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from faust.topics import Topic

from tests.factories import memory_app


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """What reached ``Topic.send``: (the topic object, the value)."""
    calls: list[tuple[Any, Any]] = []

    async def send(self: Any, *, value: Any = None, **kwargs: Any) -> None:
        calls.append((self, value))

    monkeypatch.setattr(Topic, "send", send)
    return calls


def test_sends_by_name_reuse_one_topic_per_name(sent: list[tuple[Any, Any]]) -> None:
    app = memory_app("reply-topics-a")

    async def go() -> None:
        await app.send("reply-1", value=b"a")
        await app.send("reply-2", value=b"b")
        await app.send("reply-1", value=b"c")
        await app.send(app.topic("other"), value=b"d")  # a channel passes through

    asyncio.run(go())
    (t1, _), (t2, _), (t3, _), (t4, _) = sent
    assert [v for _, v in sent] == [b"a", b"b", b"c", b"d"]
    assert t1 is t3 and t1 is not t2
    assert t1.get_topic_name() == "reply-1" and t2.get_topic_name() == "reply-2"
    assert t4.get_topic_name() == "other"


def test_named_topics_kept_are_bounded_most_recent_first(
        sent: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    app = memory_app("reply-topics-b")
    monkeypatch.setattr(app, "NAMED_TOPICS_KEPT", 3)

    async def go() -> None:
        for name in ("r1", "r2", "r3", "r1", "r4"):  # r1 used again: r2 is the oldest
            await app.send(name, value=b"x")
        await app.send("r2", value=b"y")

    asyncio.run(go())
    assert list(app._named_topics) == ["r1", "r4", "r2"]
    assert sent[-1][0] is not sent[1][0]  # r2 was dropped, then made again


def test_replies_to_one_name_leave_no_cyclic_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []

    async def send(self: Any, **kwargs: Any) -> None:
        names.append(self.get_topic_name())  # keeps no reference to the topic

    monkeypatch.setattr(Topic, "send", send)
    app = memory_app("reply-topics-c")

    async def go(n: int) -> None:
        for i in range(n):
            await app.send("reply-1", value=b"%d" % i)

    asyncio.run(go(1))
    gc.collect()
    asyncio.run(go(200))
    # A new Topic per send left 2 objects in cycles per send here (434), 34 in the
    # worker (where a send also compiles its delivery closures).
    assert gc.collect() < 20
    assert names == ["reply-1"] * 201
