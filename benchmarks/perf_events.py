"""Synthetic RudderStack traffic for `make bench` (benchmarks/bench_perf.py).

Track events as RudderStack's JavaScript SDK sends them, trimmed to ~700 bytes:
``Product Viewed`` / ``Product Added`` (one item), ``Order Completed`` with 1-3
``products[]``, ``Product Reviewed`` with a rating. Users are drawn uniformly
from ``usr_<n>``; items from the catalogue's ids (``content_<movieId>``) with a
Zipf-like popularity. Records are keyed by user id, like RudderStack's Kafka
destination. Every ``messageId`` is unique, so the number of interactions the
worker must buffer is known in advance (``Generated.interactions``).
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

# (event name, share of the traffic)
MIX: tuple[tuple[str, float], ...] = (
    ("Product Viewed", 0.55),
    ("Product Added", 0.20),
    ("Order Completed", 0.10),
    ("Product Reviewed", 0.15),
)
_UAS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
)
_LOCALES = ("en-GB", "en-US", "de-DE", "fr-FR")


def user_id(n: int) -> str:
    return f"usr_{n:06d}"


def iso_ms(ts_ms: int) -> str:
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


class EventFactory:
    """Builds raw RudderStack records ``(key, value)`` and counts their interactions."""

    def __init__(self, content_ids: Sequence[str], *, users: int, seed: int,
                 now: datetime | None = None, max_age_days: float = 20.0) -> None:
        self.rng = random.Random(seed)
        self.content_ids = list(content_ids)
        # Zipf-like item popularity (exponent 0.9): a few blockbusters, a long tail.
        weights = [1.0 / (r + 10) ** 0.9 for r in range(len(self.content_ids))]
        self.rng.shuffle(self.content_ids)
        self.cum = list(itertools.accumulate(weights))
        self.users = users
        self.now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
        self.max_age_ms = int(max_age_days * 86_400_000)
        self.names = [m[0] for m in MIX]
        self.name_cum = list(itertools.accumulate(m[1] for m in MIX))

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _item(self) -> str:
        return self.rng.choices(self.content_ids, cum_weights=self.cum, k=1)[0]

    def record(self, *, uid: str | None = None, ts_ms: int | None = None,
               event: str | None = None) -> tuple[bytes, bytes, int]:
        """One record: ``(key, value, interactions it yields)``.

        ``ts_ms`` defaults to a time within the last ``max_age_days`` (inside the
        worker's 30-day window, so nothing is pruned).
        """
        rng = self.rng
        uid = uid or user_id(rng.randrange(self.users))
        if ts_ms is None:
            ts_ms = self.now_ms - rng.randrange(60_000, self.max_age_ms)
        name = event or rng.choices(self.names, cum_weights=self.name_cum, k=1)[0]
        item = self._item()
        props: dict[str, Any]
        n = 1
        if name == "Order Completed":
            n = rng.randint(1, 3)
            items = {item}
            while len(items) < n:
                items.add(self._item())
            props = {
                "order_id": f"ord_{rng.getrandbits(40):010x}",
                "currency": "EUR",
                "revenue": round(rng.uniform(5, 60) * n, 2),
                "products": [{"product_id": f"content_{c}", "quantity": 1,
                              "price": round(rng.uniform(3, 20), 2)} for c in sorted(items)],
            }
            n = len(items)
        else:
            props = {"product_id": f"content_{item}", "price": round(rng.uniform(3, 20), 2)}
            if name == "Product Reviewed":
                props["rating"] = rng.randint(1, 10) / 2
        page = f"/movies/content_{item}"
        body = {
            "anonymousId": self._uuid(),
            "channel": "web",
            "context": {
                "library": {"name": "RudderLabs JavaScript SDK", "version": "3.11.2"},
                "locale": rng.choice(_LOCALES),
                "page": {"path": page, "url": f"https://shop.example{page}"},
                "userAgent": rng.choice(_UAS),
                "ip": f"203.0.113.{rng.randrange(1, 255)}",
            },
            "event": name,
            "messageId": self._uuid(),
            "originalTimestamp": iso_ms(ts_ms - 40),
            "properties": props,
            "receivedAt": iso_ms(ts_ms + 350),
            "sentAt": iso_ms(ts_ms + 310),
            "timestamp": iso_ms(ts_ms),
            "type": "track",
            "userId": uid,
        }
        return uid.encode(), orjson.dumps(body), n

    def stream(self, count: int) -> Iterator[tuple[bytes, bytes, int]]:
        for _ in range(count):
            yield self.record()


@dataclass
class Generated:
    records: int = 0
    interactions: int = 0
    bytes: int = 0

    def add(self, value: bytes, n: int) -> None:
        self.records += 1
        self.interactions += n
        self.bytes += len(value)

    @property
    def mean_bytes(self) -> float:
        return self.bytes / self.records if self.records else 0.0


def sample(content_ids: Sequence[str], n: int = 5) -> list[dict[str, Any]]:
    """A few decoded records (for a look at what is sent)."""
    f = EventFactory(content_ids, users=100, seed=1, now=datetime.now(UTC) - timedelta(0))
    return [orjson.loads(f.record()[1]) for _ in range(n)]
