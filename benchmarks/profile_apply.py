"""Profile the ingest hot path in-process (no Kafka): parse_batch + IngestPipeline.apply
on real Redis, with the demo catalogue in an embedded Qdrant copy.

  python benchmarks/profile_apply.py [--events 50000] [--users 20000]
      [--profile [--sort cumulative] [--top 40]]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.harness import gen_events  # noqa: E402
from worker.bootstrap import build_adapters, build_services  # noqa: E402
from worker.pipeline import parse_batch  # noqa: E402
from worker.settings import load_settings  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(args.qdrant, tmp / "q")
    s = load_settings(redis_url=args.redis_url, key_prefix="prof", qdrant_path=tmp / "q",
                      qdrant_collection=args.collection)
    ad = build_adapters(s)
    svc = build_services(ad)
    from redis.asyncio import Redis

    r = Redis.from_url(args.redis_url)
    await r.flushdb()
    await r.aclose()
    recs = gen_events(args.events, users=args.users, seed=1)
    batches = [recs[i:i + args.batch] for i in range(0, len(recs), args.batch)]
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    n = 0
    if prof:
        prof.enable()
    for b in batches:
        parsed = parse_batch([(k, v, "p") for k, v in b])
        await svc.pipeline.apply(parsed.interactions)
        n += len(parsed.interactions)
    if prof:
        prof.disable()
    dt = time.perf_counter() - t0
    print(f"{len(recs)} records ({n} interactions) in {dt:.2f}s: {len(recs)/dt:.0f} records/s")
    if prof:
        pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
    await ad.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--redis-url", default="redis://127.0.0.1:16379/4")
    p.add_argument("--qdrant", type=Path, default=ROOT / ".stack" / "qdrant")
    p.add_argument("--collection", default="content")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--sort", default="tottime")
    p.add_argument("--top", type=int, default=18)
    asyncio.run(main(p.parse_args()))
