"""The quick-start demo: feed the bundled events, then print recommendations
obtained over the reply topic (used by ``make run``)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from worker.client import RecsysClient
from worker.settings import load_settings

DEMO = Path(__file__).resolve().parents[1] / "worker" / "demo"
USERS = ["ml_1", "ml_68", "ml_414"]


def titles() -> dict[str, str]:
    import orjson

    out = {}
    for line in (DEMO / "catalog.jsonl").read_bytes().splitlines():
        obj = orjson.loads(line)
        out[obj["id"]] = obj["title"]
    return out


async def main() -> int:
    settings = load_settings()
    names = titles()
    async with RecsysClient(settings.bootstrap_servers, requests_topic=settings.requests_topic,
                            timeout=settings.request_timeout_s) as client:
        for user in USERS:
            deadline = time.monotonic() + 60
            while True:
                reply = await client.recommend(user, k=5)
                if not reply.get("cold_start") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            print(f"\nRecommendations for {user} (over the reply topic):")
            for it in reply.get("items", []):
                print(f"  {names.get(it['content_id'], it['content_id']):55.55} "
                      f"{it['score']:6.3f}  {it['reason']}")
        reply = await client.recommend("a-new-visitor", k=5, query="space adventure")
        print("\nCold start for a new visitor who searched 'space adventure':")
        for it in reply.get("items", []):
            print(f"  {names.get(it['content_id'], it['content_id']):55.55} "
                  f"{it['score']:6.3f}  {it['reason']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
