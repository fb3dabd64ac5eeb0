"""signals_to_json: the bytes the table keeps (one per user) and Redis gets are
exact-size, whatever orjson's output buffer reserved."""

import tracemalloc
from datetime import UTC, datetime

import orjson

from worker.adapters.redis_store import signals_to_json
from worker.recsys_core.codec import signals_to_dict
from worker.recsys_core.types import UserSignals


def _signals(items: int) -> UserSignals:
    ids = [f"content_{i}" for i in range(items)]
    return UserSignals(user_id="u", as_of=datetime(2026, 1, 1, tzinfo=UTC), event_count=items,
                       counts_by_type={"view": items}, item_weights=dict.fromkeys(ids, 0.5),
                       tag_affinities={f"genre:g{i}": 1.0 for i in range(20)},
                       recent_ids=tuple(ids[:20]), seen_ids=frozenset(ids),
                       preference_vector=tuple([0.1] * 384))


def test_signals_json_keeps_no_spare_buffer() -> None:
    s = _signals(50)
    signals_to_json(s)  # warm up caches
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        raw = signals_to_json(s)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # orjson >= 3.12 alone returns these ~4 KB in a 32 KB block
    assert kept < len(raw) + 1024, (kept, len(raw))
    assert raw == orjson.dumps(signals_to_dict(s), option=orjson.OPT_SORT_KEYS)
