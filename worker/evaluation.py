"""Offline evaluation on MovieLens through the product's own code.

Every rating becomes a RudderStack ``Product Reviewed`` payload (``product_id``
``content_<movieId>``, the rating as given) and goes, in time order, through the
real normaliser (``parse_batch``), the event buffer, signals and ranking (the
same ``IngestPipeline`` and ``Recommender`` the worker runs), with the catalogue
(title embeddings by the real FastEmbed model, genres as ``genre:<name>`` tags)
in the configured content store.

Protocol: per user, in time order, the last 20 % of interactions (at least one)
are held out; users with fewer than 5 are skipped; the recommender sees only
the earlier ones (all users' training interactions are ingested, then each user
is asked for 10 items excluding everything they rated in training); a hit is a
held-out item rated >= 4.0; users with no such item are not scored. Baselines
from the same training interactions: ``popularity`` (most interacted) and
``itemknn`` (item-item cosine over co-interactions, 50 nearest neighbours).

MovieLens ratings start in 1996, before the normaliser's plausibility window
(2010 onwards), so every timestamp is shifted by one constant (order and gaps
are kept) and the normaliser's ``now`` is the last shifted rating plus a day.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from worker.pipeline import IngestPipeline, parse_batch
from worker.serving import Recommender, Request

K = 10
HOLDOUT = 0.2
MIN_INTERACTIONS = 5
RELEVANT = 4.0
_PLAUSIBLE_FROM = datetime(2010, 1, 2, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rating:
    user: str
    movie: str
    rating: float
    ts: int  # epoch seconds, as in ratings.csv


@dataclass
class Split:
    train: list[Rating]
    train_items: dict[str, set[str]]
    relevant: dict[str, set[str]]  # held-out items rated >= 4.0, per scored user
    users_with_holdout: int
    shift: timedelta
    now: datetime
    catalogue_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def read_ratings(path: Path) -> list[Rating]:
    with (path / "ratings.csv").open(newline="") as fh:
        return [Rating(r["userId"], r["movieId"], float(r["rating"]), int(r["timestamp"]))
                for r in csv.DictReader(fh)]


def split(ratings: Sequence[Rating], *, latest: datetime | None = None) -> Split:
    """The per-user temporal hold-out split described in the module docstring.

    With ``latest``, timestamps are shifted so the last rating falls a day before
    it, when the whole span still starts after 2010 (a live worker judges
    plausibility against the wall clock).
    """
    by_user: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_user[r.user].append(r)
    train: list[Rating] = []
    train_items: dict[str, set[str]] = {}
    relevant: dict[str, set[str]] = {}
    n_users = 0
    for user, rs in by_user.items():
        if len(rs) < MIN_INTERACTIONS:
            continue
        rs.sort(key=lambda r: (r.ts, r.movie))
        n_test = max(1, round(len(rs) * HOLDOUT))
        head, tail = rs[:-n_test], rs[-n_test:]
        n_users += 1
        train += head
        train_items[user] = {r.movie for r in head}
        rel = {r.movie for r in tail if r.rating >= RELEVANT}
        if rel:
            relevant[user] = rel
    train.sort(key=lambda r: (r.ts, r.user, r.movie))
    first = datetime.fromtimestamp(min(r.ts for r in ratings), tz=UTC)
    last = datetime.fromtimestamp(max(r.ts for r in ratings), tz=UTC)
    shift = max(timedelta(0), _PLAUSIBLE_FROM - first)
    shift = timedelta(days=math.ceil(shift / timedelta(days=1)))
    if latest is not None:
        wanted = timedelta(days=(latest - timedelta(days=1) - last).days)
        if first + wanted >= _PLAUSIBLE_FROM:
            shift = wanted
    last = last + shift
    return Split(train, train_items, relevant, n_users, shift, last + timedelta(days=1))


def payload(r: Rating, shift: timedelta) -> bytes:
    """A RudderStack ``Product Reviewed`` track call for one rating."""
    ts = datetime.fromtimestamp(r.ts, tz=UTC) + shift
    return orjson.dumps({
        "type": "track",
        "event": "Product Reviewed",
        "userId": r.user,
        "messageId": f"ml-{r.user}-{r.movie}",
        "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": {"product_id": f"content_{r.movie}", "rating": r.rating},
    })


async def ingest(pipeline: IngestPipeline, sp: Split, *, batch: int = 1000,
                 progress: Any = None) -> dict[str, int]:
    """Feed the training interactions through the normaliser and the pipeline."""
    written = rejected = 0
    for start in range(0, len(sp.train), batch):
        chunk = sp.train[start : start + batch]
        parsed = parse_batch([(r.user.encode(), payload(r, sp.shift), "eval") for r in chunk],
                             now=sp.now)
        rejected += len(parsed.dead_letters)
        result = await pipeline.apply(parsed.interactions)
        written += result.added
        if progress is not None:
            progress.update(len(chunk))
    return {"interactions_written": written, "rejected": rejected}


async def recommend_all(
    recommender: Recommender, users_store: Any, sp: Split, *, progress: Any = None
) -> dict[str, list[str]]:
    """Ask the recommender for every scored user, as the worker would answer."""
    out: dict[str, list[str]] = {}
    for user in sorted(sp.relevant, key=int):
        out[user] = await recommend_one(recommender, users_store, sp, user)
        if progress is not None:
            progress.update(1)
    return out


async def recommend_one(recommender: Recommender, users_store: Any, sp: Split,
                        user: str) -> list[str]:
    signals = await users_store.get_signals(user)
    req = Request(user, K, None, tuple(sorted(sp.train_items[user])))
    rec = await recommender.recommend(req, signals)
    return [it.content_id for it in rec.items]


def metrics(recs: dict[str, list[str]], relevant: dict[str, set[str]],
            catalogue_size: int) -> dict[str, float]:
    """HR@10, NDCG@10 (binary relevance), Recall@10 and catalogue coverage."""
    hr = ndcg = recall = 0.0
    shown: set[str] = set()
    for user, rel in relevant.items():
        items = recs.get(user, [])[:K]
        shown.update(items)
        hits = [1.0 if i in rel else 0.0 for i in items]
        hr += 1.0 if any(hits) else 0.0
        recall += sum(hits) / len(rel)
        dcg = sum(h / math.log2(p + 2) for p, h in enumerate(hits))
        idcg = sum(1 / math.log2(p + 2) for p in range(min(len(rel), K)))
        ndcg += dcg / idcg
    n = max(len(relevant), 1)
    return {
        "hr@10": round(hr / n, 4),
        "ndcg@10": round(ndcg / n, 4),
        "recall@10": round(recall / n, 4),
        "coverage": round(len(shown) / max(catalogue_size, 1), 4),
    }


def baselines(sp: Split, catalogue: Sequence[str], *, neighbours: int = 50
              ) -> dict[str, dict[str, list[str]]]:
    """``popularity`` and ``itemknn`` recommendations from the training data."""
    import numpy as np

    items = sorted(set(catalogue) | {r.movie for r in sp.train})
    idx = {m: i for i, m in enumerate(items)}
    users = sorted(sp.train_items)
    uidx = {u: i for i, u in enumerate(users)}
    x = np.zeros((len(users), len(items)), dtype=np.float32)
    for r in sp.train:
        x[uidx[r.user], idx[r.movie]] = 1.0
    pop = x.sum(axis=0)
    norms = np.sqrt(pop) + 1e-9
    sim = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    if neighbours < len(items):
        kth = -np.partition(-sim, neighbours, axis=1)[:, neighbours : neighbours + 1]
        sim[sim < kth] = 0.0

    def top(scores: Any, user: str) -> list[str]:
        s = scores.astype(np.float64).copy()
        for m in sp.train_items[user]:
            s[idx[m]] = -np.inf
        order = np.lexsort((np.arange(len(items)), -s))[:K]
        return [items[i] for i in order]

    out: dict[str, dict[str, list[str]]] = {"popularity": {}, "itemknn": {}}
    for user in sp.relevant:
        out["popularity"][user] = top(pop, user)
        out["itemknn"][user] = top(x[uidx[user]] @ sim, user)
    return out
