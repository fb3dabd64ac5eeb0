"""Retry transient failures with backoff, without ever moving on.

Faust acks an event whose processing raised, so an agent must not raise on a
transient outage: it waits and tries again until the store is back or the worker
stops (cancellation propagates). Anything else is a bug and is raised.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
)

from worker.recsys_core.errors import TransientStoreError

T = TypeVar("T")
log = logging.getLogger("worker.retry")


class RetryState:
    """How many retries happened and whether one is in progress (for readiness)."""

    def __init__(self) -> None:
        self.retries = 0
        self.failing: str | None = None

    def before_sleep(self, rs: RetryCallState) -> None:
        self.retries += 1
        exc = rs.outcome.exception() if rs.outcome else None
        self.failing = str(exc)
        if rs.attempt_number in (1, 2, 5) or rs.attempt_number % 20 == 0:
            log.warning("transient failure, retrying (attempt %d): %s", rs.attempt_number, exc)


def backoff(attempt: int, max_backoff: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...): 50 ms
    doubling per attempt plus up to a second of jitter, at most ``max_backoff``.
    (tenacity's ``wait_exponential_jitter`` with ``initial=0.05``; its
    ``initial`` is deprecated in tenacity 9 and ``multiplier`` is missing in 8.)"""
    return min(0.05 * 2 ** min(attempt - 1, 64) + random.uniform(0, 1), max_backoff)


async def retry_forever(
    fn: Callable[[], Awaitable[T]], state: RetryState, *, max_backoff: float = 5.0
) -> T:
    """Run ``fn`` until it succeeds, backing off on ``TransientStoreError``.

    The first attempt runs outside tenacity: setting up its retry loop costs
    more than an apply of a few events (~3 % of the worker's loop at 1,000
    events/s, py-spy). A first failure enters the loop as its first attempt,
    so the backoff, the counting and the logging are tenacity's, as before."""
    try:
        result = await fn()
    except TransientStoreError as exc:
        first: TransientStoreError | None = exc
    else:
        state.failing = None
        return result
    started = time.monotonic()
    attempts = 0
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TransientStoreError),
        wait=lambda rs: backoff(rs.attempt_number, max_backoff),
        before_sleep=state.before_sleep,
        reraise=True,
    ):
        attempts += 1
        with attempt:
            if first is not None:
                failed, first = first, None
                raise failed
            result = await fn()
    if attempts > 1:
        log.info("transient failure over: succeeded after %d attempts in %.1fs",
                 attempts, time.monotonic() - started)
    state.failing = None
    return result
