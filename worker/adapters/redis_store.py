"""Redis adapters: the per-user event buffer and the materialised user signals.

Layout (``{uid}`` is a Redis Cluster hash tag, so a user's keys share one slot):

* ``<prefix>:{<uid>}:z``   sorted set, member = message id, score = event time (ms)
* ``<prefix>:{<uid>}:h``   hash, message id -> the event as canonical JSON
* ``<prefix>:{<uid>}:sig`` the user's ``UserSignals`` as JSON, with a TTL

Appends run as one Lua script per user (atomic: add, dedupe by message id,
prune by event time, refresh TTLs), and a batch of users is one pipeline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import redis.exceptions as rexc

from worker.recsys_core.codec import (
    datetime_to_ms,
    event_from_dict,
    event_to_dict,
    signals_from_dict,
    signals_to_dict,
)
from worker.recsys_core.errors import StoreError, TransientStoreError
from worker.recsys_core.types import AppendStatus, InteractionEvent, UserSignals

if TYPE_CHECKING:
    from redis.asyncio import Redis

_DAY_MS = 86_400_000

# KEYS: buffer zset, buffer hash, popularity zset.
# ARGV: window_ms, ttl_s, then per event: ts_ms, message_id, body, content_id, pop_increment.
# Returns one status per event (see AppendStatus). Popularity counts an event once:
# only when it is new and still inside the window after pruning.
_APPEND_LUA = """
local z, h, pop = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 5 do
  local ts, id, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', h, id, body) == 1 then
    redis.call('ZADD', z, ts, id)
    out[#out + 1] = 1
  elseif redis.call('HGET', h, id) == body then
    out[#out + 1] = 0
  else
    out[#out + 1] = 2
  end
end
local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
if newest[2] then
  local cutoff = '(' .. tostring(tonumber(newest[2]) - window)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  for j = 1, #old, 500 do
    redis.call('HDEL', h, unpack(old, j, math.min(j + 499, #old)))
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff) end
end
local n = 0
for i = 3, #ARGV, 5 do
  n = n + 1
  if out[n] == 1 then
    if redis.call('ZSCORE', z, ARGV[i + 1]) then
      local inc = tonumber(ARGV[i + 4])
      if inc > 0 then redis.call('ZINCRBY', pop, inc, ARGV[i + 3]) end
    else
      out[n] = 3
    end
  end
end
if ttl > 0 then
  redis.call('EXPIRE', z, ttl)
  redis.call('EXPIRE', h, ttl)
end
return out
"""

_FETCH_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for j = 1, #ids, 500 do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, j, math.min(j + 499, #ids)))
  for _, v in ipairs(part) do out[#out + 1] = v end
end
return out
"""


def _translate(exc: Exception) -> Exception:
    """Map a redis-py error to the project's own error type."""
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError):
        return TransientStoreError(f"redis unavailable: {exc}")
    if isinstance(exc, rexc.BusyLoadingError | rexc.TryAgainError | rexc.ClusterDownError):
        return TransientStoreError(f"redis busy: {exc}")
    if isinstance(exc, rexc.ReadOnlyError):
        return TransientStoreError(f"redis read-only (failover?): {exc}")
    return StoreError(f"redis error: {exc}")


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


_POP_EPOCH_MS = 1_704_067_200_000  # 2024-01-01: increments are relative to it


def popularity_increment(weight: float, ts_ms: int, half_life_days: float) -> float:
    """Time-decayed popularity without a decay job.

    Adding ``w * 2**((t - epoch) / half_life)`` to an item's score orders items
    exactly as ``sum(w * 2**((t - now) / half_life))`` would, for any ``now``:
    the common factor ``2**(now/half_life)`` does not change the order. Scores
    stay finite for centuries at a half-life of days (2**1023 is the limit).
    """
    if weight <= 0:
        return 0.0
    exponent = (ts_ms - _POP_EPOCH_MS) / (half_life_days * _DAY_MS)
    return weight * 2.0 ** max(min(exponent, 900.0), -900.0)


def user_key(prefix: str, user_id: str, kind: str) -> str:
    """The Redis key of one of a user's structures."""
    return f"{prefix}:{{{user_id}}}:{kind}"


class RedisEventBuffer:
    """Each user's last ``window_days`` of interactions (by event time) in Redis.

    Implements ``EventSource`` plus ``append``. Idempotent: the message id is the
    sorted-set member, so a redelivered event is a no-op.
    """

    def __init__(
        self,
        client: Redis,
        *,
        window_days: float = 30,
        ttl_seconds: int | None = None,
        key_prefix: str = "rw",
        popularity_half_life_days: float = 7.0,
    ) -> None:
        self._client = client
        self.window_days = window_days
        self.popularity_half_life_days = popularity_half_life_days
        self._window_ms = int(window_days * _DAY_MS)
        self._ttl = int(ttl_seconds if ttl_seconds is not None else window_days * 86_400)
        self._prefix = key_prefix
        self._append = client.register_script(_APPEND_LUA)
        self._fetch = client.register_script(_FETCH_LUA)

    def _keys(self, user_id: str) -> list[str]:
        return [user_key(self._prefix, user_id, "z"), user_key(self._prefix, user_id, "h")]

    def _append_keys(self, user_id: str) -> list[str]:
        return [*self._keys(user_id), f"{self._prefix}:pop"]

    def _pop_increment(self, ev: InteractionEvent) -> float:
        w = ev.weight if ev.weight is not None else 0.0
        if ev.event_type == "rate":
            w = max(w - 2.5, 0.0)
        return popularity_increment(max(w, 0.0), datetime_to_ms(ev.timestamp),
                                    self.popularity_half_life_days)

    async def append(self, event: InteractionEvent) -> bool:
        """Store one event; False when it was already there."""
        (status,) = await self.append_many([event])
        return status is AppendStatus.ADDED

    async def append_many(self, events: Sequence[InteractionEvent]) -> list[AppendStatus]:
        """Store a batch: one Lua call per user, all in one pipeline round trip.

        Returns one status per input event, in input order.
        """
        if not events:
            return []
        per_user: dict[str, list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            per_user[ev.user_id].append(i)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for uid, idxs in per_user.items():
                    args: list[Any] = [self._window_ms, self._ttl]
                    for i in idxs:
                        ev = events[i]
                        args += [
                            datetime_to_ms(ev.timestamp),
                            ev.message_id,
                            _dumps(event_to_dict(ev)),
                            ev.content_id,
                            repr(self._pop_increment(ev)),
                        ]
                    await self._append(keys=self._append_keys(uid), args=args, client=pipe)
                results = await pipe.execute()
        except rexc.RedisError as exc:
            raise _translate(exc) from exc
        except OSError as exc:
            raise _translate(exc) from exc
        out: list[AppendStatus] = [AppendStatus.DUPLICATE] * len(events)
        for (_, idxs), statuses in zip(per_user.items(), results, strict=True):
            for i, st in zip(idxs, statuses, strict=True):
                out[i] = AppendStatus(int(st))
        return out

    async def fetch_events(self, user_id: str) -> list[InteractionEvent]:
        """The user's buffered events, oldest first."""
        (events,) = await self.fetch_many([user_id])
        return events

    async def fetch_many(self, user_ids: Sequence[str]) -> list[list[InteractionEvent]]:
        """Buffered events of several users in one round trip."""
        if not user_ids:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for uid in user_ids:
                    await self._fetch(keys=self._keys(uid), client=pipe)
                raw = await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return [[event_from_dict(orjson.loads(b)) for b in bodies if b] for bodies in raw]

    async def popular(self, limit: int) -> list[tuple[str, float]]:
        """The most popular items by time-decayed weight, best first."""
        try:
            rows = await self._client.zrevrange(f"{self._prefix}:pop", 0, limit - 1,
                                                withscores=True)
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return [(m.decode() if isinstance(m, bytes) else m, float(sc)) for m, sc in rows]

    async def ping(self) -> None:
        """Raise ``TransientStoreError`` unless Redis answers."""
        try:
            await self._client.ping()
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc


class RedisUserModelStore:
    """``UserSignals`` as JSON per user, with a TTL (≈ 7 days by default)."""

    def __init__(
        self, client: Redis, *, ttl_seconds: int = 7 * 86_400, key_prefix: str = "rw"
    ) -> None:
        self._client = client
        self.ttl_seconds = ttl_seconds
        self._prefix = key_prefix

    def _key(self, user_id: str) -> str:
        return user_key(self._prefix, user_id, "sig")

    async def get_signals(self, user_id: str) -> UserSignals | None:
        """The saved signals, or None for an unknown or expired user."""
        try:
            raw = await self._client.get(self._key(user_id))
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return signals_from_dict(orjson.loads(raw)) if raw else None

    async def save_signals(self, signals: UserSignals) -> None:
        """Save with the store's TTL (wall clock)."""
        await self.save_many([signals])

    async def save_many(self, many: Iterable[UserSignals]) -> None:
        """Save several users' signals in one round trip."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for s in many:
                    pipe.set(self._key(s.user_id), _dumps(signals_to_dict(s)), ex=self.ttl_seconds)
                await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
