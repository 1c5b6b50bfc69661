"""
Recording outcomes in Redis, and telling ErrorScript about failures.

An entry stays in its instance's in-flight list until its outcome is
recorded: a success removes it, a failure moves it to the failed list (with
the list's EXPIRE, in one MULTI/EXEC), a shutdown puts it back at the head
of its queue.  A write that meets a lost connection waits for Redis and is
sent again, so outcomes that finish during an outage are written when
Redis returns.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.keys import Keys
from goophry_tx.process.runner import ScriptRunner
from goophry_tx.redis import Command, ConnectionError, RedisLink, is_transient
from goophry_tx.task import InvalidEntry, Outcome, Task, error_script_message, failed_entry

# Removes each finished entry (ARGV) once from the in-flight list (KEYS[1]).
REMOVE_SCRIPT = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return #ARGV
"""


class OutcomeStore:
    """Writes what became of each entry taken from a queue."""

    log = Logger()

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        instance: str,
        failed_ttl: int,
        clock: IReactorTime,
        retry_delay: float = 0.5,
    ) -> None:
        self._link = link
        self._keys = keys
        self._instance = instance
        self._failed_ttl = failed_ttl
        self._clock = clock
        self._retry_delay = retry_delay
        self._pending: set[Deferred[None]] = set()
        self._finished: dict[str, list[bytes]] = {}
        self._removing: set[str] = set()
        #: Payloads taken from each type's queue whose outcome is not written yet.
        self.unwritten: dict[str, collections.Counter[bytes]] = collections.defaultdict(
            collections.Counter
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _inflight(self, task_type: str) -> str:
        return self._keys.inflight(task_type, self._instance)

    def succeeded(self, task: Task) -> None:
        """
        Forget a finished entry.  While a removal of this type is on its
        way, the next ones wait and go together, in one script.
        """
        self.unwritten[task.type][task.payload] += 1
        waiting = self._finished.setdefault(task.type, [])
        waiting.append(task.payload)
        if task.type not in self._removing:
            self._remove_finished(task.type)

    def _remove_finished(self, task_type: str) -> None:
        payloads, self._finished[task_type] = self._finished[task_type], []
        self._removing.add(task_type)
        inflight = self._inflight(task_type)
        done: Deferred[None] = Deferred()
        self._pending.add(done)

        def attempt(_: object = None) -> None:
            if len(payloads) == 1:
                d: Deferred[Any] = self._link.execute("LREM", inflight, -1, payloads[0])
            else:
                d = self._link.execute("EVAL", REMOVE_SCRIPT, 1, inflight, *payloads)
            d.addCallbacks(written, retry)

        def written(_: object) -> None:
            self._pending.discard(done)
            unwritten = self.unwritten[task_type]
            for payload in payloads:
                unwritten[payload] -= 1
                if unwritten[payload] <= 0:
                    del unwritten[payload]
            self._removing.discard(task_type)
            if self._finished[task_type]:
                self._remove_finished(task_type)
            done.callback(None)

        def retry(failure: Failure) -> None:
            if failure.check(ConnectionError):
                self._link.when_connected().addCallback(attempt)
            elif is_transient(failure):
                self._clock.callLater(self._retry_delay, attempt)
            else:
                self.log.error(
                    "cannot remove finished {type} entries from {key}: {error}; they stay "
                    "there, to run again when this instance is gone: {payloads!r}",
                    type=task_type,
                    key=inflight,
                    error=failure.getErrorMessage(),
                    payloads=payloads,
                )
                written(None)

        attempt()

    def failed(self, task: Task | InvalidEntry, error: str) -> Deferred[None]:
        """Move an entry to its failed list (or log it in full if none is kept)."""
        commands: list[Command] = [("LREM", self._inflight(task.type), -1, task.payload)]
        record = failed_entry(task, error)
        if self._failed_ttl > 0:
            failed = self._keys.failed(task.type)
            commands[:0] = [
                ("RPUSH", failed, record),
                ("EXPIRE", failed, self._failed_ttl),
            ]
        else:
            self.log.warn(
                "failed {type} entry not stored (FailedTasksTTL is 0): {entry}",
                type=task.type,
                entry=record.decode("utf-8"),
            )
        return self._write(task.type, task.payload, commands, True, record)

    def requeue(self, task_type: str, payload: bytes) -> Deferred[None]:
        """Put an entry taken but not finished back at the head of its queue."""
        return self._write(
            task_type,
            payload,
            [
                ("LREM", self._inflight(task_type), -1, payload),
                ("LPUSH", self._keys.queue(task_type), payload),
            ],
            True,
        )

    def _write(
        self,
        task_type: str,
        payload: bytes,
        commands: Sequence[Command],
        atomic: bool,
        record: bytes | None = None,
    ) -> Deferred[None]:
        unwritten = self.unwritten[task_type]
        unwritten[payload] += 1
        done: Deferred[None] = Deferred()
        self._pending.add(done)

        def attempt(_: object = None) -> None:
            if atomic and len(commands) > 1:
                d: Deferred[Any] = self._link.transaction(commands)
            else:
                d = self._link.execute(*commands[0])
            d.addCallbacks(written, retry)

        def written(_: object) -> None:
            self._forget(task_type, payload, done)
            done.callback(None)

        def retry(failure: Failure) -> None:
            if failure.check(ConnectionError):
                self._link.when_connected().addCallback(attempt)
                return
            if is_transient(failure):
                # Redis is loading its data, busy with a script, ...
                self._clock.callLater(self._retry_delay, attempt)
                return
            # Redis refused (say, WRONGTYPE): retrying will not help.  The
            # outcome may be half written, so it is logged in full here.
            self.log.error(
                "cannot record the outcome of a {type} entry in Redis: {error}; "
                "entry {payload!r}, outcome {record}",
                type=task_type,
                error=failure.getErrorMessage(),
                payload=payload,
                record=(record or b"").decode("utf-8", "replace") or "(none)",
            )
            self._forget(task_type, payload, done)
            done.callback(None)

        attempt()
        return done

    def _forget(self, task_type: str, payload: bytes, done: Deferred[None]) -> None:
        self._pending.discard(done)
        unwritten = self.unwritten[task_type]
        unwritten[payload] -= 1
        if unwritten[payload] <= 0:
            del unwritten[payload]

    def flush(self, timeout: float) -> Deferred[int]:
        """
        Wait for the pending writes, for at most C{timeout} seconds.

        Fires with the number still unwritten: their entries stay in the
        in-flight list, to be recovered and run again.
        """
        if not self._pending:
            return succeed(0)
        result: Deferred[int] = Deferred()

        def expire() -> None:
            if not result.called:
                result.callback(self.pending)

        timer = self._clock.callLater(timeout, expire)

        def check(_: object = None) -> None:
            if result.called:
                return
            if self._pending:
                # Writes finishing may start the next ones: wait for those too.
                DeferredList(list(self._pending), consumeErrors=True).addBoth(check)
                return
            timer.cancel()
            result.callback(0)

        check()
        return result


class ErrorNotifier:
    """
    Runs ErrorScript for each failure, one at a time, beside the workers.

    The queue is bounded: a message that does not fit is logged in full
    instead, never dropped silently.
    """

    log = Logger()

    def __init__(
        self,
        runner: ScriptRunner,
        script: str | None,
        queue_size: int = 1000,
        timeout: float = 30.0,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._runner = runner
        self._script = script
        self._queue: collections.deque[str] = collections.deque()
        self._queue_size = queue_size
        self._timeout = timeout
        self._busy = False
        self._idle: list[Deferred[None]] = []
        self._on_done = on_done
        self.dropped = 0

    def notify(self, script: str, args: tuple[str, ...], error: str) -> None:
        """Tell ErrorScript that a task of C{script} failed with C{error}."""
        if self._script is None:
            return
        message = error_script_message(script, args, error)
        if len(self._queue) >= self._queue_size:
            self.dropped += 1
            self.log.error(
                "ErrorScript queue full ({size}); not told: {message}",
                size=self._queue_size,
                message=message,
            )
            return
        self._queue.append(message)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._queue or self._script is None:
            self._busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self._busy = True
        message = self._queue.popleft()
        run = self._runner.run(self._script, (message,), self._timeout)
        run.done.addCallback(self._finished, message)

    def _finished(self, outcome: Outcome, message: str) -> None:
        if not outcome.succeeded:
            self.log.error(
                "ErrorScript {script} failed: {error} (it was told: {message})",
                script=self._script,
                error=outcome.error_message(),
                message=message,
            )
        if self._on_done is not None:
            self._on_done(outcome)
        self._next()

    def when_idle(self) -> Deferred[None]:
        """Fires when every queued message has been handed to ErrorScript."""
        if not self._busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def flush(self, clock: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Wait at most C{timeout} seconds for ErrorScript to be told of every
        queued failure; what is left then is logged in full.
        """
        result: Deferred[None] = Deferred()

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(None)

        def expire() -> None:
            left, self._queue = list(self._queue), collections.deque()
            for message in left:
                self.log.error("stopping before ErrorScript was told: {message}", message=message)
            if not result.called:
                result.callback(None)

        timer = clock.callLater(timeout, expire)
        self.when_idle().addCallback(done)
        return result
