"""
Telling ErrorScript about failures, one at a time, beside the workers.
"""

from __future__ import annotations

import collections

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from goophry_tx.process.runner import ScriptRunner
from goophry_tx.task import Outcome, error_script_message


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
    ) -> None:
        self._runner = runner
        # Read at each failure: a reload changes them.
        self.script = script
        self._queue: collections.deque[str] = collections.deque()
        self.queue_size = queue_size
        self.timeout = timeout
        self._busy = False
        self._idle: list[Deferred[None]] = []

    def notify(self, script: str, args: tuple[str, ...], error: str) -> None:
        """Tell ErrorScript that a task of C{script} failed with C{error}."""
        if self.script is None:
            return
        message = error_script_message(script, args, error)
        if len(self._queue) >= self.queue_size:
            self.log.error(
                "ErrorScript queue full ({size}); not told: {message}",
                size=self.queue_size,
                message=message,
            )
            return
        self._queue.append(message)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if not self._queue or self.script is None:
            self._busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self._busy = True
        message = self._queue.popleft()
        run = self._runner.run(self.script, (message,), self.timeout)
        run.done.addCallback(self._finished, message)

    def _finished(self, outcome: Outcome, message: str) -> None:
        try:
            if not outcome.succeeded:
                self.log.error(
                    "ErrorScript {script} failed: {error} (it was told: {message})",
                    script=self.script,
                    error=outcome.error_message(),
                    message=message,
                )
        except Exception:
            self.log.failure(
                "cannot report how ErrorScript ended (it was told: {message})", message=message
            )
        # Whatever happened above, the next message is told.
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
