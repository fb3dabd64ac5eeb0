"""Regenerate the bundled demo data (worker/demo/) from MovieLens ml-latest-small.

Dev-only: the product ships the generated files and never reads ../shared.
  python scripts/make_demo.py [path/to/ml-latest-small]
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "worker" / "demo"
N_MOVIES = 1500
DEMO_USERS = ["1", "68", "414"]
BASE = datetime(2025, 10, 1, tzinfo=UTC)


def main(src: Path) -> None:
    ratings = list(csv.DictReader((src / "ratings.csv").open()))
    counts = Counter(r["movieId"] for r in ratings)
    keep = {m for m, _ in counts.most_common(N_MOVIES)}
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "catalog.jsonl").open("w") as fh:
        for row in csv.DictReader((src / "movies.csv").open()):
            if row["movieId"] not in keep:
                continue
            genres = [g for g in row["genres"].split("|") if g != "(no genres listed)"]
            fh.write(json.dumps({"id": row["movieId"], "title": row["title"],
                                 "tags": [f"genre:{g}" for g in genres]}) + "\n")
    per_user: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in ratings:
        if r["userId"] in DEMO_USERS and r["movieId"] in keep:
            per_user[r["userId"]].append(r)
    ns = uuid.UUID("6f1c7a52-3c1e-4f0e-9a57-1b7e3f0c2d11")
    with (OUT / "events.jsonl").open("w") as fh:
        for user, rows in per_user.items():
            rows.sort(key=lambda r: int(r["timestamp"]))
            rows = rows[-60:]  # the user's latest 60 ratings, spread over 20 days
            for i, r in enumerate(rows):
                ts = BASE + timedelta(hours=8 * i)
                fh.write(json.dumps({
                    "type": "track", "event": "Product Reviewed",
                    "userId": f"ml_{user}",
                    "messageId": str(uuid.uuid5(ns, f"{user}:{r['movieId']}")),
                    "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "properties": {"product_id": f"content_{r['movieId']}",
                                   "rating": float(r["rating"])},
                }) + "\n")
    shutil.copy(src / "README.txt", OUT / "MOVIELENS-LICENSE.txt")
    print(f"wrote {OUT}: {len(keep)} movies, users {DEMO_USERS}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" /
         "ml-latest-small")
