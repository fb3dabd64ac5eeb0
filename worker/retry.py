"""Retry transient failures with backoff, without ever moving on.

Faust acks an event whose processing raised, so an agent must not raise on a
transient outage: it waits and tries again until the store is back or the worker
stops (cancellation propagates). Anything else is a bug and is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
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


async def retry_forever(
    fn: Callable[[], Awaitable[T]], state: RetryState, *, max_backoff: float = 5.0
) -> T:
    """Run ``fn`` until it succeeds, backing off on ``TransientStoreError``."""
    started = time.monotonic()
    attempts = 0
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TransientStoreError),
        wait=wait_exponential_jitter(initial=0.05, max=max_backoff),
        before_sleep=state.before_sleep,
        reraise=True,
    ):
        attempts += 1
        with attempt:
            result = await fn()
    if attempts > 1:
        log.info("transient failure over: succeeded after %d attempts in %.1fs",
                 attempts, time.monotonic() - started)
    state.failing = None
    return result
