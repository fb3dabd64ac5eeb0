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

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import hiredis
import numpy as np
import numpy.typing as npt
import orjson
import redis.exceptions as rexc

from worker.expiring import MISSING, Expiring
from worker.recsys_core.codec import (
    datetime_to_ms,
    event_from_dict,
    event_to_dict,
    signals_from_dict,
    signals_to_dict,
)
from worker.recsys_core.cointeraction import (
    id_names,
    is_engaging,
    popularity_increment,
    stable_top,
    top_co_interaction_candidates,
)
from worker.recsys_core.errors import StoreError, TransientStoreError
from worker.recsys_core.signals import WindowRow
from worker.recsys_core.types import AppendStatus, Candidate, InteractionEvent, UserSignals

if TYPE_CHECKING:
    from redis.asyncio import Redis

_DAY_MS = 86_400_000
#: Lua's status numbers (the AppendStatus values) -> the enum, without a call each
_STATUSES: dict[int, AppendStatus] = {int(st): st for st in AppendStatus}

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

-- Counts start at 1 and only grow, so only a new member (score 1) can take
-- the item over its bound: ZCARD is asked then, not on every increment.
local function bump(key, member)
  if tonumber(redis.call('ZINCRBY', key, 1, member)) == 1
      and redis.call('ZCARD', key) > 2 * keep then
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  end
end

-- Increments of the shared sorted sets (popularity, interaction counts,
-- co-interaction rows) are collected over the batch and applied at its end,
-- per key in the order first touched, each key's in the order made. Nothing in
-- this script reads those sets, and a key's result depends only on its own
-- increments in order, so the state is that of one ZINCRBY each; but a key
-- incremented several times costs two or three calls, not one or two each.
local pending, pending_keys = {}, {}
local function add(key, member, by, bounded)
  local p = pending[key]
  if not p then
    p = {bounded = bounded}
    pending[key] = p
    pending_keys[#pending_keys + 1] = key
  end
  p[#p + 1] = member
  p[#p + 1] = by
end

local function flush(key, p)
  if #p == 2 then  -- one increment: as it would have been
    if p.bounded then bump(key, p[1])
    else redis.call('ZINCRBY', key, p[2], p[1]) end
    return
  end
  local members, sums = {}, {}
  for j = 1, #p, 2 do
    local m = p[j]
    if sums[m] == nil then
      members[#members + 1] = m
      sums[m] = false
    end
  end
  local scores = {}
  for j = 1, #members, 1000 do
    local part = redis.call('ZMSCORE', key, unpack(members, j, math.min(j + 999, #members)))
    for k = 1, math.min(1000, #members - j + 1) do scores[j + k - 1] = part[k] end
  end
  local new = 0
  for j, m in ipairs(members) do
    if scores[j] then sums[m] = tonumber(scores[j]) else sums[m] = 0; new = new + 1 end
  end
  if p.bounded and new > 0 and redis.call('ZCARD', key) + new > 2 * keep then
    -- A trim may fall between these increments: apply them one by one (a
    -- bounded row's increments are all 1s, what bump adds).
    for j = 1, #p, 2 do bump(key, p[j]) end
    return
  end
  for j = 1, #p, 2 do sums[p[j]] = sums[p[j]] + p[j + 1] end
  local args = {}
  for _, m in ipairs(members) do
    args[#args + 1] = sums[m]
    args[#args + 1] = m
    if #args >= 1000 then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', key, unpack(args)) end
end

local result = {}
for _, entry in ipairs(batch) do
  local base = prefix .. ':{' .. entry[1] .. '}:'
  local z, h, it = base .. 'z', base .. 'h', base .. 'i'
  -- The window's newest and oldest event times, read once per user and kept
  -- up to date: a prune runs only when something has fallen out of the window
  -- (the items set never holds an older time than the events set), which gives
  -- the same state as pruning after every event.
  local newest, oldest
  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if last[2] then
    newest = tonumber(last[2])
    oldest = tonumber(redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')[2])
  end
  local function prune(cutoff)
    local bound = '(' .. string.format('%d', cutoff)
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', bound)
    for j = 1, #old, 500 do
      redis.call('HDEL', h, unpack(old, j, math.min(j + 499, #old)))
    end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', bound) end
    redis.call('ZREMRANGEBYSCORE', it, '-inf', bound)
    local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    oldest = first[2] and tonumber(first[2]) or nil
  end
  local out = {}
  for _, ev in ipairs(entry[2]) do
    local ts, id, body, cid = ev[1], ev[2], ev[3], ev[4]
    local status
    if redis.call('HSETNX', h, id, body) == 1 then
      redis.call('ZADD', z, ts, id)
      local t = tonumber(ts)
      if not newest or t > newest then newest = t end
      if not oldest or t < oldest then oldest = t end
      local cutoff = newest - window
      if oldest < cutoff then prune(cutoff) end
      if t >= cutoff then
        status = 1
        local inc = tonumber(ev[5])
        if inc > 0 then add(pop, cid, inc, false) end
        if ev[6] == 1 then
          if not redis.call('ZSCORE', it, cid) then
            -- (no partners: not the range 0..-1, which is every item)
            if max_partners > 0 then
              local partners = redis.call('ZREVRANGE', it, 0, max_partners - 1)
              for _, p in ipairs(partners) do
                add(co .. p, cid, 1, true)
                add(co .. cid, p, 1, true)
              end
            end
            add(cnt, cid, 1, false)
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
for _, key in ipairs(pending_keys) do flush(key, pending[key]) end
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


_F64 = np.ndarray[Any, np.dtype[np.float64]]
#: Content ids as one numpy array (of bytes, or of str from a client that decodes).
_Ids = np.ndarray[Any, np.dtype[Any]]


#: Content ids coded for the co-interaction rows before the coding starts over
#: (``_IdCodes``; ~200 bytes each: a catalogue's active items, not every id).
CO_ID_CODES_MAX = 250_000


class _IdCodes:
    """Content ids as small integers, for the co-interaction rows: recall then
    tells thousands of partners apart by their codes (``np.bincount`` over the
    codes) instead of sorting their ids as byte strings, which took 16 % of a
    request's CPU. A row keeps its partners as an int32 array (4 bytes each,
    not a 16-byte string), valid only with the ``_IdCodes`` that coded it."""

    __slots__ = ("codes", "counts", "fresh_until", "names")

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}
        self.names: list[str] = []
        #: Per code: the item's interaction count as last read, and until when
        #: (the row cache's clock) it may be used instead of reading it again.
        self.counts: _F64 = np.zeros(0)
        self.fresh_until: _F64 = np.zeros(0)

    def grow(self) -> None:
        """Make room in ``counts`` and ``fresh_until`` for every code handed out."""
        n = len(self.names)
        if n > len(self.counts):
            size = max(n, 2 * len(self.counts), 1024)
            self.counts = np.concatenate([self.counts, np.zeros(size - len(self.counts))])
            self.fresh_until = np.concatenate(
                [self.fresh_until, np.full(size - len(self.fresh_until), -np.inf)])

    def code(self, members: Sequence[Any]) -> npt.NDArray[np.int32]:
        try:  # every member coded already: the common case, no list in between
            return np.fromiter(map(self.codes.__getitem__, members), dtype=np.int32,
                               count=len(members))
        except KeyError:
            pass
        out = list(map(self.codes.get, members))
        for i, (member, c) in enumerate(zip(members, out, strict=True)):
            if c is None:
                c = self.codes.get(member)
                if c is None:
                    c = self.codes[member] = len(self.names)
                    self.names.append(member.decode() if isinstance(member, bytes)
                                      else member)
                out[i] = c
        return np.array(out, dtype=np.int32)


def _zset_pairs(reply: list[Any]) -> tuple[Sequence[Any], _F64]:
    """Members and scores of a raw, non-empty ``ZRANGE ... WITHSCORES`` reply:
    RESP3 pairs ``[[member, score], ...]`` or a flat RESP2 ``[member, score, ...]``."""
    if isinstance(reply[0], list | tuple):
        members, scores = zip(*reply, strict=True)
    else:
        members, scores = reply[0::2], reply[1::2]
    return members, np.array(scores, dtype=np.float64)


def _co_row(reply: list[Any], ids: _IdCodes) -> tuple[npt.NDArray[np.int32], _F64]:
    """A raw ``ZRANGE ... WITHSCORES`` reply with its members coded by ``ids``."""
    if not reply:
        return np.empty(0, dtype=np.int32), np.empty(0)
    members, scores = _zset_pairs(reply)
    return ids.code(members), scores


def _zset_row(reply: list[Any]) -> tuple[_Ids, _F64]:
    """A raw ``ZRANGE ... WITHSCORES`` reply as its members and scores.

    The members stay one numpy array of bytes (``dtype="S"``; content ids never
    end in NUL, which such an array would drop): no Python object per member
    for the garbage collector to walk while the answer is cached."""
    if not reply:
        return np.empty(0, dtype="S1"), np.empty(0)
    members, scores = _zset_pairs(reply)
    return np.array(members), scores


def _counts(replies: Sequence[Any]) -> _F64:
    """A ``ZMSCORE`` reply as floats, 0.0 for absent members."""
    out = np.array(replies, dtype=np.float64)  # None -> nan
    out[np.isnan(out)] = 0.0
    return out


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def signals_to_json(s: UserSignals) -> bytes:
    """``UserSignals`` as the JSON bytes kept under ``:sig`` (and, by the ingest
    path, in the Faust table): sorted keys, so the same signals give the same bytes.

    An exact-size copy of what orjson returns: orjson >= 3.12 never shrinks its
    output buffer (it sets the length and its final resize is then a no-op) and
    reserves ahead per container, so 3.3 KB of signals come back in a 32 KB block
    (``malloc_usable_size``). The in-memory table keeps one of these per user,
    and an apply batch holds one per touched user: the copy (0.2 us) gives the
    memory back at once."""
    return bytes(memoryview(_dumps(signals_to_dict(s))))


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
        co_partners: int = 30,
        co_keep: int = 300,
        stats_cache_s: float = 0.0,
        stats_cache_rows: int = 2048,
        clock: Callable[[], float] = time.monotonic,
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
        # Serving's reads of the item statistics, kept for ``stats_cache_s``: the
        # popular list, and per item its strongest partners with their counts.
        # Requests share their users' popular items, so most rows come from here.
        self._popular_cache = Expiring(16, stats_cache_s, clock) if stats_cache_s > 0 else None
        self._co_cache = (Expiring(stats_cache_rows, stats_cache_s, clock)
                          if stats_cache_s > 0 else None)
        self._id_codes = _IdCodes()

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
    ) -> tuple[list[AppendStatus], dict[str, list[WindowRow]]]:
        """Append a batch and read back every touched user's window: one Lua call
        for the whole batch, its events packed in a single JSON argument (the
        ingest path's cost is then per batch, not per event or per user).

        Windows come back as ``WindowRow`` tuples, oldest first: what the
        signals need, decoded with one JSON parse per user."""
        if not events:
            return [], {}
        per_user: dict[str, list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            per_user[ev.user_id].append(i)
        half_life = self.popularity_half_life_days
        payload = []
        for uid, idxs in per_user.items():
            rows = []
            for i in idxs:
                ev = events[i]
                ts = datetime_to_ms(ev.timestamp)
                engaging = is_engaging(ev)
                inc = popularity_increment(1.0 if engaging else 0.0, ts, half_life)
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
        windows: dict[str, list[WindowRow]] = {}
        for (uid, idxs), (statuses, bodies) in zip(per_user.items(), results, strict=True):
            for i, st in zip(idxs, statuses, strict=True):
                out[i] = _STATUSES[st]
            if fetch:
                listed = b"[" + b",".join(b for b in bodies if b) + b"]"
                windows[uid] = [(d["ts"], d["c"], d["t"], d["w"]) for d in orjson.loads(listed)]
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
        cache = self._popular_cache
        if cache is not None:
            hit = cache.get(limit, cache.clock())
            if hit is not MISSING:
                return list(cast(list[tuple[str, float]], hit))
        try:
            (reply,) = await self._packed_calls([hiredis.pack_command(
                ("ZREVRANGE", f"{self._prefix}:pop", 0, limit + 19, "WITHSCORES"))])
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        ids, scores = _zset_row(reply)
        top = stable_top(list(zip(id_names(ids), scores.tolist(), strict=True)), limit)
        if cache is not None:
            cache.put(limit, top)
        return list(top)

    async def co_interactions(
        self, item_ids: Sequence[str], *, per_item: int
    ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """Each item's strongest co-interaction partners and every involved item's
        interaction count, in two round trips: ``(rows, counts)``."""
        if not item_ids:
            return {}, {}
        rows, counts, names = await self._co_reads(item_ids, per_item, cached=False)
        named = {cid: ([names[c] for c in ids.tolist()], co, n)
                 for cid, (ids, co, n) in rows.items()}
        for ids, _, n in named.values():
            counts.update((i, c) for i, c in zip(ids, n.tolist(), strict=True) if c > 0)
        return {cid: dict(zip(ids, co.tolist(), strict=True))
                for cid, (ids, co, _) in named.items()}, counts

    async def co_candidates(
        self, weights: Sequence[tuple[str, float]], *, per_item: int, limit: int
    ) -> list[Candidate]:
        """``co_interaction_candidates(dict(weights), *co_interactions(...))[:limit]``
        (same candidates, floats and order), without a Python object per partner:
        the rows stay lists of ids and arrays of counts, and the sums are taken
        with numpy (``top_co_interaction_candidates``).

        Rows read in the last ``stats_cache_s`` are reused (with the counts read
        alongside them), and so is each partner's count read in that time when
        a row is read (``_IdCodes.counts``): the scores may lag the counts by
        that long."""
        w = dict(weights)
        if not w or limit <= 0:
            return []
        rows, counts, names = await self._co_reads(list(w), per_item, cached=True)
        return top_co_interaction_candidates(w, rows, counts, limit, names=names)

    async def _co_reads(
        self, item_ids: Sequence[str], per_item: int, *, cached: bool
    ) -> tuple[dict[str, tuple[_Ids, _F64, _F64]], dict[str, float], list[str]]:
        """Each item's strongest partners as ``(ids, co-interaction counts, the
        partners' interaction counts)``, the items' own interaction counts
        (items never engaged with are left out), and the names of the partners'
        codes (``ids`` holds codes: ``names[code]``; see ``_IdCodes``).

        Two round trips on one connection, packed by hiredis, for the items not
        in the cache (when ``cached`` and the cache is on): the rows, then the
        interaction counts of the items and of their partners, except (with
        the cache on) partners whose count was read in the last
        ``stats_cache_s``: popular items are partners of most rows, and asking
        for ~1,200 counts per request cost the client ~1.5 ms and Redis ~1.6 ms.
        A row stays three numpy arrays (ids as codes): the work per partner is
        numpy's, and a cached row is not a list of thousands of objects for the
        garbage collector to walk on every young collection. A call codes every
        row it returns with one ``_IdCodes`` (a cached row coded by an earlier
        one is read again)."""
        codes = self._id_codes
        if len(codes.names) > CO_ID_CODES_MAX:  # start over: the old rows miss
            codes = self._id_codes = _IdCodes()
        rows: dict[str, tuple[_Ids, _F64, _F64]] = {}
        counts: dict[str, float] = {}
        todo: list[str] = []
        cache = self._co_cache if cached else None
        now = cache.clock() if cache is not None else 0.0
        for cid in dict.fromkeys(item_ids):
            hit = cache.get((cid, per_item), now) if cache is not None else MISSING
            if hit is not MISSING:
                ids, co, n, own, coded_by = cast(tuple[_Ids, _F64, _F64, float, _IdCodes], hit)
                if coded_by is codes:
                    rows[cid] = (ids, co, n)
                    if own > 0:
                        counts[cid] = own
                    continue
            todo.append(cid)
        if not todo:
            return rows, counts, codes.names
        fresh: list[tuple[_Ids, _F64]] = [(np.empty(0, dtype=np.int32), np.empty(0))] * len(todo)

        def row(i: int, reply: Any) -> None:
            fresh[i] = _co_row(reply, codes)

        try:
            await self._packed_calls(
                [hiredis.pack_command(("ZREVRANGE", f"{self._prefix}:co:{cid}", 0, per_item - 1,
                                       "WITHSCORES")) for cid in todo], row)
            codes.grow()
            partners = [ids for ids, _ in fresh if len(ids)]
            every = np.concatenate(partners) if partners else np.empty(0, dtype=np.int32)
            if cache is not None:  # partners whose count was read in the last stats_cache_s
                every = every[codes.fresh_until[every] < cache.clock()]
            stale = np.unique(every)
            names = codes.names
            (scores,) = await self._packed_calls(
                [hiredis.pack_command(("ZMSCORE", f"{self._prefix}:cnt", *todo,
                                       *[names[c] for c in stale.tolist()]))])
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
        found = _counts(scores)
        # No await from here on: the counts written are the ones the rows take.
        codes.counts[stale] = found[len(todo):]
        if cache is not None:
            codes.fresh_until[stale] = cache.clock() + cache.ttl
        for cid, (ids, co), own in zip(todo, fresh, found[:len(todo)].tolist(), strict=True):
            n = codes.counts[ids]
            rows[cid] = (ids, co, n)
            if own > 0:
                counts[cid] = own
            if cache is not None:
                cache.put((cid, per_item), (ids, co, n, own, codes))
        return rows, counts, codes.names

    async def _packed_calls(
        self, packed: list[bytes], each: Callable[[int, Any], None] | None = None
    ) -> list[Any]:
        """Commands packed by hiredis, sent in one write on one connection, and
        their replies as hiredis parses them (RESP3 doubles come as floats, RESP2
        ones as bytes): handed to ``each(i, reply)`` one by one as they are
        read, or else returned. redis-py's asyncio packer is pure Python: for a
        thousand arguments it costs more than the command."""
        pool = self._client.connection_pool
        try:
            conn = await pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            conn = await pool.get_connection("_")  # type: ignore[call-arg,unused-ignore]

        async def call() -> list[Any]:
            await conn.send_packed_command(packed)
            if each is None:
                return [await conn.read_response() for _ in packed]
            for i in range(len(packed)):
                each(i, await conn.read_response())
            return []

        async def failed(_: Exception) -> None:
            await conn.disconnect()

        try:
            return await conn.retry.call_with_retry(call, failed)
        except BaseException:
            await conn.disconnect()  # never reuse a connection with replies pending
            raise
        finally:
            await pool.release(conn)

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
        await self.save_encoded({s.user_id: signals_to_json(s) for s in many})

    async def save_encoded(self, encoded: Mapping[str, bytes]) -> None:
        """Save signals already encoded (``signals_to_json``), keyed by user id:
        one script call per batch."""
        if not encoded:
            return
        try:
            await self._save(keys=[self._key(uid) for uid in encoded],
                             args=[self.ttl_seconds, *encoded.values()])
        except (rexc.RedisError, OSError) as exc:
            raise _translate(exc) from exc
