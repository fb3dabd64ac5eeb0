"""Faust's fetch loop delivers a record without tasks when nothing blocks it, and
exactly as before when something does (worker.kafka_patches.patch_consumer_delivery).

The patched ``wait_first`` is called on a stand-in for Faust's consumer: it reads
only the consumer's flow, stopped and crashed events and its loop, as Faust's does.
"""

from __future__ import annotations

import asyncio
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer

from worker.kafka_patches import _Resume, patch_consumer_delivery

patch_consumer_delivery()


def consumer() -> Any:
    loop = asyncio.get_running_loop()
    return SimpleNamespace(suspend_flow=asyncio.Event(), _stopped=asyncio.Event(),
                           _crashed=asyncio.Event(), loop=loop)


async def test_a_delivery_that_does_not_wait_runs_inline_without_tasks() -> None:
    c = consumer()
    delivered: list[str] = []

    async def deliver() -> str:
        delivered.append("record")
        return "done"

    call = Consumer.wait_first(c, deliver(), c.suspend_flow.wait())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unused flow coroutine is closed, not leaked
        with pytest.raises(StopIteration) as finished:
            call.send(None)  # done in one step: no task, no trip through the loop
    result = finished.value.value
    assert delivered == ["record"]
    assert result.done and result.results == ["done"] and not result.stopped


async def test_a_delivery_that_waits_finishes_after_its_wait() -> None:
    c = consumer()
    room = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def deliver() -> str:
        steps.append("start")
        value = await room  # a full stream queue
        steps.append(f"put {value}")
        return "done"

    waiting = asyncio.create_task(Consumer.wait_first(c, deliver(), c.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert steps == ["start"] and not waiting.done()
    room.set_result("x")
    result = await asyncio.wait_for(waiting, 2)
    assert steps == ["start", "put x"]
    assert result.results == ["done"]


async def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    c = consumer()
    steps: list[str] = []

    async def deliver() -> None:
        try:
            await asyncio.Event().wait()  # never has room
        finally:
            steps.append("cancelled")

    flow = c.suspend_flow.wait()
    waiting = asyncio.create_task(Consumer.wait_first(c, deliver(), flow))
    await asyncio.sleep(0.01)
    c.suspend_flow.set()  # a rebalance
    result = await asyncio.wait_for(waiting, 2)
    assert result.done == [flow]  # the flow event won; the delivery did not finish
    assert steps == ["cancelled"]


async def test_an_error_in_the_delivery_propagates_and_closes_the_flow_wait() -> None:
    c = consumer()

    async def deliver() -> None:
        raise ValueError("bad record")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="bad record"):
            await Consumer.wait_first(c, deliver(), c.suspend_flow.wait())


async def test_with_the_flow_already_suspended_faust_path_runs() -> None:
    c = consumer()
    c.suspend_flow.set()
    blocked = asyncio.Event()

    async def deliver() -> None:
        await blocked.wait()

    flow = c.suspend_flow.wait()
    result = await asyncio.wait_for(Consumer.wait_first(c, deliver(), flow), 2)
    assert result.done == [flow]  # Faust's own race: the flow event won


async def test_resume_passes_results_errors_and_cancellation_through() -> None:
    loop = asyncio.get_running_loop()

    async def twice(f1: asyncio.Future[int], f2: asyncio.Future[int]) -> int:
        return await f1 + await f2

    f1, f2 = loop.create_future(), loop.create_future()
    coro = twice(f1, f2)
    first = coro.send(None)  # advanced to its first wait, as the patch does
    task = asyncio.ensure_future(_Resume(coro, first))
    f1.set_result(2)
    await asyncio.sleep(0)
    f2.set_result(3)
    assert await asyncio.wait_for(task, 2) == 5

    g = loop.create_future()
    coro = twice(g, loop.create_future())
    task = asyncio.ensure_future(_Resume(coro, coro.send(None)))
    g.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        await asyncio.wait_for(task, 2)

    cleaned: list[bool] = []

    async def forever() -> None:
        try:
            await loop.create_future()
        finally:
            cleaned.append(True)

    coro2 = forever()
    task = asyncio.ensure_future(_Resume(coro2, coro2.send(None)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
