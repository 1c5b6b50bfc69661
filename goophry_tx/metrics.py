"""
The L{Stats} as Prometheus metrics, read at each scrape.

Imported by the stats server at the first scrape of MetricsPattern, not
at start: a daemon that nobody scrapes does not carry C{prometheus_client}.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from goophry_tx import __version__
from goophry_tx.outcomes import DURATION_BUCKETS
from goophry_tx.stats import Stats


class StatsCollector:
    """Reads the L{Stats} as Prometheus metric families, at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        for name, text, field in _TYPE_COUNTERS:
            family = GaugeMetricFamily if field == "running" else CounterMetricFamily
            metric = family(name, text, labels=["type"])
            for task_type, counters in stats.types.items():
                metric.add_metric([task_type], getattr(counters, field))
            yield metric

        durations = HistogramMetricFamily(
            "goophry_task_duration_seconds", "How long tasks ran.", labels=["type"]
        )
        for task_type, counters in stats.types.items():
            buckets, total = [], 0
            for bound, count in zip(_BUCKET_LABELS, counters.durations, strict=True):
                total += count
                buckets.append((bound, float(total)))
            durations.add_metric([task_type], buckets, counters.seconds)
        yield durations

        failures = CounterMetricFamily(
            "goophry_failures_total",
            "Entries stored as failed, by reason.",
            labels=["type", "reason"],
        )
        for task_type, counters in stats.types.items():
            for reason, count in counters.failures.items():
                failures.add_metric([task_type, reason], count)
        yield failures

        paused = GaugeMetricFamily(
            "goophry_type_paused", "1 while the type is paused.", labels=["type"]
        )
        for task_type in stats.types:
            paused.add_metric([task_type], int(task_type in stats.paused))
        yield paused

        # Absent until first read, and while Redis cannot be read.
        if stats.queues:
            for name, text, field in _QUEUE_GAUGES:
                gauge = GaugeMetricFamily(name, text, labels=["type"])
                for task_type, figures in stats.queues.items():
                    gauge.add_metric([task_type], getattr(figures, field))
                yield gauge

        yield CounterMetricFamily(
            "goophry_recoveries_total",
            "Dead instances whose in-flight entries this instance put back.",
            stats.recoveries,
        )
        yield CounterMetricFamily(
            "goophry_redis_reconnects_total",
            "Times Redis came back after being unreachable.",
            stats.redis_reconnects,
        )
        yield GaugeMetricFamily(
            "goophry_redis_connected", "1 when Redis is reachable.", int(stats.redis_connected())
        )
        yield InfoMetricFamily("goophry_build", "The running version.", {"version": __version__})


#: The names of today's per-type metrics; C{running} is a gauge, the rest counters.
_TYPE_COUNTERS = (
    ("goophry_tasks_started_total", "Tasks started.", "started"),
    ("goophry_tasks_succeeded_total", "Tasks that succeeded.", "succeeded"),
    ("goophry_tasks_failed_total", "Tasks that failed.", "failed"),
    ("goophry_entries_invalid_total", "Invalid entries stored.", "invalid"),
    ("goophry_entries_requeued_total", "Entries put back at shutdown.", "requeued"),
    ("goophry_retries_total", "Failed runs scheduled to run again.", "retried"),
    ("goophry_tasks_running", "Tasks running now.", "running"),
)

_BUCKET_LABELS = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]

_QUEUE_GAUGES = (
    ("goophry_queue_length", "Entries waiting in the queue.", "queued"),
    ("goophry_inflight_entries", "Entries taken by any instance and not finished.", "inflight"),
    ("goophry_failed_entries", "Entries in the failed list.", "failed"),
    ("goophry_scheduled_entries", "Entries due later: scheduled, or retries.", "scheduled"),
)


def metrics_registry(stats: Stats) -> CollectorRegistry:
    """
    A registry of our own, not prometheus_client's global one: it holds
    the stats and this process's C{process_*} metrics, nothing else.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    ProcessCollector(registry=registry)
    return registry


def encode_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """
    The registry's metrics in the format a scraper's C{Accept} header asks
    for (the Prometheus text, or OpenMetrics), and its content type.
    """
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
