"""Redis adapters: the per-user event buffer and the materialised user signals.

Layout (``{uid}`` is a Redis Cluster hash tag, so a user's keys share one slot):

* ``<prefix>:{<uid>}:z``   sorted set, member = message id, score = event time (ms)
* ``<prefix>:{<uid>}:h``   hash, message id -> the event as canonical JSON
* ``<prefix>:{<uid>}:i``   sorted set, the user's window items -> latest event time
* ``<prefix>:{<uid>}:sig`` the user's ``UserSignals`` as JSON, with a TTL
* ``<prefix>:pop``         items by time-decayed popularity
* ``<prefix>:cnt``         items by number of users who engaged with them
* ``<prefix>:co:<item>``   the item's co-interaction partners -> count of users

The global keys make a single Redis primary (with replicas or Sentinel) the
supported deployment, not Redis Cluster.

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
from worker.recsys_core.cointeraction import is_engaging, popularity_increment, stable_top
from worker.recsys_core.errors import StoreError, TransientStoreError
from worker.recsys_core.types import AppendStatus, InteractionEvent, UserSignals

if TYPE_CHECKING:
    from redis.asyncio import Redis

_DAY_MS = 86_400_000

# One call per batch. Each user's events are applied one after another, each
# fully (dedupe, prune, counts), so a batch gives exactly the state of one-by-one
# appends; then, if asked, the user's window is read back.
# KEYS: popularity zset, item interaction counts zset.
# ARGV: window_ms, ttl_s, key prefix, max partners, co entries kept per item,
#       fetch (0/1), then a JSON array of [user_id, [[ts_ms, message_id, body,
#       content_id, pop_increment, pairs(0/1)], ...]] per user.
# Returns, per user, {statuses, window bodies (oldest first) or {}}.
#
# Popularity and co-interaction counts change only for an event that is new and
# still inside the window, so a redelivery or a replay never counts twice. An
# engaging event ("pairs") with an item new to the user's window adds 1 to the
# co-interaction count of that item with each of the user's most recent window
# items, both ways, and 1 to the item's interaction count; each item keeps its
# strongest ``keep`` partners (trimmed at twice that), so memory stays bounded.
# A user's keys are ``<prefix>:{<user>}:<kind>``, built here from the payload:
# the script needs a single Redis primary (documented), not Redis Cluster.
_APPEND_LUA = """
local pop, cnt = KEYS[1], KEYS[2]
local window = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
local co = prefix .. ':co:'
local max_partners = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])
local fetch = ARGV[6] == '1'
local batch = cjson.decode(ARGV[7])

local function bump(key, member)
  redis.call('ZINCRBY', key, 1, member)
  if redis.call('ZCARD', key) > 2 * keep then
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  end
end

local result = {}
for _, entry in ipairs(batch) do
  local base = prefix .. ':{' .. entry[1] .. '}:'
  local z, h, it = base .. 'z', base .. 'h', base .. 'i'
  local function prune()
    local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    if not newest[2] then return end
    local cutoff = '(' .. string.format('%d', tonumber(newest[2]) - window)
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
    for j = 1, #old, 500 do
      redis.call('HDEL', h, unpack(old, j, math.min(j + 499, #old)))
    end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff) end
    redis.call('ZREMRANGEBYSCORE', it, '-inf', cutoff)
  end
  local out = {}
  for _, ev in ipairs(entry[2]) do
    local ts, id, body, cid = ev[1], ev[2], ev[3], ev[4]
    local status
    if redis.call('HSETNX', h, id, body) == 1 then
      redis.call('ZADD', z, ts, id)
      prune()
      if redis.call('ZSCORE', z, id) then
        status = 1
        local inc = tonumber(ev[5])
        if inc > 0 then redis.call('ZINCRBY', pop, ev[5], cid) end
        if ev[6] == 1 then
          if not redis.call('ZSCORE', it, cid) then
            local partners = redis.call('ZREVRANGE', it, 0, max_partners - 1)
            for _, p in ipairs(partners) do
              bump(co .. p, cid)
              bump(co .. cid, p)
            end
            redis.call('ZINCRBY', cnt, 1, cid)
          end
          redis.call('ZADD', it, 'GT', ts, cid)
        end
      else
        status = 3
      end
    elseif redis.call('HGET', h, id) == body then
      status = 0
    else
      status = 2
    end
    out[#out + 1] = status
  end
  if ttl > 0 then
    redis.call('EXPIRE', z, ttl)
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', it, ttl)
  end
  local bodies = {}
  if fetch then
    local ids = redis.call('ZRANGE', z, 0, -1)
    for j = 1, #ids, 500 do
      local part = redis.call('HMGET', h, unpack(ids, j, math.min(j + 499, #ids)))
      for _, v in ipairs(part) do bodies[#bodies + 1] = v end
    end
  end
  result[#result + 1] = {out, bodies}
end
return result
"""

# KEYS: the users' signals keys; ARGV: ttl_s, then one JSON value per key.
_SAVE_LUA = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
end
return #KEYS
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


def _s(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


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
        co_partners: int = 100,
        co_keep: int = 300,
    ) -> None:
        self._client = client
        self.window_days = window_days
        self.popularity_half_life_days = popularity_half_life_days
        self.co_partners = co_partners
        self.co_keep = co_keep
        self._window_ms = int(window_days * _DAY_MS)
        self._ttl = int(ttl_seconds if ttl_seconds is not None else window_days * 86_400)
        self._prefix = key_prefix
        self._append = client.register_script(_APPEND_LUA)
        self._fetch = client.register_script(_FETCH_LUA)

    def _keys(self, user_id: str) -> list[str]:
        return [user_key(self._prefix, user_id, "z"), user_key(self._prefix, user_id, "h")]

    async def append(self, event: InteractionEvent) -> bool:
        """Store one event; False when it was already there."""
        (status,) = await self.append_many([event])
        return status is AppendStatus.ADDED

    async def append_many(self, events: Sequence[InteractionEvent]) -> list[AppendStatus]:
        """Store a batch: one Lua call per user, all in one pipeline round trip.

        Returns one status per input event, in input order.
        """
        statuses, _ = await self.append_and_fetch(events, fetch=False)
        return statuses

    async def append_and_fetch(
        self, events: Sequence[InteractionEvent], *, fetch: bool = True
    ) -> tuple[list[AppendStatus], dict[str, list[InteractionEvent]]]:
        """Append a batch and read back every touched user's window: one Lua call
        for the whole batch, its events packed in a single JSON argument (the
        ingest path's cost is then per batch, not per event or per user)."""
        if not events:
            return [], {}
        per_user: dict[str, list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            per_user[ev.user_id].append(i)
        payload = []
        for uid, idxs in per_user.items():
            rows = []
            for i in idxs:
                ev = events[i]
                ts = datetime_to_ms(ev.timestamp)
                engaging = is_engaging(ev)
                inc = popularity_increment(1.0 if engaging else 0.0, ts,
                                           self.popularity_half_life_days)
                rows.append((str(ts), ev.message_id, _dumps(event_to_dict(ev)).decode(),
                             ev.content_id, repr(inc), 1 if engaging else 0))
            payload.append((uid, rows))
        args = [self._window_ms, self._ttl, self._prefix, self.co_partners, self.co_keep,
                1 if fetch else 0, orjson.dumps(payload)]
        try:
            results = await self._append(keys=[f"{self._prefix}:pop", f"{self._prefix}:cnt"],
                                         args=args)
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        out: list[AppendStatus] = [AppendStatus.DUPLICATE] * len(events)
        windows: dict[str, list[InteractionEvent]] = {}
        for (uid, idxs), (statuses, bodies) in zip(per_user.items(), results, strict=True):
            for i, st in zip(idxs, statuses, strict=True):
                out[i] = AppendStatus(int(st))
            if fetch:
                windows[uid] = [event_from_dict(orjson.loads(b)) for b in bodies if b]
        return out, windows

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
        """The most popular items by time-decayed weight, best first.

        Scores are sums of floats, so two replicas (or a replay) that added the
        same increments in another order can differ in the last bits: ranks are
        taken on scores rounded to 12 significant digits, ties broken by id.
        """
        try:
            rows = await self._client.zrevrange(f"{self._prefix}:pop", 0, limit + 19,
                                                withscores=True)
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        return stable_top([(_s(m), float(sc)) for m, sc in rows], limit)

    async def co_interactions(
        self, item_ids: Sequence[str], *, per_item: int
    ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Each item's strongest co-interaction partners and every involved item's
        interaction count, in two round trips: ``(rows, counts)``."""
        if not item_ids:
            return {}, {}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for cid in item_ids:
                    pipe.zrevrange(f"{self._prefix}:co:{cid}", 0, per_item - 1, withscores=True)
                raw = await pipe.execute()
            rows = {
                cid: {_s(m): float(sc) for m, sc in part}
                for cid, part in zip(item_ids, raw, strict=True)
            }
            ids = list({*item_ids, *(m for r in rows.values() for m in r)})
            scores = await self._client.zmscore(f"{self._prefix}:cnt", ids)
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        counts = {i: float(c) for i, c in zip(ids, scores, strict=True) if c is not None}
        return rows, counts

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
        self._save = client.register_script(_SAVE_LUA)

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
        """Save several users' signals with the TTL: one script call per batch."""
        items = list(many)
        if not items:
            return
        try:
            await self._save(keys=[self._key(s.user_id) for s in items],
                             args=[self.ttl_seconds,
                                   *(_dumps(signals_to_dict(s)) for s in items)])
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
