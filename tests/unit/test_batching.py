"""``take_batches`` on a real Faust stream over an in-process channel (no broker:
the app's consumer is never started)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import faust
import pytest

from worker.batching import take_batches, weighted_runs


@pytest.fixture
async def channel_stream() -> AsyncIterator[tuple[Any, Any]]:
    app = faust.App("batching-test", broker="kafka://127.0.0.1:1", web_enabled=False,
                    loop=asyncio.get_running_loop())
    app.flow_control.resume()  # a started consumer would do this
    ch = app.channel()
    stream = app.stream(ch)
    yield ch, stream
    await stream.stop()
    # The stream made the app's (never started) consumer, whose thread made a loop.
    app.consumer._thread.thread_loop.close()


@contextlib.asynccontextmanager
async def collecting(stream: Any, max_: int, *, linger: float = 0.0, held: bool = False
                     ) -> AsyncIterator[tuple[list[list[int]], asyncio.Event]]:
    """Batches taken from ``stream`` as lists of values; each is acked once the
    gate is open (``held``: closed at first, as a slow store would keep it)."""
    got: list[list[int]] = []
    gate = asyncio.Event()
    if not held:
        gate.set()

    async def collect() -> None:
        async for batch in take_batches(stream, max_, linger=linger):
            got.append([ev.value for ev in batch])
            await gate.wait()
            for ev in batch:
                await stream.ack(ev)

    task = asyncio.create_task(collect())
    try:
        yield got, gate
    finally:
        task.cancel()


async def _until(cond: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def test_a_lone_event_goes_at_once_and_a_backlog_goes_in_full_batches(
    channel_stream: tuple[Any, Any],
) -> None:
    ch, stream = channel_stream
    async with collecting(stream, 3, held=True) as (got, gate):
        await ch.send(value=0)
        await _until(lambda: got == [[0]])  # no timer to wait for
        for v in range(1, 8):  # arrive while the first batch is being handled
            await ch.send(value=v)
        await asyncio.sleep(0.05)
        assert got == [[0]]  # nothing is yielded while a batch is held
        gate.set()
        await _until(lambda: sum(map(len, got)) == 8)
        assert got == [[0], [1, 2, 3], [4, 5, 6], [7]]  # in order, none lost, at most 3


async def test_linger_waits_for_more_after_the_queue_emptied(
    channel_stream: tuple[Any, Any],
) -> None:
    ch, stream = channel_stream
    async with collecting(stream, 10, linger=0.2) as (got, _):
        await ch.send(value=1)
        await asyncio.sleep(0.02)
        await ch.send(value=2)
        await _until(lambda: sum(map(len, got)) == 2)
        assert got == [[1, 2]]


async def test_events_taken_are_yielded_when_the_queue_is_cleared_under_them(
    channel_stream: tuple[Any, Any],
) -> None:
    # Shutdown (Faust's App._stop_consumer) clears the channels' queues. An event
    # added to the batch while more were queued must still go out, or its message
    # is never acked and the shutdown's wait for in-flight events never ends.
    ch, stream = channel_stream

    def clear_after(value: Any) -> Any:  # runs after take_batches' processor
        if value == 1:
            stream.channel.queue.clear()
        return value

    async with collecting(stream, 10, held=True) as (got, gate):
        await ch.send(value=0)
        await _until(lambda: got == [[0]])
        stream.add_processor(clear_after)
        for v in (1, 2, 3):  # 1 waits for the held batch; 2 and 3 stay queued
            await ch.send(value=v)
        gate.set()  # 1 joins the next batch with 2 and 3 still queued; then they go
        await _until(lambda: got == [[0], [1]])


def _runs(weights: list[int], limit: int) -> list[list[int]]:
    """Runs as lists of indexes into ``weights``."""
    return [[i for i, _ in run] for run in
            weighted_runs(enumerate(weights), lambda iw: iw[1], limit)]


def test_weighted_runs_keep_order_and_whole_items_within_the_limit() -> None:
    assert _runs([], 10) == []
    assert _runs([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]
    assert _runs([0, 5, 0, 5, 1], 5) == [[0, 1, 2], [3], [4]]
    # an item heavier than the limit goes alone; nothing is split or dropped
    assert _runs([2, 50, 2], 10) == [[0], [1], [2]]
    weights = [70, 1, 0, 300, 69, 70, 70, 2]
    runs = _runs(weights, 140)
    assert [i for r in runs for i in r] == list(range(len(weights)))
    assert all(sum(weights[i] for i in r) <= 140 or len(r) == 1 for r in runs)


def test_weighted_runs_read_items_only_as_far_as_the_run_they_yield() -> None:
    read: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10):
            read.append(i)
            yield i

    runs = weighted_runs(items(), lambda _: 4, 10)  # two items per run
    assert next(runs) == [0, 1]
    assert read == [0, 1, 2]  # the run, and the first item of the next
    assert next(runs) == [2, 3]
    assert read == [0, 1, 2, 3, 4]
    assert [x for run in runs for x in run] == list(range(4, 10))
