"""
What became of each entry, decided and recorded in one place.

Every outcome goes through L{OutcomeRecorder}: it counts it (the counters
the stats serve), writes it to Redis (L{OutcomeStore}), and tells
ErrorScript of a failure (L{ErrorNotifier}).  The consumers and the recovery
of dead instances only say what happened.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, get_args

from twisted.logger import Logger

from goophry_tx.config import TaskType
from goophry_tx.errorscript import ErrorNotifier
from goophry_tx.recovery import Abandoned
from goophry_tx.schedule import RetryTimes, retry_payload
from goophry_tx.store import OutcomeStore
from goophry_tx.task import (
    InvalidEntry,
    Outcome,
    Task,
    format_seconds,
    parse_entry,
    payload_text,
)

#: Upper bounds of the task duration histogram's buckets, in seconds:
#: from a script that only checks something to one that runs for an hour.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

FailureReason = Literal["exit", "signal", "timeout", "output", "start", "invalid", "abandoned"]

#: Every reason an entry ends in its failed list, as C{goophry_failures_total} labels it.
FAILURE_REASONS: tuple[FailureReason, ...] = get_args(FailureReason)


def failure_reason(what: Outcome | InvalidEntry) -> FailureReason:
    """
    Why an entry is stored as failed, from what the recorder has at hand.
    An abandoned entry has no outcome: its recorder passes C{"abandoned"}.
    """
    if isinstance(what, InvalidEntry):
        return "invalid"
    if what.start_error is not None:
        return "start"
    # A script past its timeout is killed: the timeout is the reason, not
    # the signal that ended it.
    if what.timed_out is not None:
        return "timeout"
    if what.signal is not None:
        return "signal"
    if what.exit_code != 0:
        return "exit"
    return "output"


class TypeCounters:
    """What happened to the entries of one task type."""

    __slots__ = (
        "started",
        "running",
        "succeeded",
        "failed",
        "invalid",
        "requeued",
        "retried",
        "seconds",
        "durations",
        "failures",
    )

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.succeeded = 0
        self.failed = 0
        self.invalid = 0
        self.requeued = 0
        #: Failed runs scheduled to run again.
        self.retried = 0
        self.seconds = 0.0
        #: Finished runs per duration bucket (not cumulative); the last is +Inf.
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.failures: dict[FailureReason, int] = dict.fromkeys(FAILURE_REASONS, 0)

    def observe(self, duration: float) -> None:
        """Count a finished run and how long it took."""
        self.seconds += duration
        self.durations[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1

    def failed_with(self, reason: FailureReason) -> None:
        """
        Count an entry stored as failed, and why.  An invalid entry counts
        as invalid, not as a failed task, as it always has.
        """
        self.failures[reason] += 1
        if reason == "invalid":
            self.invalid += 1
        else:
            self.failed += 1


def _no_history(task_type: str, what: str) -> None:
    """No history kept (no dashboard, or a test)."""


def type_counters(types: Iterable[str]) -> dict[str, TypeCounters]:
    """Counters from zero for each task type."""
    return {task_type: TypeCounters() for task_type in types}


class OutcomeRecorder:
    """
    Counts, writes and reports what became of each entry taken from a queue:
    one method per outcome.
    """

    log = Logger()

    def __init__(
        self,
        *,
        tasks: Iterable[TaskType],
        counters: Mapping[str, TypeCounters],
        store: OutcomeStore,
        notifier: ErrorNotifier,
        retry_times: RetryTimes,
        history: Callable[[str, str], None] | None = None,
        verbose: bool = False,
    ) -> None:
        """
        @param retry_times: when failed runs of a type with C{Retries} run again.
        @param history: told C{(type, "started" | "succeeded" | "failed")}
            per outcome, for the dashboard's per-minute history.
        """
        self._types = {t.type: t for t in tasks}
        self._scripts = {t.type: t.script for t in self._types.values()}
        self._retry_times = retry_times
        #: The only writer of these counters; the stats read them.
        self.counters = counters
        self._store = store
        self._notifier = notifier
        #: Told C{(type, "started" | "succeeded" | "failed")} per outcome, for
        #: the dashboard's per-minute history.
        self._history = history or _no_history
        self._verbose = verbose

    def configure(self, tasks: Iterable[TaskType]) -> None:
        """
        The types' scripts after a reload, for the log and ErrorScript.  A
        type the reload removed keeps its script: its last runs still end.
        """
        tasks = list(tasks)
        self._types.update((t.type, t) for t in tasks)
        self._scripts.update((t.type, t.script) for t in tasks)

    def known_payloads(self, task_type: str) -> list[bytes]:
        """
        The payloads of C{task_type} whose outcome is not written yet (once
        per entry): their entries are still in the in-flight list, and ours.
        """
        return self._store.unwritten(task_type)

    def started(self, task: Task) -> None:
        """A task's script has been started."""
        counters = self.counters[task.type]
        counters.started += 1
        counters.running += 1
        self._history(task.type, "started")
        if self._verbose:
            self.log.info(
                "task {type} started: {script} {args}",
                type=task.type,
                script=self._scripts[task.type],
                args=list(task.args),
            )

    def succeeded(self, task: Task, outcome: Outcome) -> None:
        """A task's script exited 0: its entry is forgotten."""
        counters = self.counters[task.type]
        counters.running -= 1
        counters.observe(outcome.duration)
        counters.succeeded += 1
        self._history(task.type, "succeeded")
        if self._verbose:
            self.log.info(
                "task {type} done in {duration:.3f}s: {args}",
                type=task.type,
                duration=outcome.duration,
                args=list(task.args),
            )
        self._store.succeeded(task)

    def failed(self, task: Task, outcome: Outcome) -> None:
        """
        A task's script failed: with attempts left, its entry is scheduled
        to run again; else it is stored as failed and ErrorScript told.
        """
        counters = self.counters[task.type]
        counters.running -= 1
        counters.observe(outcome.duration)
        task_type = self._types[task.type]
        script = self._scripts[task.type]
        error = outcome.error_message()
        attempts = task_type.retries + 1
        if task.attempt < attempts:
            self._retry(task, error, attempts)
            return
        counters.failed_with(failure_reason(outcome))
        self._history(task.type, "failed")
        self.log.warn(
            "task {type} failed: {script} {args}: {error}",
            type=task.type,
            script=script,
            args=list(task.args),
            error=error,
        )
        self._store.failed(task, error, task.attempt if task_type.retries else None)
        self._notifier.notify(script, task.args, error)

    def _retry(self, task: Task, error: str, attempts: int) -> None:
        """Schedule the next run of a failed task, after its backoff."""
        self.counters[task.type].retried += 1
        times = self._retry_times
        delay = times.delay(task.attempt, self._types[task.type].retry_backoff)
        self.log.warn(
            "task {type} failed (attempt {attempt} of {attempts}), next in {delay}: "
            "{script} {args}: {error}",
            type=task.type,
            attempt=task.attempt,
            attempts=attempts,
            delay=format_seconds(round(delay, 1)),
            script=self._scripts[task.type],
            args=list(task.args),
            error=error,
        )
        due = times.clock.seconds() + delay
        self._store.retry(task, retry_payload(task.payload, task.attempt + 1), due)
        times.scheduled(due)

    def requeued(self, task: Task, outcome: Outcome) -> None:
        """A task's script was stopped by shutdown: its entry goes back to its queue."""
        counters = self.counters[task.type]
        counters.running -= 1
        counters.observe(outcome.duration)
        counters.requeued += 1
        self.log.info(
            "task {type} {args} stopped by shutdown; its entry goes back to the queue",
            type=task.type,
            args=list(task.args),
        )
        self._store.requeue(task.type, task.payload)

    def put_back(self, task_type: str, payload: bytes) -> None:
        """
        An entry taken as its consumer stopped, never started: back to the
        head of its queue.  Not counted: nothing ran.
        """
        self._store.requeue(task_type, payload)

    def invalid(self, entry: InvalidEntry) -> None:
        """An entry that is not a task: stored as failed, with its payload."""
        self.counters[entry.type].failed_with("invalid")
        self._history(entry.type, "failed")
        self.log.warn(
            "{type}: {reason}; entry: {payload}",
            type=entry.type,
            reason=entry.reason,
            payload=payload_text(entry.payload),
        )
        self._store.failed(entry, entry.reason)
        self._notifier.notify(
            self._scripts[entry.type],
            (),
            f"{entry.reason}\n{payload_text(entry.payload)}",
        )

    def abandoned(self, abandoned: Abandoned) -> None:
        """An entry recovered MaxRecoveries times: stored as failed, never run again."""
        entry = parse_entry(abandoned.type, abandoned.payload)
        error = (
            f"abandoned after {abandoned.recoveries} recoveries: the daemon running it "
            f"died each time (last {abandoned.dead_instance})"
        )
        self.log.error(
            "{type} entry {payload} {error}",
            type=abandoned.type,
            payload=payload_text(abandoned.payload),
            error=error,
        )
        # A type this instance does not run (the dead one did) has no counters.
        counters = self.counters.get(abandoned.type)
        if counters is not None:
            counters.failed_with("abandoned")
            self._history(abandoned.type, "failed")
        self._store.failed(entry, error)
        args = entry.args if isinstance(entry, Task) else ()
        self._notifier.notify(self._scripts.get(abandoned.type) or abandoned.type, args, error)
