"""Stage timings and the Prometheus rendering of one app's counters."""

from __future__ import annotations

from tests.factories import memory_app
from worker.stats import StageClock, Stats


def test_stage_clock_sums_per_stage_and_reports_once() -> None:
    seen: list[tuple[str, float]] = []
    clock = StageClock(lambda stage, s: seen.append((stage, s)))
    with clock("redis"):
        pass
    with clock("qdrant"):
        pass
    with clock("redis"):
        pass
    clock.report()
    assert sorted(stage for stage, _ in seen) == ["qdrant", "redis"]
    assert all(s >= 0 for _, s in seen)
    StageClock(None).report()  # no observer: nothing to do


def test_stats_timed_observes_even_when_the_block_raises() -> None:
    seen: list[tuple[str, str]] = []
    stats = Stats(observer=lambda path, stage, s: seen.append((path, stage)))
    try:
        with stats.timed("apply"):
            raise RuntimeError
    except RuntimeError:
        pass
    stats.stage_observer("request")("ranking", 0.1)
    assert seen == [("apply", "total"), ("request", "ranking")]


def test_two_apps_in_one_process_have_their_own_metrics() -> None:
    from worker.metrics import parse_metrics

    a, b = memory_app("metrics-a"), memory_app("metrics-b")
    a.stats.records_consumed += 3
    a.stats.dead_lettered["invalid_json"] += 2
    a.stats.requests_failed += 1
    a.retry_state.retries = 4
    a.stats.observe("request", "total", 0.02)
    a.stats.observe("apply", "redis", 0.01)
    a.stats.observe("ingest", "total", 0.03)
    ma, mb = parse_metrics(a.metrics.render().decode()), parse_metrics(b.metrics.render().decode())
    assert ma["recsys_records_consumed_total"] == 3
    assert ma["recsys_dead_lettered_total{reason=invalid_json}"] == 2
    assert ma["recsys_requests_total{outcome=failed}"] == 1
    assert ma["recsys_requests_total{outcome=served}"] == 0
    assert ma["recsys_retries_total"] == 4
    assert ma["recsys_request_duration_seconds_count"] == 1
    assert ma["recsys_stage_duration_seconds_count{path=apply,stage=redis}"] == 1
    assert ma["recsys_ingest_batch_duration_seconds_count{agent=ingest}"] == 1
    assert mb["recsys_records_consumed_total"] == 0
    assert "recsys_request_duration_seconds_count" not in mb or \
        mb["recsys_request_duration_seconds_count"] == 0
