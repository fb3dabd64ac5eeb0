"""signals_from_windows: several users' signals at once, the same as one by one,
and the same as a plain statement of the rules (the old, per-user code)."""

from __future__ import annotations

import math
import pickle
import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import content
from worker.adapters.redis_store import signals_to_json
from worker.recsys_core.codec import ms_to_datetime, signals_from_dict, signals_to_dict
from worker.recsys_core.config import SignalConfig
from worker.recsys_core.signals import (
    WindowRow,
    base_weight,
    decay,
    preference_vectors,
    signals_from_rows,
    signals_from_windows,
)
from worker.recsys_core.types import Float32Vector, UserSignals

ITEMS = [f"i{n}" for n in range(12)]
TAGS = ["genre:Comedy", "genre:Drama", "genre:Horror", "mood:dark", "mood:light"]
CAT = {c: content(c, *TAGS[n % 5: n % 5 + 1 + n % 3]) for n, c in enumerate(ITEMS[:10])}
DAY = 86_400_000
T0 = 1_780_000_000_000


def _vectors(dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = {c: rng.standard_normal(dim).astype(np.float32) for c in ITEMS[:9]}
    vecs["i8"] = np.zeros(dim, dtype=np.float32)  # a zero vector: adds nothing
    return vecs


def reference(user_id: str, rows: list[WindowRow], *, contents, vectors,  # type: ignore[no-untyped-def]
              config: SignalConfig) -> UserSignals | None:
    """The rules as the per-user code wrote them: key-function sorts, a matrix
    product per user."""
    if not rows:
        return None
    newest = max(r[0] for r in rows)
    weights: dict[str, float] = {}
    last: dict[str, int] = {}
    counts: dict[str, int] = {}
    for ts, cid, etype, w in rows:
        counts[etype] = counts.get(etype, 0) + 1
        weights[cid] = weights.get(cid, 0.0) + (
            base_weight(etype, w, config) * decay(newest - ts, config.half_life_days))
        if ts >= last.get(cid, ts):
            last[cid] = ts
    tags: dict[str, float] = {}
    for cid, w in weights.items():
        for tag in contents[cid].tags if cid in contents else ():
            tags[tag] = tags.get(tag, 0.0) + w
    top_tags = sorted(tags.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[: config.max_tags]
    top = sorted(((c, w) for c, w in weights.items() if w > 0 and c in vectors),
                 key=lambda cw: (-cw[1], cw[0]))[: config.max_vector_items]
    pv = None
    if top:
        acc = np.array([w for _, w in top]) @ np.array([vectors[c] for c, _ in top],
                                                        dtype=np.float64)
        norm = math.sqrt(acc.dot(acc))
        if norm and math.isfinite(norm):
            pv = tuple((acc / norm).astype(np.float32).tolist())
    return UserSignals(
        user_id=user_id, as_of=ms_to_datetime(newest),
        event_count=len(rows), counts_by_type=dict(sorted(counts.items())),
        item_weights={c: round(w, 6) for c, w in sorted(weights.items())},
        tag_affinities={t: round(w, 6) for t, w in top_tags},
        recent_ids=tuple(sorted(last, key=lambda c: (-last[c], c))[: config.max_recent]),
        seen_ids=frozenset(weights), preference_vector=pv)

row = st.tuples(
    st.integers(0, 40 * DAY).map(lambda back: T0 - back),
    st.sampled_from(ITEMS),
    st.sampled_from(["view", "add_to_cart", "purchase", "rate", "remove_from_cart"]),
    st.one_of(st.none(), st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0, 5.0])),
)
windows = st.lists(st.lists(row, max_size=25), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(windows, st.sampled_from([0.0, 7.0, 30.0]), st.sampled_from([3, 50]),
       st.integers(0, 3))
def test_batch_equals_one_by_one_and_the_plain_rules(
        many: list[list[WindowRow]], half_life: float, limit: int, seed: int) -> None:
    cfg = SignalConfig(half_life_days=half_life, max_vector_items=limit, max_tags=3,
                       max_recent=4)
    vecs = _vectors(8, seed)
    users = [(f"u{n}", rows) for n, rows in enumerate(many)]
    batch = signals_from_windows(users, contents=CAT, vectors=vecs, config=cfg)
    for (uid, rows), got in zip(users, batch, strict=True):
        alone = signals_from_rows(uid, rows, contents=CAT, vectors=vecs, config=cfg)
        assert got == alone
        if got is not None:  # the same bytes stored, whichever way computed
            assert signals_to_json(got) == signals_to_json(alone)  # type: ignore[arg-type]
        want = reference(uid, rows, contents=CAT, vectors=vecs, config=cfg)
        if want is None or got is None:
            assert got is want is None
            continue
        assert (got.preference_vector is None) == (want.preference_vector is None)
        if want.preference_vector is not None:
            # a sum per user instead of a matrix product: equal up to the last
            # bits of the float64 sum, before the rounding to float32
            assert got.preference_vector == pytest.approx(want.preference_vector, abs=1e-6)
        assert replace(got, preference_vector=None) == replace(want, preference_vector=None)


def test_a_vector_of_another_dimension_is_computed_on_its_own() -> None:
    vecs = {**_vectors(8, 1), "x": np.ones(4, dtype=np.float32)}
    many = [{"i1": 1.0, "i2": 2.0}, {"x": 1.0}, {"i8": 1.0}, {}, {"i3": 0.5}]
    got = preference_vectors(many, vecs)
    assert got == [preference_vectors([w], vecs)[0] for w in many]
    assert got[1] == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert got[2] is None and got[3] is None  # a zero vector only; nothing liked


def test_float32_vector_reads_as_the_tuple_of_its_values_and_packs_its_bytes() -> None:
    (v,) = preference_vectors([{"i1": 1.0, "i2": 0.25}], _vectors(8, 2))
    assert isinstance(v, Float32Vector)
    plain = tuple(v)
    assert len(v) == 8 and list(v) == list(plain) and v[0] == plain[0] and v[-2:] == plain[-2:]
    assert v == plain and plain == v and hash(v) == hash(plain)
    assert v == Float32Vector(struct.pack("<8f", *plain)) and v != plain[:-1]
    assert v.raw == struct.pack("<8f", *plain)
    s = UserSignals(user_id="u", as_of=ms_to_datetime(T0),
                    event_count=1, counts_by_type={"view": 1}, item_weights={"i1": 1.0},
                    tag_affinities={}, recent_ids=("i1",), seen_ids=frozenset({"i1"}),
                    preference_vector=v)
    d = signals_to_dict(s)
    assert d == signals_to_dict(replace(s, preference_vector=plain))
    assert signals_from_dict(d).preference_vector == plain
    assert signals_from_dict(d) == s
    assert pickle.loads(pickle.dumps(v)) == plain
    with pytest.raises(ValueError):
        Float32Vector(b"123")
