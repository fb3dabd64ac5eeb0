"""The Faust app: topics, the signals table and the agents, built from settings.

``create_app(settings)`` builds everything; nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import signal
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import faust

from worker.bootstrap import Services, build_adapters, build_services
from worker.consumer_guard import OffsetGuard, install_offset_guard
from worker.kafka_patches import apply_all as apply_kafka_patches
from worker.kafka_patches import producer_state
from worker.logs import faust_logging_config
from worker.malloc import release_free_memory
from worker.metrics import Metrics
from worker.ops import OpsState, register_pages
from worker.retry import RetryState
from worker.settings import Settings
from worker.stats import Stats
from worker.watchdog import register_watchdog

log = logging.getLogger("worker.app")


def tune_gc() -> None:
    """Shorter garbage-collection pauses once the worker is up: what start-up
    allocated (modules, Faust, the catalogue cache) is frozen out of the
    collector's scans, and young collections run every 10,000 allocations
    instead of 700 (a full collection still runs, 400 times rarer than a young
    one). Measured on requests at 100/s over the reply topic: p99 58 ms with
    Python's defaults, 24-29 ms with the freeze alone, 15-26 ms with both."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


class RecsysApp(faust.App):
    """A Faust app that owns the worker's services and closes them on stop."""

    services: Services
    settings: Settings
    stats: Stats
    retry_state: RetryState
    metrics: Metrics
    ops_state: OpsState
    offset_guard: OffsetGuard
    #: (fetch_min_bytes, fetch_max_wait_ms) of the worker consumer (kafka_patches)
    fetch_tuning: tuple[int, int] | None = None
    #: run the consumer on the app's loop, not in a thread (kafka_patches)
    consumer_in_loop: bool = False
    #: How many topics sent to by name (the callers' reply topics) ``send`` keeps.
    NAMED_TOPICS_KEPT = 256
    #: After SHUTDOWN_DRAIN_S, how long the rest of the stop may take.
    STOP_AFTER_DRAIN_S = 15.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._named_topics: OrderedDict[str, Any] = OrderedDict()

    async def send(self, channel: Any, *args: Any, **kwargs: Any) -> Any:
        """Faust's ``send``, reusing one ``Topic`` per topic name.

        Every reply goes to a topic given by name (the request's reply-to
        header). Faust's ``send`` builds a new ``Topic`` for each such send:
        a schema, a weak set and compiled closures, 34 objects in reference
        cycles. At 100 requests/s that is garbage only the cyclic collector
        frees, and each young collection found ~8,000 such objects and paused
        the event loop for 10-13 ms. The topics are kept per name (the most
        recently used ``NAMED_TOPICS_KEPT``)."""
        if isinstance(channel, str):
            channel = self._topic_named(channel)
        return await super().send(channel, *args, **kwargs)

    def _topic_named(self, name: str) -> Any:
        kept = self._named_topics
        topic = kept.get(name)
        if topic is None:
            topic = kept[name] = self.topic(name)
            while len(kept) > self.NAMED_TOPICS_KEPT:
                kept.popitem(last=False)
        else:
            kept.move_to_end(name)
        return topic

    async def on_started(self) -> None:
        await super().on_started()
        if self.should_stop:
            return
        s = self.settings
        desc = self.services.adapters.description
        log.info("worker started: app_id=%s brokers=%s redis=%s qdrant=%s web_port=%s "
                 "partitions=%d consumer=%s", s.app_id, ",".join(s.bootstrap_servers),
                 desc.get("redis", "?"), desc.get("qdrant", "?"), s.web_port or "off",
                 s.topic_partitions,
                 "thread" if self.consumer._thread.thread_loop is not self.loop else "loop")
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks, self)
        tune_gc()

    async def on_stop(self) -> None:
        """SIGTERM/SIGINT: Faust stops fetching, waits for in-flight events to be
        acked (our agents ack only after their effects are durable), commits and
        flushes. That wait is bounded by SHUTDOWN_DRAIN_S; what is not acked by
        then is redelivered after the restart (idempotent).

        The bound cannot be a cancellation: Faust's ``Consumer.wait_empty``
        swallows ``CancelledError`` and keeps waiting (seen: a worker stuck in it
        until SIGKILL). At the deadline the consumer instead forgets its in-flight
        messages; the wait then ends within a second and the commit that follows
        covers only what was acked."""
        drain = self.settings.shutdown_drain_s
        log.info("shutdown: draining in-flight events (up to %gs)", drain)
        deadline = (asyncio.get_running_loop().call_later(drain, self._stop_draining, drain)
                    if drain else None)
        try:
            # Backstop for the rest of the stop (tables, producer flush), which
            # does give way to a cancellation.
            await asyncio.wait_for(super().on_stop(), drain + self.STOP_AFTER_DRAIN_S
                                   if drain else None)
        except TimeoutError:
            log.warning("shutdown: stopping took over %gs; exiting without it",
                        drain + self.STOP_AFTER_DRAIN_S)
        finally:
            if deadline is not None:
                deadline.cancel()

    def _stop_draining(self, drain: float) -> None:
        consumer = self._consumer
        in_flight = consumer._unacked_messages if consumer is not None else set()
        if in_flight:
            log.warning("shutdown: %d in-flight events not done after %gs; committing what "
                        "is acked, the rest will be redelivered", len(in_flight), drain)
            in_flight.clear()

    async def on_shutdown(self) -> None:
        """After the agents and the consumer stopped (offsets committed)."""
        await super().on_shutdown()
        services = getattr(self, "services", None)
        if services is not None:
            await services.adapters.aclose()
        st = getattr(self, "stats", None)
        if st is not None:
            log.info("shutdown complete: records_consumed=%d interactions_written=%d "
                     "dead_lettered=%d requests_served=%d requests_failed=%d",
                     st.records_consumed, st.interactions_written,
                     sum(st.dead_lettered.values()), st.requests_served, st.requests_failed)


def dump_tasks(app: Any = None) -> None:
    """SIGUSR1: log where every asyncio task of the worker waits (for a hung worker)."""
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    for task in tasks:
        out.write(f"task {task.get_name()}:\n")
        coro: Any = task.get_coro()
        while coro is not None:  # the await chain (print_stack shows one frame)
            frame = (getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                     or getattr(coro, "ag_frame", None))
            if frame is not None:
                out.write(f"  {frame.f_code.co_filename}:{frame.f_lineno} "
                          f"{frame.f_code.co_name}\n")
            coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                    or getattr(coro, "ag_await", None))
    try:  # the Kafka producer's sender: what is in flight, muted, waiting
        out.write(f"producer: {producer_state(app.producer._ensure_producer())}\n")
    except Exception as exc:
        out.write(f"producer: {exc!r}\n")
    log.warning("SIGUSR1: %d asyncio tasks\n%s", len(tasks), out.getvalue())


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for SSL / SASL_SSL / SASL_PLAINTEXT, or None for PLAINTEXT."""
    proto = settings.kafka_security_protocol
    ctx = None
    if proto in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if proto.startswith("SASL"):
        assert settings.kafka_sasl_username and settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=ctx,
            mechanism=settings.kafka_sasl_mechanism,
        )
    return ctx


def kafka_options(settings: Settings) -> dict[str, Any]:
    """aiokafka security options from the settings."""
    opts: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    creds = broker_credentials(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None
        opts.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=creds.ssl_context,
        )
    elif settings.kafka_security_protocol == "SSL":
        opts["ssl_context"] = creds
    return opts


#: RocksDB table store, per partition database. Faust's defaults (64 MB memtables,
#: three of them, and a 2 GB block cache, per partition) would let 8 partitions
#: take gigabytes. Each user's signals are rewritten on every event, so memtables
#: fill with overwritten values and flush; with these, 8 partitions hold at most
#: 64 MB of memtables and 64 MB of cache.
ROCKSDB_OPTIONS: dict[str, int] = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024 * 1024,
}


def register_malloc_trim(app: RecsysApp, interval_s: float) -> None:
    """Every ``interval_s``, give the heap's free memory back to the system, in a
    thread (``worker/malloc.py`` says why); counted in ``recsys_malloc_trims_total``
    and ``recsys_malloc_trim_seconds_total``."""
    if interval_s <= 0:
        return

    @app.timer(interval=interval_s)
    async def trim_malloc() -> None:
        t0 = time.perf_counter()
        released = await asyncio.to_thread(release_free_memory)
        took = time.perf_counter() - t0
        app.stats.malloc_trims += 1
        app.stats.malloc_trim_seconds += took
        log.debug("malloc_trim: %s in %.1f ms", "released memory" if released else "nothing",
                  took * 1000)


def faust_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Faust reads its settings from: all of it but the worker's
    own settings' variables (``Settings``), which reach Faust as validated values."""
    ours = {name.upper() for name in Settings.model_fields}
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.upper() not in ours}


def create_app(settings: Settings, *, services: Services | None = None) -> RecsysApp:
    """The worker app with its topics, table and agents."""
    apply_kafka_patches()
    app = RecsysApp(
        settings.app_id,
        broker=settings.kafka_broker,
        broker_credentials=broker_credentials(settings),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        reply_create_topic=True,
        # WEB_PORT=0 turns the web server off. Faust's own setting refuses port 0
        # (ImproperlyConfigured at the first table), so it is not passed then.
        **({"web_port": settings.web_port} if settings.web_port else {}),
        web_enabled=settings.web_port != 0,
        store=settings.table_store,
        datadir=str(settings.data_dir),
        consumer_group_instance_id=settings.worker_instance_id,
        # With static membership the reply topic (which the group consumer also
        # subscribes to) must be stable: the broker hands a restarted static member
        # its previous assignment, and a fresh f-reply-<uuid> name makes aiokafka's
        # coordinator die on "assignment for unsubscribed topic" (worker never ready).
        reply_to=(f"{settings.app_id}-reply-{settings.worker_instance_id}"
                  if settings.worker_instance_id else None),
        producer_acks=-1,
        # Record batches of up to 256 KiB (Faust's default is 16 KiB): the apply
        # agent writes each partition's signals to the changelog as record batches.
        producer_max_batch_size=256 * 1024,
        producer_linger_ms=settings.producer_linger_ms,
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        version=1,
        logging_config=faust_logging_config(settings),
        # Faust reads settings from the environment too, over the values passed
        # here, and some of its names are ours (WEB_PORT, TOPIC_PARTITIONS,
        # PRODUCER_LINGER_MS): those reached it unvalidated (WEB_PORT=0 stopped the
        # worker). It sees the environment without them; its own variables
        # (BROKER_SESSION_TIMEOUT, ...) still apply.
        env=faust_environment(),
    )
    app.settings = settings
    app.fetch_tuning = (settings.fetch_min_bytes, settings.fetch_max_wait_ms)
    app.consumer_in_loop = not settings.consumer_thread
    app.services = services or build_services(
        build_adapters(settings), apply_max_users=settings.apply_max_users)
    app.stats = Stats()
    app.retry_state = RetryState()
    app.metrics = Metrics(app)
    app.ops_state = OpsState()
    app.stats.observer = app.metrics.observe
    app.services.pipeline.observe = app.stats.stage_observer("apply")
    app.services.recommender.observe = app.stats.stage_observer("request")

    from worker.agents.ingest import register_ingest
    from worker.agents.recommend import register_recommend

    table = app.Table(
        "user-signals",
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
        options=dict(ROCKSDB_OPTIONS) if settings.table_store == "rocksdb://" else None,
    )
    app.offset_guard = install_offset_guard(app)
    register_ingest(app, table)
    register_recommend(app, table)
    if settings.web_port != 0:
        register_pages(app)
    register_watchdog(app)
    register_malloc_trim(app, settings.malloc_trim_interval_s)

    @app.on_partitions_assigned.connect
    async def _log_assignment(sender: Any, assigned: Any, **_: Any) -> None:
        mine = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned
                      if tp.topic in (settings.requests_topic, settings.events_topic))
        app.stats.assigned = mine
        app.stats.assigned_at = app.stats.clock()
        log.info("partitions assigned: %s", " ".join(mine) or "none")

    return app
