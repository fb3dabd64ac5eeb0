"""``take_batches`` on a real Faust stream over an in-process channel (no broker:
the app's consumer is never started)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest

from worker.batching import take_batches


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


async def _collect(stream: Any, max_: int, out: list[list[int]], gate: asyncio.Event,
                   linger: float = 0.0) -> None:
    async for batch in take_batches(stream, max_, linger=linger):
        out.append([ev.value for ev in batch])
        await gate.wait()  # hold the batch, as a slow store would
        for ev in batch:
            await stream.ack(ev)


async def _until(cond: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def test_a_lone_event_goes_at_once_and_a_backlog_goes_in_full_batches(
    channel_stream: tuple[Any, Any],
) -> None:
    ch, stream = channel_stream
    got: list[list[int]] = []
    gate = asyncio.Event()
    task = asyncio.create_task(_collect(stream, 3, got, gate))
    try:
        await ch.send(value=0)
        await _until(lambda: got == [[0]])  # no timer to wait for
        for v in range(1, 8):  # arrive while the first batch is being handled
            await ch.send(value=v)
        await asyncio.sleep(0.05)
        assert got == [[0]]  # nothing is yielded while a batch is held
        gate.set()
        await _until(lambda: sum(map(len, got)) == 8)
        assert got == [[0], [1, 2, 3], [4, 5, 6], [7]]  # in order, none lost, at most 3
    finally:
        task.cancel()


async def test_linger_waits_for_more_after_the_queue_emptied(
    channel_stream: tuple[Any, Any],
) -> None:
    ch, stream = channel_stream
    got: list[list[int]] = []
    gate = asyncio.Event()
    gate.set()
    task = asyncio.create_task(_collect(stream, 10, got, gate, linger=0.2))
    try:
        await ch.send(value=1)
        await asyncio.sleep(0.02)
        await ch.send(value=2)
        await _until(lambda: sum(map(len, got)) == 2)
        assert got == [[1, 2]]
    finally:
        task.cancel()
