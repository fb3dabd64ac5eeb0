"""The composition root: settings in, adapters out. The only place that decides
which adapter implements which port.

A real adapter is built when its setting is present (``REDIS_URL``,
``QDRANT_API_URL``), the embedded/in-memory one otherwise. Building opens no
network connection (redis-py and qdrant-client connect on first use); the
embedded Qdrant shard is a local file and is opened here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from worker.catalog_cache import CachedContentStore
from worker.pipeline import APPLY_MAX_USERS, IngestPipeline
from worker.recsys_core.config import RankConfig, SignalConfig
from worker.recsys_core.ports import EmbeddingModel
from worker.serving import Recommender
from worker.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Adapters:
    """Every port's implementation, plus how to check and close them."""

    buffer: Any  # RedisEventBuffer | InMemoryEventBuffer
    users: Any  # RedisUserModelStore | InMemoryUserModelStore
    content: Any  # QdrantContentStore | EmbeddedQdrantContentStore | InMemoryContentStore
    embedder: EmbeddingModel
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    description: dict[str, str] = field(default_factory=dict)

    async def ping(self) -> dict[str, str]:
        """Check each store; a dict of component -> "ok" or the error."""
        out: dict[str, str] = {}
        for name, store in (("redis", self.buffer), ("qdrant", self.content)):
            try:
                await store.ping()
                out[name] = "ok"
            except Exception as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        return out

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:  # closing is best effort; the process is ending
                log.warning("error while closing an adapter", exc_info=True)


def build_embedder(settings: Settings) -> EmbeddingModel:
    """FastEmbed on the local model directory, or the hash model when asked for."""
    if settings.embedding == "hash":
        from worker.adapters.memory import InMemoryEmbeddingModel

        return InMemoryEmbeddingModel(dim=384)
    from worker.adapters.fastembed_model import FastEmbedModel

    return FastEmbedModel(model_dir=settings.model_dir)


def build_adapters(settings: Settings, *, embedder: EmbeddingModel | None = None) -> Adapters:
    """Wire real adapters where configured, embedded/in-memory ones otherwise."""
    embedder = embedder or build_embedder(settings)
    closers: list[Callable[[], Awaitable[None]]] = []
    desc: dict[str, str] = {}

    if settings.redis_url is not None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        from worker.adapters.redis_store import RedisEventBuffer, RedisUserModelStore

        client = Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=15,
            # A short in-driver retry smooths blips; longer outages surface as
            # TransientStoreError and the agents retry them without moving on.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        buffer: Any = RedisEventBuffer(
            client,
            window_days=settings.window_days,
            key_prefix=settings.key_prefix,
            popularity_half_life_days=settings.popularity_half_life_days,
            co_partners=settings.co_partners,
            co_keep=settings.co_keep,
            stats_cache_s=settings.item_stats_cache_ms / 1000,
        )
        users: Any = RedisUserModelStore(
            client, ttl_seconds=settings.signals_ttl_seconds, key_prefix=settings.key_prefix
        )
        closers.append(client.aclose)
        desc["redis"] = settings.redacted_redis_url() or ""
    else:
        from worker.adapters.memory import InMemoryEventBuffer, InMemoryUserModelStore

        buffer = InMemoryEventBuffer(
            window_days=settings.window_days,
            popularity_half_life_days=settings.popularity_half_life_days,
            co_partners=settings.co_partners,
            co_keep=settings.co_keep,
        )
        users = InMemoryUserModelStore()
        desc["redis"] = "in-memory (REDIS_URL not set)"

    if settings.qdrant_api_url:
        from qdrant_client import AsyncQdrantClient

        from worker.adapters.qdrant_store import QdrantContentStore

        qclient = AsyncQdrantClient(
            url=settings.qdrant_api_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            timeout=10,
            # The version probe runs in a thread and only warns; skip it.
            check_compatibility=False,
        )
        content: Any = QdrantContentStore(qclient, settings.qdrant_collection)
        closers.append(content.close)
        desc["qdrant"] = settings.qdrant_api_url
    else:
        from worker.adapters.qdrant_edge_store import EmbeddedQdrantContentStore

        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        content = EmbeddedQdrantContentStore(
            settings.qdrant_path, settings.qdrant_collection, dim=embedder.dim
        )

        async def _close_edge() -> None:
            content.close()

        closers.append(_close_edge)
        desc["qdrant"] = f"embedded at {settings.qdrant_path}"
    return Adapters(buffer, users, content, embedder, closers, desc)


@dataclass
class Services:
    """What the agents use: the ingest pipeline and the recommender."""

    adapters: Adapters
    pipeline: IngestPipeline
    recommender: Recommender


def build_services(
    adapters: Adapters,
    *,
    signal_config: SignalConfig | None = None,
    rank_config: RankConfig | None = None,
    apply_max_users: int | None = None,
) -> Services:
    """The application services on top of the adapters."""
    cached = CachedContentStore(adapters.content)
    pipeline = IngestPipeline(
        buffer=adapters.buffer,
        users=adapters.users,
        content=cached,
        signal_config=signal_config or SignalConfig(),
        max_users=apply_max_users or APPLY_MAX_USERS,
    )
    recommender = Recommender(
        content=cached,
        embedder=adapters.embedder,
        popularity=adapters.buffer,
        rank_config=rank_config or RankConfig(),
    )
    return Services(adapters, pipeline, recommender)
