"""`make eval`: recommendation quality on MovieLens ml-latest-small, measured through
the product's own code (see worker/evaluation.py for the protocol), beside the
popularity and item-kNN baselines computed in the same run.

Writes benchmarks/results/quality.json and quality.png.

  python benchmarks/eval_quality.py [--data DIR] [--redis-url URL]

Without --redis-url (or EVAL_REDIS_URL) the in-memory stores are used; `make eval`
passes the local stack's Redis (database 2, flushed first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker import evaluation as ev  # noqa: E402
from worker.bootstrap import build_adapters, build_services  # noqa: E402
from worker.catalog import load_catalog, read_movielens  # noqa: E402
from worker.settings import load_settings  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small"
RESULTS = ROOT / "benchmarks" / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("ML_PATH", DEFAULT_DATA)))
    p.add_argument("--redis-url", default=os.environ.get("EVAL_REDIS_URL"))
    p.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "eval")
    p.add_argument("--popularity-half-life-days", type=float, default=3650.0)
    return p.parse_args()


def eval_settings(args: argparse.Namespace) -> object:
    overrides: dict[str, object] = {
        "qdrant_path": args.cache / "qdrant-movielens",
        "qdrant_collection": "movies",
        "key_prefix": "eval",
        # MovieLens spans 22 years of retrospective ratings: "popular" here means
        # popular over years, not this week's trend (the live default is 7 days).
        "popularity_half_life_days": args.popularity_half_life_days,
    }
    if args.redis_url:
        overrides["redis_url"] = args.redis_url
    return load_settings(**overrides)


async def run(args: argparse.Namespace) -> dict[str, object]:
    from tqdm import tqdm

    settings = eval_settings(args)
    catalogue = list(read_movielens(args.data / "movies.csv"))
    adapters = build_adapters(settings)  # type: ignore[arg-type]
    try:
        store = adapters.content
        await store.ensure_collection(adapters.embedder.dim)
        if await store.count() != len(catalogue):
            with tqdm(total=len(catalogue), unit="item", desc="embedding catalogue") as bar:
                await load_catalog(catalogue, store=store, embedder=adapters.embedder,
                                   progress=bar)
        if args.redis_url:
            from redis.asyncio import Redis

            client = Redis.from_url(args.redis_url)
            async for key in client.scan_iter(match="eval:*", count=5000):
                await client.delete(key)
            await client.aclose()
        services = build_services(adapters)
        sp = ev.split(ev.read_ratings(args.data))
        t0 = time.perf_counter()
        with tqdm(total=len(sp.train), unit="event", desc="ingesting") as bar:
            counts = await ev.ingest(services.pipeline, sp, progress=bar)
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with tqdm(total=len(sp.relevant), unit="user", desc="recommending") as bar:
            recs = await ev.recommend_all(services.recommender, adapters.users, sp,
                                          progress=bar)
        serve_s = time.perf_counter() - t0
    finally:
        await adapters.aclose()
    base = ev.baselines(sp, [c.id for c in catalogue])
    methods = {"recsys": ev.metrics(recs, sp.relevant, len(catalogue))}
    for name, r in base.items():
        methods[name] = ev.metrics(r, sp.relevant, len(catalogue))
    pop = methods["popularity"]["ndcg@10"]
    return {
        "dataset": f"MovieLens {args.data.name}: {len(catalogue)} movies, "
                   f"{len(sp.train_items)} users with >= {ev.MIN_INTERACTIONS} ratings",
        "protocol": (
            "per user, time-ordered: last 20% (>=1) held out; users with <5 interactions "
            "skipped; all training interactions ingested through the product (normaliser, "
            "buffer, signals, ranking), then 10 items asked per user excluding everything "
            "rated in training; hit = held-out item rated >= 4.0; users without such an "
            "item not scored; baselines from the same training interactions"
        ),
        "users_evaluated": len(sp.relevant),
        "methods": methods,
        "ratios": {
            "recsys_vs_popularity_ndcg": round(methods["recsys"]["ndcg@10"] / pop, 3),
            "recsys_vs_itemknn_ndcg": round(
                methods["recsys"]["ndcg@10"] / methods["itemknn"]["ndcg@10"], 3),
        },
        "settings": {
            "stores": "redis" if args.redis_url else "in-memory",
            "content_store": "embedded qdrant (qdrant-edge-py)",
            "embedding_model": "sentence-transformers/all-MiniLM-L6-v2 (FastEmbed, int8 ONNX)",
            "window_days": settings.window_days,  # type: ignore[attr-defined]
            "popularity_half_life_days": args.popularity_half_life_days,
            "co_partners": settings.co_partners,  # type: ignore[attr-defined]
            "co_keep": settings.co_keep,  # type: ignore[attr-defined]
            "itemknn_neighbours": 50,
            "timestamp_shift_days": sp.shift.days,
        },
        "timing_s": {"ingest": round(ingest_s, 1), "recommend": round(serve_s, 1)},
        "ingest": counts,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: dict[str, dict[str, float]] = result["methods"]  # type: ignore[assignment]
    names = list(methods)
    metrics = ["hr@10", "ndcg@10", "recall@10", "coverage"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 3.6))
    for ax, m in zip(axes, metrics, strict=True):
        vals = [methods[n][m] for n in names]
        bars = ax.bar(names, vals, color=["#2b7bba", "#999999", "#e08214"])
        ax.set_title(m)
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom",
                    fontsize=8)
    fig.suptitle(f"MovieLens quality, {result['users_evaluated']} users", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    args = parse_args()
    if not (args.data / "ratings.csv").exists():
        print(f"eval skipped: MovieLens not found at {args.data} "
              "(pass --data DIR or set ML_PATH)")
        return 0
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(result["methods"], indent=2))
    print(json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
