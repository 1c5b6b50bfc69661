"""
Writing what became of each entry to Redis.

An entry stays in its instance's in-flight list until its outcome is
written: a success removes it, a failure moves it to the failed list (with
the list's EXPIRE, in one MULTI/EXEC), a shutdown puts it back at the head
of its queue.  A write that meets a lost connection waits for Redis and is
sent again, so outcomes that finish during an outage are written when
Redis returns.  With C{RedisWaitReplicas}, a write counts as made once
C{WAIT} has answered after it.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.keys import Keys
from goophry_tx.redis import Command, IRedisLink, Retry
from goophry_tx.replicas import ReplicaWait
from goophry_tx.task import InvalidEntry, Task, failed_entry, payload_text

# Removes each finished entry (ARGV) once from the in-flight list (KEYS[1]).
REMOVE_SCRIPT = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return #ARGV
"""

# Moves a failed entry (ARGV[1]) from the in-flight list (KEYS[1]) to the
# scheduled set (KEYS[2]), as its next attempt (ARGV[3]) due at ARGV[2]:
# one step, so that a daemon killed at any moment loses nothing.
RETRY_SCRIPT = """
redis.call('LREM', KEYS[1], -1, ARGV[1])
return redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
"""


#: Seconds a finished entry waits to be removed with the others of its
#: type that finish meanwhile: at Workers 8 on /bin/true that is several
#: removals in one round trip instead of one each, about 8 % of the
#: daemon's CPU per task; an entry whose daemon dies in that time runs
#: again, as one whose removal was lost would.
REMOVE_DELAY = 0.005


class OutcomeStore:
    """
    Writes outcomes to Redis, and keeps those not written yet: their
    entries are still in the in-flight list, and known to be this process's.
    """

    log = Logger()

    def __init__(
        self,
        link: IRedisLink,
        keys: Keys,
        instance: str,
        failed_ttl: int,
        clock: IReactorTime,
        retry_delay: float = 0.5,
        failed_ttls: Mapping[str, int] | None = None,
        replicas: ReplicaWait | None = None,
        remove_delay: float = 0.0,
    ) -> None:
        """
        @param failed_ttl: FailedTasksTTL, for the types without their own.
        @param failed_ttls: the types' own FailedTasksTTL.
        @param replicas: with C{RedisWaitReplicas}, what waits for each
            write to reach the replicas.
        @param remove_delay: seconds a finished entry waits for others of
            its type to finish, to be removed with them in one round trip
            (the daemon's L{REMOVE_DELAY}); 0 sends it at once.
        """
        self._link = link
        self._keys = keys
        self._instance = instance
        # Read at each failure: a reload changes it.
        self.failed_ttl = failed_ttl
        #: The types' own FailedTasksTTL (set again by a reload).
        self.failed_ttls: dict[str, int] = dict(failed_ttls or {})
        self._clock = clock
        self._replicas = replicas
        self._retry = Retry(clock, retry_delay)
        #: Outcome writes on their way (failures, retries, requeues).
        self._pending: set[Deferred[None]] = set()
        #: Told whenever a write or a removal has ended (L{flush}).
        self._ended_waiters: list[Deferred[None]] = []
        self._remove_delay = remove_delay
        #: Per type, the removal waiting for L{remove_delay} to pass.
        self._remove_timers: dict[str, IDelayedCall] = {}
        self._finished: dict[str, list[bytes]] = {}
        #: Types with a removal waiting for its delay or on its way.
        self._removing: set[str] = set()
        self._unwritten: dict[str, collections.Counter[bytes]] = collections.defaultdict(
            collections.Counter
        )

    @property
    def pending(self) -> int:
        """Writes and removals on their way to Redis."""
        # A type in _removing has one removal waiting or on its way: the hot
        # path, counted by the set rather than given a Deferred each.
        return len(self._pending) + len(self._removing)

    def _ended(self) -> None:
        """A write or a removal has ended: tell whoever waits for one."""
        if self._ended_waiters:
            waiters, self._ended_waiters = self._ended_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def unwritten(self, task_type: str) -> list[bytes]:
        """The payloads of C{task_type} whose outcome is not written yet, once per entry."""
        return list(self._unwritten[task_type].elements())

    def _inflight(self, task_type: str) -> str:
        return self._keys.inflight(task_type, self._instance)

    def succeeded(self, task: Task) -> None:
        """
        Forget a finished entry: remove it from the in-flight list after
        C{remove_delay}, with those of its type that finished meanwhile.
        While a removal of this type is on its way, the next ones wait and
        go together, in one script, as soon as it is back.
        """
        self._unwritten[task.type][task.payload] += 1
        waiting = self._finished.setdefault(task.type, [])
        waiting.append(task.payload)
        if task.type in self._removing:
            return
        self._removing.add(task.type)
        if self._remove_delay > 0:
            self._remove_timers[task.type] = self._clock.callLater(
                self._remove_delay, self._remove_due, task.type
            )
        else:
            self._remove_finished(task.type)

    def _remove_due(self, task_type: str) -> None:
        del self._remove_timers[task_type]
        self._remove_finished(task_type)

    def _remove_finished(self, task_type: str) -> None:
        """Send the removal of C{task_type}'s finished entries (counted in L{pending} already)."""
        payloads, self._finished[task_type] = self._finished[task_type], []
        inflight = self._inflight(task_type)

        def attempt() -> None:
            if len(payloads) == 1:
                d: Deferred[Any] = self._link.execute("LREM", inflight, -1, payloads[0])
            else:
                d = self._link.execute("EVAL", REMOVE_SCRIPT, 1, inflight, *payloads)
            self._replicated(d).addCallbacks(written, retry)

        def written(_: object) -> None:
            unwritten = self._unwritten[task_type]
            for payload in payloads:
                unwritten[payload] -= 1
                if unwritten[payload] <= 0:
                    del unwritten[payload]
            if self._finished[task_type]:
                # They have waited for this one: they go now.
                self._remove_finished(task_type)
            else:
                self._removing.discard(task_type)
            self._ended()

        def retry(failure: Failure) -> None:
            if self._retry.later(failure, self._link, attempt):
                return
            self.log.error(
                "cannot remove finished {type} entries from {key}: {error}; they stay "
                "there, to run again when this instance is gone: {payloads}",
                type=task_type,
                key=inflight,
                error=failure.getErrorMessage(),
                payloads=[payload_text(payload) for payload in payloads],
            )
            written(None)

        attempt()

    def failed(
        self, task: Task | InvalidEntry, error: str, attempts: int | None = None
    ) -> Deferred[None]:
        """
        Move an entry to its failed list (or log it in full if none is kept).

        @param attempts: how many times it ran, for a type with retries.
        """
        commands: list[Command] = [("LREM", self._inflight(task.type), -1, task.payload)]
        record = failed_entry(task, error, int(self._clock.seconds()), self._instance, attempts)
        ttl = self.failed_ttls.get(task.type, self.failed_ttl)
        if ttl > 0:
            failed = self._keys.failed(task.type)
            commands[:0] = [
                ("RPUSH", failed, record),
                ("EXPIRE", failed, ttl),
            ]
        else:
            self.log.warn(
                "failed {type} entry not stored (FailedTasksTTL is 0): {entry}",
                type=task.type,
                entry=record.decode("utf-8"),
            )
        return self._write(task.type, task.payload, commands, record)

    def retry(self, task: Task, payload: bytes, due: float) -> Deferred[None]:
        """Move a failed entry to its scheduled set as C{payload}, due at C{due}."""
        return self._write(
            task.type,
            task.payload,
            [
                (
                    "EVAL",
                    RETRY_SCRIPT,
                    2,
                    self._inflight(task.type),
                    self._keys.scheduled(task.type),
                    task.payload,
                    repr(due),
                    payload,
                )
            ],
            payload,
        )

    def requeue(self, task_type: str, payload: bytes) -> Deferred[None]:
        """Put an entry taken but not finished back at the head of its queue."""
        return self._write(
            task_type,
            payload,
            [
                ("LREM", self._inflight(task_type), -1, payload),
                ("LPUSH", self._keys.queue(task_type), payload),
            ],
        )

    def _write(
        self,
        task_type: str,
        payload: bytes,
        commands: Sequence[Command],
        record: bytes | None = None,
    ) -> Deferred[None]:
        """Run C{commands} (one, or several in one MULTI/EXEC) until Redis has them."""
        unwritten = self._unwritten[task_type]
        unwritten[payload] += 1
        done: Deferred[None] = Deferred()
        self._pending.add(done)

        def attempt() -> None:
            if len(commands) > 1:
                d: Deferred[Any] = self._link.transaction(commands)
            else:
                d = self._link.execute(*commands[0])
            self._replicated(d).addCallbacks(written, retry)

        def written(_: object) -> None:
            self._forget(task_type, payload, done)
            done.callback(None)

        def retry(failure: Failure) -> None:
            if self._retry.later(failure, self._link, attempt):
                return
            # Redis refused (say, WRONGTYPE): retrying will not help.  The
            # outcome may be half written, so it is logged in full here.
            self.log.error(
                "cannot record the outcome of a {type} entry in Redis: {error}; "
                "entry {payload}, outcome {record}",
                type=task_type,
                error=failure.getErrorMessage(),
                payload=payload_text(payload),
                record=(record or b"").decode("utf-8", "replace") or "(none)",
            )
            self._forget(task_type, payload, done)
            done.callback(None)

        attempt()
        return done

    def _replicated(self, d: Deferred[Any]) -> Deferred[Any]:
        """With C{RedisWaitReplicas}: once the write C{d} is made, wait for the replicas."""
        replicas = self._replicas
        if replicas is None:
            return d
        return d.addCallback(lambda reply: replicas.after(self._link, reply))

    def _forget(self, task_type: str, payload: bytes, done: Deferred[None]) -> None:
        self._pending.discard(done)
        unwritten = self._unwritten[task_type]
        unwritten[payload] -= 1
        if unwritten[payload] <= 0:
            del unwritten[payload]
        self._ended()

    def flush(self, timeout: float) -> Deferred[int]:
        """
        Wait for the pending writes, for at most C{timeout} seconds.

        Fires with the number still unwritten: their entries stay in the
        in-flight list, to be recovered and run again.
        """
        # Removals waiting for their delay go now.
        timers, self._remove_timers = self._remove_timers, {}
        for task_type, timer in timers.items():
            timer.cancel()
            self._remove_finished(task_type)
        if not self.pending:
            return succeed(0)
        result: Deferred[int] = Deferred()

        def expire() -> None:
            if not result.called:
                result.callback(self.pending)

        timer = self._clock.callLater(timeout, expire)

        def check(_: object = None) -> None:
            if result.called:
                return
            if self.pending:
                # Writes finishing may start the next ones: wait for those too.
                ended: Deferred[None] = Deferred()
                self._ended_waiters.append(ended)
                ended.addBoth(check)
                return
            timer.cancel()
            result.callback(0)

        check()
        return result
