"""
Entries due later: retries of failed runs, and tasks producers schedule.

Both wait in the type's sorted set C{<K>:<T>:scheduled}, scored by their
due time in unix seconds.  L{DueEntryMover} moves the entries that are due
to the tail of their queues, where they run like any other; one timer,
set to the earliest due time across the configured types, finds them, so
that an idle daemon asks Redis once per check interval, not once per type.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.keys import Keys
from goophry_tx.redis import IRedisLink, Retry
from goophry_tx.task import ATTEMPT_FIELD

#: The field that keeps two copies of one payload two members of a sorted
#: set, which keeps one copy of identical members.
ID_FIELD = "GoophryId"

#: Run counts of other kinds that a new attempt does not carry over: its
#: recoveries counted daemons that died running it, not failed runs.
_RESET_FIELDS = (ATTEMPT_FIELD, ID_FIELD, "GoophryRecoveries")

#: The most jitter added to or taken from a retry's delay, as a fraction.
JITTER = 0.2

#: Seconds between two reads of the earliest due time, when nothing is due
#: sooner: an entry another daemon or a producer schedules is seen this late
#: at most, so one due later than that starts on time; an idle daemon asks
#: Redis no more often than this.
CHECK_INTERVAL = 1.0

#: The most entries of one type moved by one script call.
BATCH = 1000

# KEYS: the scheduled set of each type, then its queue, in the same order.
# ARGV: now (unix seconds), the most entries moved per type.  Moves each due
# entry from its set to the tail of its queue; a ZREM that removed it is
# what lets a daemon push it, so each entry is moved exactly once, however
# many daemons run this.  Replies the earliest due time left (a string, ''
# when nothing is scheduled), then how many entries of each type moved.
MOVE_DUE_SCRIPT = """
local types = #KEYS / 2
local now, limit = ARGV[1], tonumber(ARGV[2])
local result = {''}
local earliest = nil
for i = 1, types do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  local moved = 0
  for _, item in ipairs(due) do
    if redis.call('ZREM', KEYS[i], item) == 1 then
      redis.call('RPUSH', KEYS[types + i], item)
      moved = moved + 1
    end
  end
  result[i + 1] = moved
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if first[2] and (earliest == nil or tonumber(first[2]) < earliest) then
    earliest = tonumber(first[2])
  end
end
if earliest ~= nil then result[1] = string.format('%.17g', earliest) end
return result
"""


def retry_delay(
    attempt: int, backoff: float, cap: float, jitter: Callable[[], float] = random.random
) -> float:
    """
    Seconds before the run after run C{attempt}: C{backoff * 2^(attempt-1)},
    give or take L{JITTER}, at most C{cap}.

    @param jitter: a random number in [0, 1).
    """
    # The exponent is bounded first: 2.0 ** 2000 overflows a float.
    delay = backoff * 2.0 ** min(attempt - 1, 64)
    delay *= 1 + JITTER * (2 * jitter() - 1)
    return min(delay, cap)


def scheduled_payload(fields: dict[str, Any], attempt: int | None = None) -> bytes:
    """
    An entry for a scheduled set: the daemon's fields first, with a new
    id, then the producer's.

    @param fields: the decoded entry; its daemon fields are replaced.
    @param attempt: the run the entry will be, for a retry.
    """
    entry: dict[str, Any] = {}
    if attempt is not None:
        entry[ATTEMPT_FIELD] = attempt
    entry[ID_FIELD] = uuid.uuid4().hex
    entry.update((k, v) for k, v in fields.items() if k not in _RESET_FIELDS)
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def retry_payload(payload: bytes, attempt: int) -> bytes:
    """The entry of a valid task (a JSON object) for its run number C{attempt}."""
    fields: dict[str, Any] = json.loads(payload)
    return scheduled_payload(fields, attempt)


@attrs.frozen
class RetryTimes:
    """When the retries of failed runs are due, and who to tell of them."""

    clock: IReactorTime
    #: RetryBackoffMax: the longest wait between two runs, in seconds.
    backoff_max: float
    #: Told the due time of each retry this daemon schedules.
    scheduled: Callable[[float], None]
    #: A random number in [0, 1) for each delay.
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int, backoff: float) -> float:
        """Seconds to wait after run C{attempt} failed (L{retry_delay})."""
        return retry_delay(attempt, backoff, self.backoff_max, self.jitter)


class DueEntryMover:
    """
    Moves the due entries of every configured type to their queues, woken
    by one timer: at the earliest due time, or after L{CHECK_INTERVAL}.
    """

    log = Logger()

    def __init__(
        self,
        link: IRedisLink,
        keys: Keys,
        types: Sequence[str],
        clock: IReactorTime,
        check_interval: float = CHECK_INTERVAL,
        verbose: bool = False,
    ) -> None:
        self._link = link
        self._key_layout = keys
        self.set_types(types)
        self._clock = clock
        self._check_interval = check_interval
        self._verbose = verbose
        self._retry = Retry(clock)
        self._timer: IDelayedCall | None = None
        #: A move is on its way to Redis, or waits to be sent again.
        self._moving = False
        #: Something became due sooner while a move was on its way.
        self._again = False
        self._running = False

    def set_types(self, types: Sequence[str]) -> None:
        """The types whose due entries are moved, from the next move on (a reload)."""
        keys = self._key_layout
        self._types = list(types)
        self._keys = [keys.scheduled(t) for t in types] + [keys.queue(t) for t in types]

    def start(self) -> None:
        """Move what is due now, then keep watching."""
        self._running = True
        self._move()

    def stop(self) -> None:
        """Move nothing more; a move on its way finishes in Redis on its own."""
        self._running = False
        self._retry.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def scheduled(self, due: float) -> None:
        """
        This daemon added an entry due at C{due}: wake up then, if that is
        sooner than planned.
        """
        if not self._running:
            return
        if self._moving:
            self._again = True
            return
        self._wake_at(due)

    def _wake_at(self, due: float) -> None:
        delay = max(0.0, due - self._clock.seconds())
        if self._timer is not None:
            if self._timer.getTime() <= self._clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._move)

    def _move(self) -> None:
        self._timer = None
        self._moving = True
        d = self._link.execute(
            "EVAL",
            MOVE_DUE_SCRIPT,
            len(self._keys),
            *self._keys,
            repr(self._clock.seconds()),
            BATCH,
        )
        # The reply counts the types this move was sent for: a reload
        # (L{set_types}) while it is on its way changes the next move only.
        d.addCallbacks(self._moved, self._failed, callbackArgs=(self._types,))

    def _moved(self, reply: list[Any], types: Sequence[str]) -> None:
        self._moving = False
        if not self._running:
            return
        earliest, *moved = reply
        for task_type, count in zip(types, moved, strict=True):
            if count and self._verbose:
                self.log.info(
                    "{count} due {type} entries moved to their queue", count=count, type=task_type
                )
        again, self._again = self._again, False
        if again or BATCH in moved:
            # A retry scheduled since the read was sent, or a full batch
            # that left some behind: read again now.
            self._wake_at(0.0)
            return
        next_check = self._clock.seconds() + self._check_interval
        self._wake_at(min(float(earliest), next_check) if earliest else next_check)

    def _failed(self, failure: Failure) -> None:
        if not self._running:
            self._moving = False
            return
        # Still moving while the move waits to be sent again: a retry
        # scheduled meanwhile is looked for when it has been.
        if self._retry.later(failure, self._link, self._move):
            return
        self._moving = False
        self.log.failure("cannot move due entries to their queues", failure)
        self._timer = self._clock.callLater(self._check_interval, self._move)
