"""The Faust app: topics, the signals table and the agents, built from settings.

``create_app(settings)`` builds everything; nothing happens at import time.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import faust

from worker.bootstrap import Services, build_adapters, build_services
from worker.retry import RetryState
from worker.settings import Settings
from worker.stats import Stats

log = logging.getLogger("worker.app")


class RecsysApp(faust.App):
    """A Faust app that owns the worker's services and closes them on stop."""

    services: Services
    settings: Settings
    stats: Stats
    retry_state: RetryState

    async def on_stop(self) -> None:
        await super().on_stop()
        services = getattr(self, "services", None)
        if services is not None:
            await services.adapters.aclose()


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


def create_app(settings: Settings, *, services: Services | None = None) -> RecsysApp:
    """The worker app with its topics, table and agents."""
    app = RecsysApp(
        settings.app_id,
        broker=settings.kafka_broker,
        broker_credentials=broker_credentials(settings),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        reply_create_topic=True,
        web_port=settings.web_port,
        web_enabled=settings.web_port != 0,
        store=settings.table_store,
        datadir=str(settings.data_dir),
        consumer_group_instance_id=settings.worker_instance_id,
        producer_acks=-1,
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        version=1,
    )
    app.settings = settings
    app.services = services or build_services(build_adapters(settings))
    app.stats = Stats()
    app.retry_state = RetryState()

    from worker.agents.ingest import register_ingest
    from worker.agents.recommend import register_recommend

    table = app.Table(
        "user-signals",
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        value_type=bytes,
    )
    register_ingest(app, table)
    register_recommend(app, table)

    @app.on_partitions_assigned.connect
    async def _log_assignment(sender: Any, assigned: Any, **_: Any) -> None:
        mine = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned
                      if tp.topic in (settings.requests_topic, settings.events_topic))
        app.stats.assigned = mine
        log.info("partitions assigned: %s", " ".join(mine) or "none")

    return app
