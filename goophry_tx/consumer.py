"""
The consumer loop of one task type.

A worker slot (a L{DeferredSemaphore} of C{Workers}) is acquired before an
entry is taken, so entries that cannot run yet stay in Redis for other
daemons.  The entry moves atomically from the queue to this instance's
in-flight list (C{BLMOVE ... LEFT RIGHT}) on a connection of its own, runs,
and leaves the in-flight list when its outcome is recorded.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.config import TaskType
from goophry_tx.failures import ErrorNotifier, OutcomeStore
from goophry_tx.keys import Keys
from goophry_tx.process.runner import RunningScript, ScriptRunner
from goophry_tx.redis import ConnectionError, RedisLink, ResponseError, is_transient
from goophry_tx.stats import TypeCounters
from goophry_tx.task import InvalidEntry, Outcome, Task, parse_entry

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


class Consumer:
    """Takes entries of one type from Redis and runs them, C{Workers} at once."""

    log = Logger()

    def __init__(
        self,
        *,
        task_type: TaskType,
        keys: Keys,
        instance: str,
        blocking: RedisLink,
        control: RedisLink,
        store: OutcomeStore,
        runner: ScriptRunner,
        notifier: ErrorNotifier,
        counters: TypeCounters,
        clock: IReactorTime,
        verbose: bool = False,
        block_timeout: float = 10.0,
        atomic: bool = True,
    ) -> None:
        self.task_type = task_type
        self._queue = keys.queue(task_type.type)
        self._inflight = keys.inflight(task_type.type, instance)
        self._blocking = blocking
        self._control = control
        self._store = store
        self._runner = runner
        self._notifier = notifier
        self._counters = counters
        self._clock = clock
        self._verbose = verbose
        self._block_timeout = block_timeout
        #: False on a Redis older than 6.2: BLPOP, at most once.
        self.atomic = atomic
        self._slots = DeferredSemaphore(task_type.workers)
        self._running: dict[int, tuple[Task, RunningScript]] = {}
        self._taking: Deferred[Any] | None = None
        self._unblocks = 0
        self._take_sha: str | bytes = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
        self._starved = True
        self._moving = False
        self._retry: IDelayedCall | None = None
        self._stopping = False
        self._stop_waiters: list[Deferred[None]] = []

    # The loop

    def start(self) -> None:
        """Start taking entries."""
        self._stopping = False
        self._blocking.when_connected().addCallback(self._reconcile)

    def _take_next(self, _: object = None) -> None:
        if self._stopping or self._taking is not None:
            return
        d = self._slots.acquire()
        self._taking = d
        d.addCallback(self._move)
        d.addErrback(self._move_failed)

    def _move(self, _: object) -> Deferred[Any]:
        if self._stopping:
            raise CancelledError()
        self._moving = True
        slots = self._slots
        if self.atomic and slots.tokens > 0 and not self._starved:
            # Several workers free: take what is there for them at once.
            wanted = 1
            while slots.tokens > 0 and wanted < MAX_BATCH:
                slots.acquire()
                wanted += 1
            return self._blocking.execute(
                "EVALSHA", self._take_sha, 2, self._queue, self._inflight, wanted
            ).addCallbacks(
                self._moved_many,
                self._take_script_failed,
                callbackArgs=(wanted,),
                errbackArgs=(wanted,),
            )
        if self.atomic:
            command: tuple[Any, ...] = (
                "BLMOVE",
                self._queue,
                self._inflight,
                "LEFT",
                "RIGHT",
                self._block_timeout,
            )
        else:
            # Redis before 6.0 takes whole seconds only.
            command = ("BLPOP", self._queue, max(1, math.ceil(self._block_timeout)))
        return self._blocking.execute(*command).addCallback(self._moved)

    def _moved_many(self, payloads: list[bytes], wanted: int) -> None:
        self._moving = False
        self._taking = None
        # An empty queue: block for one entry next time.
        self._starved = not payloads
        for _ in range(wanted - len(payloads)):
            self._slots.release()
        for payload in payloads:
            if self._stopping:
                self._slots.release()
                self._store.requeue(self.task_type.type, payload)
            else:
                self._start(payload)
        self._take_next()

    def _take_script_failed(self, failure: Failure, wanted: int) -> Any:
        # Keep one slot for _move_failed to release.
        for _ in range(wanted - 1):
            self._slots.release()
        if failure.check(ResponseError) and "NOSCRIPT" in failure.getErrorMessage():
            # Redis forgot the script (restarted, SCRIPT FLUSH): load it again.
            self._moving = False
            self._taking = None
            self._slots.release()
            self._load_take_script().addBoth(lambda _: self._take_next())
            return None
        return failure

    def _load_take_script(self) -> Deferred[Any]:
        def loaded(sha: bytes) -> None:
            self._take_sha = sha

        return self._blocking.execute("SCRIPT", "LOAD", TAKE_SCRIPT).addCallback(loaded)

    def _moved(self, reply: Any) -> None:
        self._moving = False
        self._taking = None
        self._starved = False
        payload = reply if self.atomic or reply is None else reply[1]
        if payload is None:
            # Timed out on an empty queue: block again rather than poll.
            self._starved = True
            self._slots.release()
        elif self._stopping:
            # Taken while stopping: not started, so it goes back.
            self._slots.release()
            self._store.requeue(self.task_type.type, payload)
        else:
            self._start(payload)
        self._take_next()

    def _move_failed(self, failure: Failure) -> None:
        self._moving = False
        self._taking = None
        if failure.check(CancelledError):
            return
        self._slots.release()
        if self._stopping or self._reconcile_later(failure):
            return
        self.log.error(
            "cannot take {type} entries from {queue}: {error}; trying again in 5s",
            type=self.task_type.type,
            queue=self._queue,
            error=failure.getErrorMessage(),
        )
        self._retry = self._clock.callLater(5.0, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._take_next()

    def _reconcile(self, _: object = None) -> None:
        """
        Put back in-flight entries this process does not know of (a move
        whose reply was lost), then take entries again.
        """
        if self._stopping:
            return
        d = self._control.when_connected()
        d.addCallback(lambda _: self.put_back_unknown())
        d.addCallbacks(self._reconciled, self._reconcile_failed)

    def _reconciled(self, back: Any) -> None:
        if back:
            self.log.warn(
                "{count} {type} entries taken as the connection was lost went back to "
                "the head of {queue}",
                count=back,
                type=self.task_type.type,
                queue=self._queue,
            )
        self._take_next()

    def _reconcile_later(self, failure: Failure) -> bool:
        """
        Redis is away or not ready: reconcile (then take again) once it is
        back.  False for any other failure.
        """
        if failure.check(ConnectionError):
            self._blocking.when_connected().addCallback(self._reconcile)
            return True
        if is_transient(failure):
            self._retry = self._clock.callLater(0.5, self._reconcile)
            return True
        return False

    def _reconcile_failed(self, failure: Failure) -> None:
        if self._reconcile_later(failure):
            return
        self.log.error(
            "cannot check the {type} in-flight list: {error}",
            type=self.task_type.type,
            error=failure.getErrorMessage(),
        )
        self._take_next()

    def put_back_unknown(self) -> Deferred[Any]:
        """Put every in-flight entry that is neither running nor unwritten back."""
        if not self.atomic:
            return succeed(0)
        known = [task.payload for task, _ in self._running.values()]
        for payload, count in self._store.unwritten[self.task_type.type].items():
            known.extend([payload] * count)
        return self._control.execute(
            "EVAL", RECONCILE_SCRIPT, 2, self._inflight, self._queue, *known
        )

    # Running

    def _start(self, payload: bytes) -> None:
        if self._verbose:
            self.log.info(
                "task {type} taken: {payload!r}", type=self.task_type.type, payload=payload
            )
        entry = parse_entry(self.task_type.type, payload)
        if isinstance(entry, InvalidEntry):
            self._slots.release()
            self._invalid(entry)
            return
        counters = self._counters
        counters.started += 1
        counters.running += 1
        if self._verbose:
            self.log.info(
                "task {type} started: {script} {args}",
                type=entry.type,
                script=self.task_type.script,
                args=list(entry.args),
            )
        run = self._runner.run(self.task_type.script, entry.args, self.task_type.timeout)
        key = id(run)
        self._running[key] = (entry, run)
        run.done.addCallback(self._finished, entry, key)

    def _finished(self, outcome: Outcome, task: Task, key: int) -> None:
        _, run = self._running.pop(key)
        self._slots.release()
        counters = self._counters
        counters.running -= 1
        counters.seconds += outcome.duration
        if run.stopped:
            counters.requeued += 1
            self.log.info(
                "task {type} {args} stopped by shutdown; its entry goes back to the queue",
                type=task.type,
                args=list(task.args),
            )
            self._store.requeue(task.type, task.payload)
        elif outcome.succeeded:
            counters.succeeded += 1
            if self._verbose:
                self.log.info(
                    "task {type} done in {duration:.3f}s: {args}",
                    type=task.type,
                    duration=outcome.duration,
                    args=list(task.args),
                )
            self._store.succeeded(task)
        else:
            counters.failed += 1
            error = outcome.error_message()
            self.log.warn(
                "task {type} failed: {script} {args}: {error}",
                type=task.type,
                script=self.task_type.script,
                args=list(task.args),
                error=error,
            )
            self._store.failed(task, error)
            self._notifier.notify(self.task_type.script, task.args, error)
        self._maybe_stopped()

    def _invalid(self, entry: InvalidEntry) -> None:
        self._counters.invalid += 1
        self.log.warn(
            "{type}: {reason}; entry: {payload!r}",
            type=entry.type,
            reason=entry.reason,
            payload=entry.payload,
        )
        self._store.failed(entry, entry.reason)
        self._notifier.notify(
            self.task_type.script,
            (),
            f"{entry.reason}\n{entry.payload.decode('utf-8', 'backslashreplace')}",
        )

    # Stopping

    @property
    def running(self) -> int:
        return len(self._running)

    def stop(self) -> Deferred[None]:
        """
        Stop taking entries at once; fires when the running scripts are done.
        """
        self._stopping = True
        self._unblocks = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._taking is not None and not self._moving:
            self._taking.cancel()
        if self._moving:
            self._unblock()
        stopped: Deferred[None] = Deferred()
        self._stop_waiters.append(stopped)
        self._maybe_stopped()
        return stopped

    def _unblock(self) -> None:
        """
        End the pending blocking move now; what it took goes back.  Asked
        again until it has ended, in case the unblock overtook the move.
        """
        client_id = self._blocking.client_id
        if not self._moving or client_id is None:
            return
        self._unblocks += 1
        if self._unblocks > 25:
            # Five seconds and Redis has not answered: drop the connection,
            # which ends the move (what it took, the reconcile puts back).
            self._blocking.abort()
            return
        self._control.execute("CLIENT", "UNBLOCK", client_id).addErrback(lambda f: None)
        self._retry = self._clock.callLater(0.2, self._unblock)

    def stop_scripts(self) -> None:
        """ShutdownTimeout is over: stop every running script."""
        for _, run in list(self._running.values()):
            run.stop()

    def _maybe_stopped(self) -> None:
        if not self._stop_waiters or self._running:
            return
        if self._taking is not None:
            self._taking.addBoth(lambda _: self._maybe_stopped())
            return
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
