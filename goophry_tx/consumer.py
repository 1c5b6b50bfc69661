"""
The consumer loop of one task type.

An entry is taken only when a worker is free for it, so entries that cannot
run yet stay in Redis for other daemons.  How entries are taken is a take
strategy, chosen once the Redis version is known: on Redis 6.2 and newer
(L{AtomicTake}) an entry moves atomically from the queue to this instance's
in-flight list (C{BLMOVE ... LEFT RIGHT}) on a connection of its own, runs,
and leaves the in-flight list when its outcome is recorded; on an older
Redis (L{AtMostOnceTake}) it is popped (C{BLPOP}).  L{Consumer} is the loop
of worker slots and runs around the strategy, one state at a time.

An operator may pause a type (C{goophry-ctl pause}): the consumer is then
held, taking nothing until it is resumed, while its running scripts finish.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from goophry_tx.config import TaskType
from goophry_tx.environment import EntryEnvironment
from goophry_tx.keys import Keys
from goophry_tx.outcomes import OutcomeRecorder
from goophry_tx.process.runner import RunningScript, ScriptRunner
from goophry_tx.redis import IRedisLink, ResponseError, Retry
from goophry_tx.replicas import ReplicaWait
from goophry_tx.task import InvalidEntry, Outcome, Task, parse_entry, payload_text

# Puts back the entries of an in-flight list that this process does not
# know of (their BLMOVE reply was lost with the connection), at the head of
# the queue, keeping their order.  KEYS: in-flight list, queue.  ARGV: the
# payloads this process knows of (running, or outcome not yet written).
RECONCILE_SCRIPT = """
local known = {}
for i = 1, #ARGV do known[ARGV[i]] = (known[ARGV[i]] or 0) + 1 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local back = 0
for i = #items, 1, -1 do
  local item = items[i]
  if (known[item] or 0) > 0 then
    known[item] = known[item] - 1
  else
    redis.call('LREM', KEYS[1], -1, item)
    redis.call('LPUSH', KEYS[2], item)
    back = back + 1
  end
end
return back
"""


# Moves up to ARGV[1] entries from the queue to the in-flight list without
# blocking, in one round trip, when several workers are free at once.
# KEYS: queue, in-flight list.
TAKE_SCRIPT = """
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not item then break end
  taken[i] = item
end
return taken
"""

#: The most entries taken in one round trip.
MAX_BATCH = 64

#: CLIENT UNBLOCKs sent, 0.2 s apart, before a stop drops the taking connection.
MAX_UNBLOCKS = 25


class ITakeStrategy(Interface):
    """How a consumer takes entries from its queue."""

    tracked = Attribute(
        "Whether taken entries wait in the in-flight list until their outcome is "
        "written, so that entries whose take reply was lost can be put back."
    )

    def take(free: int) -> Deferred[Any]:
        """
        Take at most C{free} entries (at least 1), blocking until there is
        one or the block timeout is over.  Fires with one payload, a list
        of payloads, or None when there was nothing to take.
        """


#: Builds a consumer's strategy from its link, queue, in-flight list and block timeout.
TakeFactory = Callable[[IRedisLink, str, str, float], ITakeStrategy]


@implementer(ITakeStrategy)
class AtomicTake:
    """
    Redis 6.2 and newer: C{BLMOVE} to the in-flight list, one entry at a
    time; when several workers are free and the queue had entries, the
    batch script (L{TAKE_SCRIPT}) takes what is there for them at once.
    """

    tracked = True

    def __init__(self, link: IRedisLink, queue: str, inflight: str, block_timeout: float) -> None:
        self._link = link
        self._queue = queue
        self._inflight = inflight
        self._blmove = ("BLMOVE", queue, inflight, "LEFT", "RIGHT", block_timeout)
        self._sha: str | bytes = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
        # An empty queue: block for one entry rather than run the script
        # again and again.
        self._starved = True

    def take(self, free: int) -> Deferred[Any]:
        if free > 1 and not self._starved:
            return self._take_many(min(free, MAX_BATCH))
        return self._link.execute(*self._blmove).addCallback(self._moved)

    def _moved(self, payload: bytes | None) -> bytes | None:
        self._starved = payload is None
        return payload

    def _take_many(self, wanted: int) -> Deferred[Any]:
        d = self._link.execute("EVALSHA", self._sha, 2, self._queue, self._inflight, wanted)
        return d.addCallbacks(self._moved_many, self._reload, errbackArgs=(wanted,))

    def _moved_many(self, payloads: list[bytes]) -> list[bytes]:
        self._starved = not payloads
        return payloads

    def _reload(self, failure: Failure, wanted: int) -> Deferred[Any] | Failure:
        if not (failure.check(ResponseError) and "NOSCRIPT" in failure.getErrorMessage()):
            return failure
        # Redis forgot the script (restarted, SCRIPT FLUSH): load it, ask again.
        d = self._link.execute("SCRIPT", "LOAD", TAKE_SCRIPT)
        return d.addCallback(self._loaded, wanted)

    def _loaded(self, sha: bytes, wanted: int) -> Deferred[Any]:
        self._sha = sha
        return self._take_many(wanted)


@implementer(ITakeStrategy)
class AtMostOnceTake:
    """
    Redis before 6.2 has no BLMOVE: C{BLPOP}, one entry at a time.  An entry
    running when the daemon dies is lost (at most once).
    """

    tracked = False

    def __init__(self, link: IRedisLink, queue: str, inflight: str, block_timeout: float) -> None:
        self._link = link
        # Redis before 6.0 takes whole seconds only.
        self._blpop = ("BLPOP", queue, max(1, math.ceil(block_timeout)))

    def take(self, free: int) -> Deferred[Any]:
        return self._link.execute(*self._blpop).addCallback(_popped)


def _popped(reply: list[bytes] | None) -> bytes | None:
    # BLPOP answers [queue, entry].
    return None if reply is None else reply[1]


def take_strategy(version: tuple[int, ...]) -> TakeFactory:
    """The take strategy for a Redis of this version (newest when not known)."""
    if version and version < (6, 2):
        return AtMostOnceTake
    return AtomicTake


class State(enum.Enum):
    """Where a consumer's loop is."""

    #: Not started.
    IDLE = "idle"
    #: Putting back in-flight entries this process does not know of, before taking.
    RECONCILING = "reconciling"
    #: A take is on its way to Redis.
    TAKING = "taking"
    #: Every worker is busy: the next take waits for one to be free.
    FULL = "full"
    #: Redis is away or refused the take: waiting to try again.
    RETRYING = "retrying"
    #: The type is paused (by an operator): taking nothing until resumed.
    HELD = "held"
    #: Paused while a take was on its way: ending it (CLIENT UNBLOCK).
    HOLDING = "holding"
    #: Stopped while a take was on its way: ending it (CLIENT UNBLOCK).
    UNBLOCKING = "unblocking"
    #: Taking nothing more; running scripts may still be finishing.
    STOPPED = "stopped"


class Consumer:
    """Takes entries of one type from Redis and runs them, C{Workers} at once."""

    log = Logger()

    def __init__(
        self,
        *,
        task_type: TaskType,
        keys: Keys,
        instance: str,
        blocking: IRedisLink,
        control: IRedisLink,
        outcomes: OutcomeRecorder,
        runner: ScriptRunner,
        clock: IReactorTime,
        verbose: bool = False,
        block_timeout: float = 10.0,
        replicas: ReplicaWait | None = None,
    ) -> None:
        """
        @param replicas: with C{RedisWaitReplicas}, what waits for a take to
            reach the replicas before its entries run.
        """
        self.task_type = task_type
        self._type = task_type.type
        self._queue = keys.queue(task_type.type)
        self._inflight = keys.inflight(task_type.type, instance)
        self._blocking = blocking
        self._control = control
        self._outcomes = outcomes
        self._runner = runner
        self._clock = clock
        self._verbose = verbose
        self._block_timeout = block_timeout
        self._replicas = replicas
        self.state = State.IDLE
        #: Whether the type is paused: the loop holds when it would take.
        self.paused = False
        self._take: ITakeStrategy | None = None
        self._running: dict[int, tuple[Task, RunningScript]] = {}
        self._retry = Retry(clock)
        #: The pause after a refused take, or the next CLIENT UNBLOCK.
        self._timer: IDelayedCall | None = None
        self._stop_waiters: list[Deferred[None]] = []
        self._env = EntryEnvironment(task_type)

    # The loop

    def start(self, take: TakeFactory) -> None:
        """Start taking entries, the way C{take} builds for this queue."""
        self._take = take(self._blocking, self._queue, self._inflight, self._block_timeout)
        self.state = State.RECONCILING
        self._retry.when_connected(self._blocking, self._reconcile)

    @property
    def _free(self) -> int:
        """
        Workers with no script running: none while more scripts run than
        C{Workers} now allows (a reload lowered it).
        """
        return max(0, self.task_type.workers - len(self._running))

    def reconfigure(self, task_type: TaskType) -> None:
        """
        Run the next entries with C{task_type}'s script, timeout and
        workers (a reload).  Running scripts keep what they started with:
        more workers take at once, fewer once enough scripts have finished.
        """
        self.task_type = task_type
        if self.state is State.FULL and self._free > 0:
            self._take_next()

    def _take_next(self) -> None:
        """Take as many entries as there are free workers, or wait for one."""
        if self.paused:
            self.state = State.HELD
            return
        if self._free == 0:
            self.state = State.FULL
            return
        self.state = State.TAKING
        assert self._take is not None
        d = self._take.take(self._free)
        if self._replicas is not None:
            d.addCallback(self._replicated)
        # A raise while starting what was taken is a failed take too.
        d.addCallback(self._took).addErrback(self._take_failed)

    def _replicated(
        self, reply: bytes | list[bytes] | None
    ) -> Deferred[bytes | list[bytes] | None] | bytes | list[bytes] | None:
        """
        Before running what was taken, wait for the take (its move to the
        in-flight list) to reach the replicas, on the link that made it.
        """
        assert self._replicas is not None
        if not reply:
            return reply
        return self._replicas.after(self._blocking, reply)

    def _took(self, reply: bytes | list[bytes] | None) -> None:
        if self.state in (State.UNBLOCKING, State.HOLDING):
            # Taken while stopping or pausing: not started, so it goes back.
            for payload in _payloads(reply):
                self._outcomes.put_back(self._type, payload)
            self._take_ended()
            return
        # Still TAKING while they start: a script that ends at once frees
        # its worker without starting a second take.
        if isinstance(reply, bytes):
            self._start(reply)
        elif reply:
            for payload in reply:
                self._start(payload)
        self._take_next()

    def _take_failed(self, failure: Failure) -> None:
        if self.state is State.UNBLOCKING:
            # Ended by the stop; what it took, the next reconcile puts back.
            self._take_ended()
            return
        # A pause's CLIENT UNBLOCKs end with the take (the loop holds once
        # the reconcile below has put back what the take may have moved).
        self._cancel_timer()
        self.state = State.RETRYING
        if self._retry.later(failure, self._blocking, self._reconcile):
            return
        if failure.check(ResponseError):
            self.log.error(
                "cannot take {type} entries from {queue}: {error}; trying again in 5s",
                type=self._type,
                queue=self._queue,
                error=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "cannot take {type} entries from {queue}; trying again in 5s",
                failure,
                type=self._type,
                queue=self._queue,
            )
        self._timer = self._clock.callLater(5.0, self._retry_take)

    def _retry_take(self) -> None:
        self._timer = None
        self._take_next()

    def _reconcile(self) -> None:
        """
        Put back in-flight entries this process does not know of (a take
        whose reply was lost), then take entries again.  Needs the control
        link as well as the taking one.
        """
        self.state = State.RECONCILING
        self._retry.when_connected(self._control, self._put_back_unknown)

    def _put_back_unknown(self) -> None:
        """Put back every in-flight entry that is neither running nor unwritten."""
        assert self._take is not None
        if not self._take.tracked:
            self._reconciled(0)
            return
        known = [task.payload for task, _ in self._running.values()]
        known.extend(self._outcomes.known_payloads(self._type))
        d = self._control.execute("EVAL", RECONCILE_SCRIPT, 2, self._inflight, self._queue, *known)
        d.addCallbacks(self._reconciled, self._reconcile_failed)

    def _reconciled(self, back: Any) -> None:
        if self.state is not State.RECONCILING:
            return
        if back:
            self.log.warn(
                "{count} {type} entries taken as the connection was lost went back to "
                "the head of {queue}",
                count=back,
                type=self._type,
                queue=self._queue,
            )
        self._take_next()

    def _reconcile_failed(self, failure: Failure) -> None:
        if self.state is not State.RECONCILING:
            # Stopped meanwhile: the next start reconciles again.
            return
        self.state = State.RETRYING
        if self._retry.later(failure, self._control, self._reconcile):
            return
        self.log.error(
            "cannot check the {type} in-flight list: {error}",
            type=self._type,
            error=failure.getErrorMessage(),
        )
        self._take_next()

    # Running

    def _start(self, payload: bytes) -> None:
        if self._verbose:
            self.log.info(
                "task {type} taken: {payload}", type=self._type, payload=payload_text(payload)
            )
        entry = parse_entry(self._type, payload)
        if isinstance(entry, InvalidEntry):
            self._outcomes.invalid(entry)
            return
        env = self._env.of(entry)
        if isinstance(env, InvalidEntry):
            self._outcomes.invalid(env)
            return
        self._outcomes.started(entry)
        task_type = self.task_type
        # The entry is this run's alone (parsed from its payload just now).
        key = id(entry)
        run = self._runner.run(
            task_type.script,
            entry.args,
            task_type.timeout,
            env,
            on_done=functools.partial(self._finished, task=entry, key=key),
        )
        # Holds a worker until _finished frees it (never before run() returns).
        self._running[key] = (entry, run)

    def _finished(self, outcome: Outcome, task: Task, key: int) -> None:
        # The one place a worker is freed.
        _, run = self._running.pop(key)
        try:
            if run.stopped:
                self._outcomes.requeued(task, outcome)
            elif outcome.succeeded:
                self._outcomes.succeeded(task, outcome)
            else:
                self._outcomes.failed(task, outcome)
        except Exception:
            self.log.failure(
                "cannot record the outcome of a {type} task {args}",
                type=task.type,
                args=list(task.args),
            )
        state = self.state
        if state is State.FULL:
            self._take_next()
        elif state is State.STOPPED:
            self._maybe_stopped()

    # Pausing

    def pause(self) -> None:
        """
        Take nothing more until L{resume}; a take on its way is ended, and
        what it took goes back.  Running scripts finish.
        """
        self.paused = True
        if self.state is State.TAKING:
            self.state = State.HOLDING
            self._unblock(1)
        elif self.state is State.FULL:
            self.state = State.HELD

    def resume(self) -> None:
        """Take entries again, after L{pause}."""
        self.paused = False
        if self.state is State.HELD:
            self._take_next()

    # Stopping

    @property
    def running(self) -> int:
        return len(self._running)

    def stop(self) -> Deferred[None]:
        """
        Stop taking entries at once; fires when the running scripts are done.
        """
        self._retry.cancel()
        if self.state is State.HOLDING:
            # Its CLIENT UNBLOCKs go on, for the stop now.
            self.state = State.UNBLOCKING
        else:
            self._cancel_timer()
        if self.state is State.TAKING:
            self.state = State.UNBLOCKING
            self._unblock(1)
        elif self.state is not State.UNBLOCKING:
            self.state = State.STOPPED
        stopped: Deferred[None] = Deferred()
        self._stop_waiters.append(stopped)
        self._maybe_stopped()
        return stopped

    def _unblock(self, attempt: int) -> None:
        """
        End the pending take now; what it took goes back.  Asked again until
        it has ended, in case the unblock overtook the take.
        """
        self._timer = None
        client_id = self._blocking.client_id
        if client_id is None:
            # The link is down: the take fails with it.
            return
        if attempt > MAX_UNBLOCKS:
            # Five seconds and Redis has not answered: drop the connection,
            # which ends the take (what it took, the reconcile puts back).
            self._blocking.abort()
            return
        # Sent again in 0.2 s, and the connection dropped in the end: a
        # failed unblock changes nothing.
        self._control.execute("CLIENT", "UNBLOCK", client_id).addErrback(lambda _: None)
        self._timer = self._clock.callLater(0.2, self._unblock, attempt + 1)

    def _take_ended(self) -> None:
        """The take that a stop or a pause ended is over."""
        self._cancel_timer()
        if self.state is State.HOLDING:
            # Held, or taking again if resumed meanwhile.
            self._take_next()
            return
        self.state = State.STOPPED
        self._maybe_stopped()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop_scripts(self) -> None:
        """ShutdownTimeout is over: stop every running script."""
        for _, run in list(self._running.values()):
            run.stop()

    def _maybe_stopped(self) -> None:
        if not self._stop_waiters or self.state is not State.STOPPED or self._running:
            return
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _payloads(reply: bytes | list[bytes] | None) -> list[bytes]:
    """What one take brought, as a list."""
    if reply is None:
        return []
    if isinstance(reply, bytes):
        return [reply]
    return list(reply)
