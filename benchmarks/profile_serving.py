"""Profile one recommendation computed in-process (no Kafka): ``Recommender.recommend``
on real Redis, with the catalogue in a copy of an embedded Qdrant.

Fills the Redis database once (synthetic RudderStack events applied through
``IngestPipeline.apply``, as ``make bench`` would through the worker), then reads
the signals of ``--requests`` sampled users (not timed) and times
``recommend(Request(user, k=10), signals)`` sequentially; prints p50/p90/p99/max.

Catalogue: the MovieLens embedded Qdrant ``make bench`` caches
(``.cache/bench/qdrant-movielens-ml-latest-small``, events with the same Zipf-like
item popularity as the benchmark) when present, else the demo catalogue in
``.stack/qdrant`` (``--catalogue demo``).

  python benchmarks/profile_serving.py [--profile] [--refill]
  python benchmarks/profile_serving.py --save before.json    # record the results
  python benchmarks/profile_serving.py --compare before.json # prove they are identical

The database (default redis://127.0.0.1:16379/5) is flushed only when it is
filled (first run, or ``--refill``); ``--save``/``--compare`` need the same fill.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.perf_events import EventFactory, user_id  # noqa: E402
from worker.bootstrap import build_adapters, build_services  # noqa: E402
from worker.catalog import read_catalog  # noqa: E402
from worker.pipeline import parse_batch  # noqa: E402
from worker.serving import Request  # noqa: E402
from worker.settings import load_settings  # noqa: E402

ML_MOVIES = ROOT.parent / "shared" / "data" / "ml-latest-small" / "movies.csv"
ML_QDRANT = ROOT / ".cache" / "bench" / "qdrant-movielens-ml-latest-small"
CATALOGUES = {  # name: (catalogue file, embedded qdrant, collection)
    "movielens": (ML_MOVIES, ML_QDRANT, "movies"),
    "demo": (ROOT / "worker" / "demo" / "catalog.jsonl", ROOT / ".stack" / "qdrant", "content"),
}
_FILLED = "profserve:filled"  # marker key: what the database was filled with


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def fill(svc: Any, client: Any, args: argparse.Namespace, ids: list[str]) -> None:
    await client.flushdb()
    factory = EventFactory(ids, users=args.users, seed=12)
    t0 = time.perf_counter()
    batch: list[tuple[bytes, bytes, str]] = []
    n = 0
    for key, value, _ in factory.stream(args.events):
        batch.append((key, value, "p"))
        if len(batch) == args.batch:
            await svc.pipeline.apply(parse_batch(batch).interactions)
            n += len(batch)
            batch = []
            if n % 50_000 == 0:
                print(f"  applied {n:,}/{args.events:,}", file=sys.stderr)
    if batch:
        await svc.pipeline.apply(parse_batch(batch).interactions)
    await client.set(_FILLED, f"{args.catalogue}:{args.events}:{args.users}")
    print(f"filled {args.events:,} events over {args.users:,} users in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)


def as_json(rec: Any) -> list[list[Any]]:
    return [[it.content_id, it.score, it.reason, list(it.sources)] for it in rec.items]


async def main(args: argparse.Namespace) -> int:
    cat_file, qdrant, coll = CATALOGUES[args.catalogue]
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(qdrant, tmp / "q")
    s = load_settings(redis_url=args.redis_url, key_prefix="profserve", qdrant_path=tmp / "q",
                      qdrant_collection=coll, embedding="hash")
    ad = build_adapters(s)
    svc = build_services(ad)
    from redis.asyncio import Redis

    client = Redis.from_url(args.redis_url)
    try:
        want = f"{args.catalogue}:{args.events}:{args.users}"
        have = await client.get(_FILLED)
        if args.refill or have is None or have.decode() != want:
            await fill(svc, client, args, [c.id for c in read_catalog(cat_file)])
        rng = random.Random(7)
        users = [user_id(rng.randrange(args.users)) for _ in range(args.requests)]
        pool = sorted(await client.zrange("profserve:pop", 0, -1)) if args.exclude else []
        reqs = {u: Request(u, args.k, query=args.query,
                           exclude=tuple(m.decode() for m in rng.sample(pool, min(args.exclude,
                                                                                  len(pool)))))
                for u in dict.fromkeys(users)}
        signals = {u: await ad.users.get_signals(u) for u in set(users)}
        rec = svc.recommender
        stages: dict[str, list[float]] = {}

        def observe(stage: str, seconds: float) -> None:
            stages.setdefault(stage, []).append(seconds * 1000)

        for u in users[: args.warmup]:
            await rec.recommend(reqs[u], signals[u])
        prof = cProfile.Profile() if args.profile else None
        lat: list[float] = []
        cpu: list[float] = []
        rec.observe = observe
        if args.gc_freeze:
            gc.freeze()  # what a worker can do once started: full collections skip the heap so far
        gc_before = [st["collections"] for st in gc.get_stats()]
        results: dict[str, list[list[Any]]] = {}
        for u in users:
            if prof:
                prof.enable()
            t, c = time.perf_counter(), time.process_time()
            out = await rec.recommend(reqs[u], signals[u])
            lat.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            if prof:
                prof.disable()
            results[u] = as_json(out)
        gc_runs = [st["collections"] - b for st, b in zip(gc.get_stats(), gc_before, strict=True)]
        ms = [x * 1000 for x in lat]
        print(f"{len(ms)} requests (k={args.k}, {args.catalogue}, sequential): "
              f"p50 {pct(ms, .5):.2f} ms, p90 {pct(ms, .9):.2f} ms, p99 {pct(ms, .99):.2f} ms, "
              f"max {max(ms):.2f} ms, mean {statistics.fmean(ms):.2f} ms")
        cms = [x * 1000 for x in cpu]
        print(f"  this process's CPU per request: p50 {pct(cms, .5):.2f} ms, "
              f"p99 {pct(cms, .99):.2f} ms (the rest is waiting: Redis, other processes)")
        print(f"  garbage collections during the requests (gen 0/1/2): {gc_runs}; "
              f"{len(gc.get_objects())} tracked objects")
        for stage, xs in sorted(stages.items()):
            print(f"  stage {stage:<8} p50 {pct(xs, .5):6.2f} ms  p99 {pct(xs, .99):6.2f} ms")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
            pstats.Stats(prof).sort_stats("cumtime").print_stats(args.top)
        if args.save:
            args.save.write_text(json.dumps(results, indent=0, sort_keys=True))
            print(f"saved {len(results)} users' results to {args.save}")
        if args.compare:
            before = json.loads(args.compare.read_text())
            diff = [u for u in results if before.get(u) != results[u]]
            missing = [u for u in results if u not in before]
            print(f"compared {len(results)} users with {args.compare}: "
                  f"{len(results) - len(diff)} identical, {len(diff)} different"
                  + (f" ({len(missing)} not in the file)" if missing else ""))
            for u in diff[:5]:
                print(f"  {u}:\n    before {before.get(u)}\n    after  {results[u]}")
            if diff:
                return 1
    finally:
        await client.aclose()
        await ad.aclose()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--exclude", type=int, default=0,
                   help="exclude this many random items per request (as the evaluation does)")
    p.add_argument("--query", help="a query text sent with every request (hash embedding)")
    p.add_argument("--events", type=int, default=200_000, help="records applied by the fill")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--catalogue", choices=sorted(CATALOGUES),
                   default="movielens" if ML_QDRANT.exists() and ML_MOVIES.exists() else "demo")
    p.add_argument("--refill", action="store_true", help="flush and fill the database again")
    p.add_argument("--redis-url", default="redis://127.0.0.1:16379/5")
    p.add_argument("--profile", action="store_true", help="cProfile the timed requests")
    p.add_argument("--gc-freeze", action="store_true",
                   help="gc.freeze() before the requests (the heap so far out of full collections)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--save", type=Path, help="write the results (per user) to this JSON file")
    p.add_argument("--compare", type=Path, help="compare the results with a --save file")
    sys.exit(asyncio.run(main(p.parse_args())))
