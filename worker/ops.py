"""Operations endpoints on the Faust web port: /healthz, /readyz, /metrics.

Faust has no readiness signal of its own, so readiness is decided here from
what the worker can observe (see :func:`readiness`). The web server starts once
the app has started (after table recovery), so every endpoint answers only
from then on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.app import RecsysApp

log = logging.getLogger("worker.ops")


def watched_topics(app: RecsysApp) -> set[str]:
    """The topics the agents consume (changelog and reply topics are not watched)."""
    s = app.settings
    return {s.events_topic, f"{s.app_id}-interactions", s.requests_topic}


def _consumer(app: RecsysApp) -> Any:
    # ``app.consumer`` would create one; only look at a started app's consumer.
    return getattr(app, "_consumer", None)


def _fetch_position(consumer: Any, tp: Any) -> int | None:
    """aiokafka's fetch position of ``tp`` (used before the group committed anything)."""
    try:
        from aiokafka.structs import TopicPartition

        sub = consumer._thread._ensure_consumer()._fetcher._subscriptions.subscription
        state = sub.assignment.state_value(TopicPartition(tp.topic, tp.partition))
        return None if state is None else state.position
    except Exception:
        return None


def consumer_lag(app: RecsysApp) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> highwater - committed`` for the assigned partitions
    of the watched topics whose highwater the consumer knows."""
    consumer = _consumer(app)
    if consumer is None:
        return {}
    try:
        assignment = consumer.assignment()
    except Exception:  # ConsumerNotStarted, or stopping
        return {}
    topics = watched_topics(app)
    out: dict[tuple[str, int], int] = {}
    committed_map = getattr(consumer, "_committed_offset", {})
    for tp in assignment:
        if tp.topic not in topics:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            highwater = None
        if highwater is None:
            continue
        committed = committed_map.get(tp)  # .get: it is a defaultdict
        if committed is None:
            committed = _fetch_position(consumer, tp)
        if committed is None:
            continue
        out[(tp.topic, tp.partition)] = max(0, int(highwater) - int(committed))
    return out


def consumer_state(app: RecsysApp) -> dict[str, dict[str, Any]]:
    """Per watched partition, what Faust's consumer and aiokafka believe: the
    committed offset, Faust's read offset, aiokafka's fetch position and pause
    flag, the highwater, whether Faust fetches it (active/buffered/paused), and
    the acked-but-uncommitted offsets. Diagnostic only (shown by /readyz when the
    worker is stalled), read without locks."""
    consumer = _consumer(app)
    if consumer is None:
        return {}
    try:
        assignment = consumer.assignment()
    except Exception:
        return {}
    topics = watched_topics(app)
    out: dict[str, dict[str, Any]] = {}
    try:
        from aiokafka.structs import TopicPartition

        sub = consumer._thread._ensure_consumer()._fetcher._subscriptions.subscription
    except Exception:
        sub = None
    active = getattr(consumer, "_active_partitions", None) or set()
    for tp in sorted(assignment):
        if tp.topic not in topics:
            continue
        row: dict[str, Any] = {
            "committed": getattr(consumer, "_committed_offset", {}).get(tp),
            "read": getattr(consumer, "_read_offset", {}).get(tp),
            "active": tp in active,
            "buffered": tp in getattr(consumer, "_buffered_partitions", set()),
            "paused": tp in getattr(consumer, "_paused_partitions", set()),
        }
        try:
            row["highwater"] = consumer.highwater(tp)
        except Exception:
            row["highwater"] = None
        acked = getattr(consumer, "_acked", {}).get(tp) or []
        row["acked"] = len(acked)
        row["acked_min"] = min(acked) if acked else None
        if sub is not None:
            try:
                state = sub.assignment.state_value(TopicPartition(tp.topic, tp.partition))
                row["position"] = None if state is None else state.position
                row["kafka_paused"] = None if state is None else state.paused
            except Exception:
                pass
        out[f"{tp.topic}:{tp.partition}"] = row
    row_unacked = getattr(consumer, "_unacked_messages", ())
    out["_"] = {"unacked": len(row_unacked), "flow_active": getattr(consumer, "flow_active", None),
                "generation": getattr(app, "consumer_generation_id", None)}
    return out


def assigned_partitions(app: RecsysApp) -> list[str]:
    consumer = _consumer(app)
    if consumer is None:
        return []
    try:
        assignment = consumer.assignment()
    except Exception:
        return []
    topics = watched_topics(app)
    return sorted(f"{tp.topic}:{tp.partition}" for tp in assignment if tp.topic in topics)


@dataclass
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ready": self.ready, **self.checks}
        if self.reasons:
            body["reason"] = "; ".join(self.reasons)
        return body


async def readiness(app: RecsysApp, *, now: float | None = None) -> Readiness:
    """Ready = started, partitions assigned, not rebalancing, no retry in
    progress, not stalled (lag and no progress for ``READY_STALL_S``), and the
    stores answer."""
    s = app.settings
    stats = app.stats
    now = time.time() if now is None else now
    reasons: list[str] = []
    checks: dict[str, Any] = {}

    if _consumer(app) is None:
        reasons.append("consumer not started")
    if getattr(app, "rebalancing", False):
        reasons.append("consumer group is rebalancing")
    if getattr(app, "in_recovery", False):
        reasons.append("table recovery in progress")
    assigned = assigned_partitions(app)
    checks["partitions"] = len(assigned)
    if not assigned:
        reasons.append("no partitions assigned")

    failing = app.retry_state.failing
    checks["retrying"] = failing
    if failing:
        reasons.append(f"retrying a transient failure: {failing}")

    lag = consumer_lag(app)
    total_lag = sum(lag.values())
    last = max(stats.last_progress_at, stats.assigned_at, stats.started_at)
    idle = max(0.0, now - last)
    checks["lag"] = total_lag
    checks["idle_s"] = round(idle, 1)
    if total_lag > 0 and idle > s.ready_stall_s:
        reasons.append(f"stalled: lag {total_lag} and no progress for {idle:.0f}s "
                       f"(READY_STALL_S={s.ready_stall_s:g})")
        checks["consumer"] = consumer_state(app)

    try:
        stores = await asyncio.wait_for(app.services.adapters.ping(), s.ready_ping_timeout_s)
    except TimeoutError:
        stores = {"redis": "timeout", "qdrant": "timeout"}
    checks["stores"] = stores
    for name, status in stores.items():
        if status != "ok":
            reasons.append(f"{name}: {status}")
    return Readiness(not reasons, reasons, checks)


def register_pages(app: RecsysApp) -> None:
    """/healthz, /readyz and /metrics on the Faust web server."""
    # The classic text format (what generate_latest writes), understood by every
    # Prometheus version.
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    @app.page("/healthz", name="healthz")
    async def healthz(web: Any, request: Any) -> Any:
        """Liveness: the process and its event loop answer."""
        return web.json({"status": "ok", "uptime_s": round(time.time() - app.stats.started_at, 1)})

    @app.page("/readyz", name="readyz")
    async def readyz(web: Any, request: Any) -> Any:
        """Readiness: 200 when ready, else 503 with the reason."""
        state = await readiness(app)
        ops = app.ops_state
        if state.ready != ops.last_ready:
            ops.last_ready = state.ready
            if state.ready:
                log.info("ready")
            else:
                log.warning("not ready: %s", "; ".join(state.reasons))
        return web.json(state.as_dict(), status=200 if state.ready else 503)

    @app.page("/metrics", name="metrics")
    async def metrics(web: Any, request: Any) -> Any:
        """Prometheus text exposition of this app's own registry."""
        # aiohttp refuses a charset in ``content_type``: pass the header as is.
        return web.bytes(app.metrics.render(), headers={"Content-Type": content_type})


@dataclass
class OpsState:
    """What the endpoints remember between calls."""

    last_ready: bool | None = None
