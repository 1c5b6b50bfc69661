"""
Usage statistics: the counters of every task type and the queue figures
read from Redis, as the stats server (L{goophry_tx.web}) serves them in
JSON and L{goophry_tx.metrics} as Prometheus metrics.

The counters are plain attributes that the daemon updates per task; the
metrics read them only when someone scrapes, so the hot path never takes
the lock that C{prometheus_client}'s own metric objects take per update.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx import __version__
from goophry_tx.keys import Keys
from goophry_tx.outcomes import TypeCounters
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
