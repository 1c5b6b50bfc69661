"""
Usage statistics, as JSON (the original's fields and more) and as
Prometheus metrics, served by twisted.web.

The counters are plain attributes that the daemon updates per task; a
collector reads them only when someone scrapes, so the hot path never takes
the lock that C{prometheus_client}'s own metric objects take per update.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from urllib.parse import quote, unquote

import attrs
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
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from goophry_tx import __version__
from goophry_tx.keys import Keys
from goophry_tx.outcomes import DURATION_BUCKETS, TypeCounters
from goophry_tx.redis import ConnectionError, IRedisLink

#: Queue figures older than this are read again, when someone asks for them.
QUEUE_FIGURES_MAX_AGE = 5.0


@attrs.frozen
class QueueFigures:
    """How many entries of one type wait, run somewhere, failed, and wait till later, in Redis."""

    queued: int
    inflight: int
    failed: int
    scheduled: int = 0


def queue_figures(
    link: IRedisLink, keys: Keys, types: Sequence[str], instances: Sequence[str] | None = None
) -> Deferred[dict[str, QueueFigures]]:
    """
    Read the queue figures of every type: the lengths of its queue and its
    failed list, and of the in-flight lists of every registered instance,
    alive or not (a dead one's entries are in flight until recovered).  The
    metrics and C{goophry-ctl stats} both read them here.

    @param instances: the registered instances, when the caller has read
        them already.
    """

    def count(instances: Sequence[str]) -> Deferred[dict[str, QueueFigures]]:
        commands: list[tuple[str, str]] = []
        for task_type in types:
            commands.append(("LLEN", keys.queue(task_type)))
            commands.append(("LLEN", keys.failed(task_type)))
            commands.append(("ZCARD", keys.scheduled(task_type)))
            commands.extend(("LLEN", keys.inflight(task_type, i)) for i in instances)
        # One MULTI/EXEC: the figures of every type are from the same moment.
        d = link.transaction(commands)
        return d.addCallback(figures, 3 + len(instances))

    def figures(lengths: list[int], per_type: int) -> dict[str, QueueFigures]:
        result = {}
        for index, task_type in enumerate(types):
            queued, failed, scheduled, *inflight = lengths[
                index * per_type : (index + 1) * per_type
            ]
            result[task_type] = QueueFigures(queued, sum(inflight), failed, scheduled)
        return result

    if instances is not None:
        return count(instances)
    d: Deferred[list[bytes]] = link.execute("HKEYS", keys.instances)
    return d.addCallback(lambda names: count([name.decode("utf-8", "replace") for name in names]))


class Stats:
    """The counters of every configured task type, as the outcome recorder keeps them."""

    log = Logger()

    def __init__(self, clock: IReactorTime, types: Mapping[str, TypeCounters]) -> None:
        self._clock = clock
        self.started_at = clock.seconds()
        self.types = types
        #: Tells whether Redis is reachable; set by the service.
        self.redis_connected: Callable[[], bool] = lambda: False
        #: The types no instance takes entries of now; filled by the service.
        self.paused: set[str] = set()
        #: Dead instances whose in-flight entries this instance put back.
        self.recoveries = 0
        #: Times Redis came back after being unreachable.
        self.redis_reconnects = 0
        #: Reads the queue figures from Redis; set by the service.
        self.read_queues: Callable[[], Deferred[dict[str, QueueFigures]]] | None = None
        #: The queue figures last read, empty until read (or when that failed).
        self.queues: dict[str, QueueFigures] = {}
        self._queues_checked_at: float | None = None
        self._reading_queues = False

    def runtime(self) -> int:
        return int(self._clock.seconds() - self.started_at)

    def recovered(self) -> None:
        """Count the recovery of a dead instance's in-flight entries."""
        self.recoveries += 1

    def redis_reconnected(self) -> None:
        """Count Redis coming back after it was unreachable."""
        self.redis_reconnects += 1

    def refresh_queues(self) -> None:
        """
        Start reading the queue figures again if the cached ones are older
        than L{QUEUE_FIGURES_MAX_AGE} and no read is under way.  Called when
        someone asks for the metrics: nobody asking, no reads.
        """
        if self.read_queues is None or self._reading_queues:
            return
        now = self._clock.seconds()
        if (
            self._queues_checked_at is not None
            and now - self._queues_checked_at < QUEUE_FIGURES_MAX_AGE
        ):
            return
        # Counted from the start of a read too: a failing Redis is asked no
        # more often than a working one.
        self._queues_checked_at = now
        self._reading_queues = True
        d = self.read_queues()
        d.addCallbacks(self._queues_read, self._queues_failed)

    def _queues_read(self, figures: dict[str, QueueFigures]) -> None:
        self._reading_queues = False
        self._queues_checked_at = self._clock.seconds()
        self.queues = figures

    def _queues_failed(self, failure: Failure) -> None:
        self._reading_queues = False
        # Figures that can no longer be checked are not shown as current.
        self.queues = {}
        # Redis being away is logged once by the links; anything else here.
        if not failure.check(ConnectionError):
            self.log.failure("cannot read the queue figures from Redis", failure)

    def as_json(self) -> dict[str, object]:
        """The original's fields (Runtime, TaskCount, Version), then ours."""

        def each(field: str) -> dict[str, object]:
            return {t: getattr(c, field) for t, c in self.types.items()}

        return {
            "Runtime": self.runtime(),
            "TaskCount": each("started"),
            "Version": __version__,
            "Running": each("running"),
            "Succeeded": each("succeeded"),
            "Failed": each("failed"),
            "Invalid": each("invalid"),
            "Requeued": each("requeued"),
            "Retried": each("retried"),
            # As last read for the metrics: none until they are first scraped.
            "Scheduled": {t: f.scheduled for t, f in self.queues.items()},
            "Paused": {t: t in self.paused for t in self.types},
            "RedisConnected": self.redis_connected(),
        }


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


def pattern_matches(pattern: str, path: str) -> bool:
    """Go's ServeMux rule: C{/x/} matches the subtree, C{/x} only itself."""
    if pattern.endswith("/"):
        return path.startswith(pattern)
    return path == pattern


def clean_path(path: str) -> str:
    """
    The path as Go's ServeMux cleans it before matching: C{.} and C{..}
    resolved, repeated slashes folded, a trailing slash kept.
    """
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class StatsResource(Resource):
    """Serves the JSON stats at StatsPattern and the metrics at MetricsPattern."""

    isLeaf = True

    def __init__(self, stats: Stats, pattern: str, metrics_pattern: str) -> None:
        super().__init__()
        self._stats = stats
        self._pattern = pattern
        self._metrics_pattern = metrics_pattern
        self._registry = metrics_registry(stats)

    def render_GET(self, request: Request) -> bytes:
        path = unquote((request.path or b"/").decode("utf-8", "replace"))
        cleaned = clean_path(path)
        if cleaned != path:
            request.setResponseCode(301)
            request.setHeader(b"location", quote(cleaned).encode("ascii"))
            return b""
        if pattern_matches(self._metrics_pattern, path):
            return self._metrics(request)
        if pattern_matches(self._pattern, path):
            # Its Scheduled counts are the queue figures: as for a scrape.
            self._stats.refresh_queues()
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self._stats.as_json()).encode("utf-8")
        if self._pattern.endswith("/") and path == self._pattern[:-1]:
            # As Go's mux does for a subtree pattern asked without its slash.
            request.setResponseCode(301)
            request.setHeader(b"location", self._pattern.encode("utf-8"))
            return b""
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"404 page not found\n"

    def _metrics(self, request: Request) -> bytes:
        # Collecting is synchronous and cannot wait for Redis: the queue
        # figures served are the cached ones, and a read for the next scrape
        # starts here when they are old.
        self._stats.refresh_queues()
        accept = request.getHeader(b"accept") or b""
        encode, content_type = choose_encoder(accept.decode("latin-1"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encode(self._registry)

    render_HEAD = render_GET
    # Go's handler answered whatever the method.
    render_POST = render_GET
