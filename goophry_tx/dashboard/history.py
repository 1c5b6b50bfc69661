"""
Per-minute counts of what every daemon did, kept in Redis so that a
dashboard on any daemon charts all of them.

Each minute has one hash, C{<K>:history:<minute>} (minutes since the unix
epoch), whose fields are C{<what>:<type>} (C{started:resize}) and whose
values are counts; it expires a day after its last write.  A daemon counts
in memory and writes once every few seconds, in one round trip: no Redis
command per task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.keys import HISTORY, Keys
from goophry_tx.redis import Command, ConnectionError, IRedisLink, RedisLink

#: What is counted: a task started, and how it ended.
WHATS = ("started", "succeeded", "failed")

#: Seconds a minute's counts are kept after its last write.
TTL = 86400

#: Seconds between two writes of the counts gathered in memory.
FLUSH_INTERVAL = 5.0


def history_key(keys: Keys, minute: int) -> str:
    """The hash of one minute's counts; minutes count from the unix epoch."""
    return f"{keys.prefix}:{HISTORY}{minute}"


def minute_of(seconds: float) -> int:
    return int(seconds // 60)


class HistoryWriter(Service):
    """
    Counts outcomes in memory and adds them to the minute's hash in Redis
    at most every L{FLUSH_INTERVAL} seconds, and once more when stopped.

    The timer runs only while there are counts to write: an idle daemon
    makes no history write and wakes for none.  Counts a write could not
    deliver are kept for the next one; they are then added to the minute of
    the latest count, not the one they happened in, which a chart of
    minutes can bear.

    @param link: the daemon's control link to Redis.
    @param interval: the most seconds a count waits before it is written.
    """

    log = Logger()

    def __init__(
        self, link: IRedisLink, keys: Keys, clock: IReactorTime, interval: float = FLUSH_INTERVAL
    ) -> None:
        self._clock = clock
        self._now = clock.seconds
        self._interval = interval
        self._link = link
        self._keys = keys
        self._counts: Counter[tuple[str, str]] = Counter()
        self._minute: int | None = None
        #: When the minute of the latest count ends (a count after it starts a new one).
        self._minute_ends = float("-inf")
        self._writing: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None

    def count(self, task_type: str, what: str) -> None:
        """
        One more C{what} (one of L{WHATS}) for C{task_type}; called once per
        outcome, on the hot path, so it only adds to a counter (and sets the
        timer when none is set).
        """
        now = self._now()
        if now >= self._minute_ends:
            self._new_minute(now)
        counts = self._counts
        key = (what, task_type)
        counts[key] = counts.get(key, 0) + 1
        if self._timer is None and self.running:
            self._timer = self._clock.callLater(self._interval, self._due)

    def _new_minute(self, now: float) -> None:
        """The first count of a minute: the previous minute's counts go to their own hash."""
        minute = minute_of(now)
        if minute != self._minute and self._counts and self._writing is None:
            self.flush()
        self._minute = minute
        self._minute_ends = (minute + 1) * 60.0

    def _due(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> Deferred[None]:
        """Write what was counted since the last write, in one round trip."""
        if self._writing is not None or not self._counts:
            return self._writing or succeed(None)
        counts, self._counts = self._counts, Counter()
        minute = self._minute if self._minute is not None else minute_of(self._now())
        key = history_key(self._keys, minute)
        commands: list[Command] = [
            ("HINCRBY", key, f"{what}:{task_type}", n) for (what, task_type), n in counts.items()
        ]
        commands.append(("EXPIRE", key, TTL))
        d = self._link.transaction(commands)

        def failed(failure: Failure) -> None:
            # Kept for the next write: a Redis outage loses no count.
            self._counts.update(counts)
            if not failure.check(ConnectionError):
                # A lost connection is logged by the link already.
                self.log.failure("could not write the task history to Redis", failure)

        def done(_: object) -> None:
            self._writing = None
            # Counts made meanwhile, or kept from a failed write, go next.
            if self._counts and self._timer is None and self.running:
                self._timer = self._clock.callLater(self._interval, self._due)

        written: Deferred[None] = d.addCallbacks(lambda _: None, failed).addBoth(done)
        if not written.called:
            self._writing = written
        return written

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.flush()


@attrs.frozen
class Minute:
    """The counts of one minute, per type."""

    minute: int
    counts: dict[str, dict[str, int]]

    def get(self, task_type: str, what: str) -> int:
        return self.counts.get(task_type, {}).get(what, 0)


async def read_history(link: RedisLink, keys: Keys, now: float, minutes: int = 60) -> list[Minute]:
    """The counts of the last C{minutes} minutes, oldest first, this one last."""
    last = minute_of(now)
    wanted = range(last - minutes + 1, last + 1)
    replies: Sequence[Any] = await gatherResults(
        [link.execute("HGETALL", history_key(keys, minute)) for minute in wanted],
        consumeErrors=True,
    )
    result = []
    for minute, flat in zip(wanted, replies, strict=True):
        counts: dict[str, dict[str, int]] = {}
        for field, value in zip(flat[::2], flat[1::2], strict=True):
            what, _, task_type = field.decode("utf-8", "replace").partition(":")
            try:
                counts.setdefault(task_type, {})[what] = int(value)
            except ValueError:
                continue
        result.append(Minute(minute, counts))
    return result


def last_minute(history: Sequence[Minute], now: float, task_type: str, what: str) -> int:
    """
    How many in the last sixty seconds: this minute's count, and the share
    of the previous minute's that falls within them.
    """
    if not history:
        return 0
    current = history[-1].get(task_type, what)
    previous = history[-2].get(task_type, what) if len(history) > 1 else 0
    elapsed = (now % 60) / 60
    return current + round(previous * (1 - elapsed))
