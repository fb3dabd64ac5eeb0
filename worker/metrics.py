"""Prometheus metrics of one app, in a registry of its own.

Counters are read from ``app.stats`` and ``app.retry_state`` at scrape time
(a custom collector), so the agents keep their plain ``stats.x += n``; stage
timings arrive through ``Stats.observer`` into histograms; consumer lag is
computed from the consumer at scrape time. A registry per app (never the
process-wide default) lets several apps live in one test process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.ops import assigned_partitions, consumer_lag

if TYPE_CHECKING:
    from worker.app import RecsysApp

PREFIX = "recsys"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)


class _AppCollector(Collector):
    def __init__(self, app: RecsysApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        st = self.app.stats
        yield _counter("records_consumed", "Raw records read from the events topic.",
                       st.records_consumed)
        yield _counter("interactions_written", "Interactions newly added to the Redis buffer "
                       "(redeliveries excluded).", st.interactions_written)
        yield _counter("interactions_redelivered", "Interactions that were already in the "
                       "Redis buffer (a redelivery or re-read; nothing changed).",
                       st.interactions_redelivered)
        yield _counter("interactions_forwarded", "Interactions sent through the repartition "
                       "topic (their raw record was on another partition than their user's, or "
                       "the events topic is not co-partitioned with the table); the others "
                       "are applied by the ingest agent itself.", st.interactions_forwarded)
        dl = CounterMetricFamily(f"{PREFIX}_dead_lettered", "Records sent to the dead-letter "
                                 "topic, by reason.", labels=["reason"])
        for reason, n in sorted(st.dead_lettered.items()):
            dl.add_metric([reason], n)
        yield dl
        req = CounterMetricFamily(f"{PREFIX}_requests", "Recommendation requests answered, "
                                  "by outcome.", labels=["outcome"])
        req.add_metric(["served"], st.requests_served)
        req.add_metric(["failed"], st.requests_failed)
        yield req
        src = CounterMetricFamily(f"{PREFIX}_signals_lookups", "Where a request's user "
                                  "signals came from: the table (local), Redis (fallback) or "
                                  "none (unknown user).", labels=["source"])
        for source in ("table", "redis", "none"):
            src.add_metric([source], st.signals_lookups[source])
        yield src
        rs = self.app.retry_state
        yield _counter("retries", "Retries of transient failures (Redis, Qdrant, Kafka).",
                       rs.retries)
        yield _gauge("retry_in_progress", "1 while a transient failure is being retried.",
                     1 if rs.failing else 0)
        guard = getattr(self.app, "offset_guard", None)
        if guard is not None:
            c = guard.counters
            yield _counter("consumer_reseeks", "Partitions re-read from their committed "
                           "offset because the commit could not move.", c.reseeks)
            yield _counter("consumer_gaps_suspected", "Offset jumps seen by the consumer "
                           "(never committed unless proven empty).", c.gaps_suspected)
            yield _counter("consumer_gaps_confirmed", "Offset ranges proven empty by a "
                           "re-read and committed past.", c.gaps_confirmed)
            yield _counter("producer_nudges", "Times the Kafka producer had batches "
                           "waiting with nothing in flight and its sender was woken.",
                           self.app.stats.producer_nudges)
            yield _counter("consumer_acks_refused", "Acks refused for records dropped "
                           "during a pause or from an older generation.", c.acks_refused)
        yield _counter("malloc_trims", "Times the heap's free memory was given back to the "
                       "system (MALLOC_TRIM_INTERVAL_S).", st.malloc_trims)
        yield _counter("malloc_trim_seconds", "Time spent giving it back, in total (in a "
                       "thread; allocations wait meanwhile).", st.malloc_trim_seconds)
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag", "Highwater minus committed offset, "
                                "per assigned partition of the consumed topics.",
                                labels=["topic", "partition"])
        for (topic, partition), n in sorted(consumer_lag(self.app).items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield _gauge("assigned_partitions", "Partitions of the consumed topics assigned here.",
                     len(assigned_partitions(self.app)))
        yield _gauge("last_progress_timestamp_seconds", "When an agent last finished a unit "
                     "of work (Unix time; 0 = never).", st.last_progress_at)
        yield _gauge("uptime_seconds", "Seconds since the app was created.",
                     time.time() - st.started_at)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class Metrics:
    """The app's registry, histograms and the observer that feeds them."""

    def __init__(self, app: RecsysApp) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.stage = Histogram(
            f"{PREFIX}_stage_duration_seconds",
            "Time per stage: path=ingest (parse), apply (redis, qdrant, signals), "
            "request (redis, qdrant, embed, ranking).",
            ["path", "stage"], registry=self.registry, buckets=_BUCKETS,
        )
        self.batch = Histogram(
            f"{PREFIX}_ingest_batch_duration_seconds",
            "End to end per ingest batch (agent=ingest) and per applied message (agent=apply).",
            ["agent"], registry=self.registry, buckets=_BUCKETS,
        )
        self.request = Histogram(
            f"{PREFIX}_request_duration_seconds", "End to end per recommendation request.",
            registry=self.registry, buckets=_BUCKETS,
        )
        self.registry.register(_AppCollector(app))

    def observe(self, path: str, stage: str, seconds: float) -> None:
        """``Stats.observer``: route a timing to its histogram."""
        if stage == "total":
            if path == "request":
                self.request.observe(seconds)
            else:
                self.batch.labels(path).observe(seconds)
        else:
            self.stage.labels(path, stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse_metrics(text: str) -> dict[str, Any]:
    """``{"name{label=value,...}": value}`` from the text format (for tests and tools)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
