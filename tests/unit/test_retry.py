"""retry_forever: a first success skips the retry loop; transient failures are
retried with backoff, counted and cleared; anything else is raised at once."""

from __future__ import annotations

import asyncio

import pytest

from worker.recsys_core.errors import TransientStoreError
from worker.retry import RetryState, retry_forever


def test_a_first_success_is_returned_and_clears_the_failing_flag() -> None:
    state = RetryState()
    state.failing = "an earlier outage"
    calls = []

    async def ok() -> str:
        calls.append(1)
        return "done"

    assert asyncio.run(retry_forever(ok, state)) == "done"
    assert calls == [1] and state.retries == 0 and state.failing is None


def test_transient_failures_are_retried_counted_and_cleared() -> None:
    state = RetryState()
    seen_failing: list[str | None] = []
    outcomes = [TransientStoreError("redis down"), TransientStoreError("still down"), "up"]

    async def flaky() -> str:
        seen_failing.append(state.failing)
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    assert asyncio.run(retry_forever(flaky, state, max_backoff=0.01)) == "up"
    assert state.retries == 2  # one backoff after each failure
    assert seen_failing == [None, "redis down", "still down"]
    assert state.failing is None and outcomes == []


@pytest.mark.parametrize("fail_first", [True, False])
def test_other_errors_are_raised_not_retried(fail_first: bool) -> None:
    state = RetryState()
    outcomes: list[Exception] = [TransientStoreError("blip")] if fail_first else []
    outcomes.append(ValueError("a bug"))

    async def broken() -> None:
        raise outcomes.pop(0)

    with pytest.raises(ValueError, match="a bug"):
        asyncio.run(retry_forever(broken, state, max_backoff=0.01))
    assert outcomes == [] and state.retries == (1 if fail_first else 0)


def test_backoff_doubles_from_50_ms_with_jitter_and_stops_at_the_maximum() -> None:
    from worker.retry import backoff

    for _ in range(50):
        assert 0.05 <= backoff(1, 5.0) <= 1.05
        assert 0.2 <= backoff(3, 5.0) <= 1.2
        assert backoff(40, 5.0) == 5.0
        assert backoff(10_000, 2.0) == 2.0
