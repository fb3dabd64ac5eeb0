"""Small builders of domain objects for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from worker.recsys_core.types import Content, InteractionEvent

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def event(
    user: str = "u1",
    content: str = "1",
    *,
    kind: str = "view",
    at: datetime | None = None,
    days: float = 0.0,
    weight: float | None = 1.0,
    mid: str | None = None,
    **props: Any,
) -> InteractionEvent:
    """An interaction ``days`` after T0 (or at ``at``)."""
    ts = at if at is not None else T0 + timedelta(days=days)
    return InteractionEvent(
        user_id=user,
        content_id=content,
        event_type=kind,
        timestamp=ts,
        weight=weight,
        message_id=mid or f"{user}-{content}-{kind}-{ts.isoformat()}",
        properties=props,
    )


def content(cid: str, *tags: str, title: str = "") -> Content:
    """A catalogue item with ``facet:label`` tags."""
    return Content(id=cid, title=title or f"item {cid}", tags=tuple(tags))


def memory_app(app_id: str, **settings: Any) -> Any:
    """The worker's Faust app (``create_app``) on the in-memory adapters (``settings``:
    more settings, as ``load_settings`` takes them)."""
    from worker.adapters.memory import (
        InMemoryContentStore,
        InMemoryEmbeddingModel,
        InMemoryEventBuffer,
        InMemoryUserModelStore,
    )
    from worker.app import create_app
    from worker.bootstrap import Adapters, build_services
    from worker.settings import load_settings

    adapters = Adapters(InMemoryEventBuffer(window_days=30), InMemoryUserModelStore(),
                        InMemoryContentStore(), InMemoryEmbeddingModel(dim=8))
    return create_app(load_settings(app_id=app_id, embedding="hash", table_store="memory://",
                                    **settings),
                      services=build_services(adapters))
