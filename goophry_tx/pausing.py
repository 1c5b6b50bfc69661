"""
Which task types an operator has paused, as every daemon learns it.

The set C{<K>:paused} is the truth: C{goophry-ctl pause} and C{resume}
change it and, in the same MULTI/EXEC, publish C{pause T} or C{resume T} on
the channel of the same name.  A daemon reads the set when it starts, at
every heartbeat (a backstop: one C{SMEMBERS}), and each time its
subscription to the channel is made again after a reconnect (messages
published while it was down are lost); between reads the messages tell it
at once, with no polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from goophry_tx.consumer import Consumer
from goophry_tx.keys import Keys
from goophry_tx.redis import IRedisLink, ISubscriber, Retry

#: The messages on the channel, and what each makes of its type.
ACTIONS = {b"pause": True, b"resume": False}


@implementer(ISubscriber)
class PauseWatcher(Service):
    """
    Keeps C{paused} (the set the stats show) as Redis has it, and pauses or
    resumes the consumers of the types that change.  A child of the
    daemon's service, so that a read waiting to be tried again ends with it.
    """

    log = Logger()

    def __init__(
        self,
        link: IRedisLink,
        keys: Keys,
        paused: set[str],
        consumers: Callable[[], Iterable[Consumer]],
        clock: IReactorTime,
    ) -> None:
        """
        @param link: where the set is read (not the subscribing link, which
            takes no other commands).
        @param paused: filled with the paused types, all of them, configured
            here or not.
        @param consumers: this daemon's consumers now.
        """
        self._link = link
        self._key = keys.paused
        self.paused = paused
        self._consumers = consumers
        self._retry = Retry(clock)
        #: Whether a read that failed waits to be tried again.
        self._again = False
        #: Reads of the set under way.
        self._reads = 0
        #: Changes heard while a read is under way: the set it brings back
        #: may be older than they are, so they are applied again on top.
        self._heard: list[tuple[str, bool]] = []

    def stopService(self) -> None:
        super().stopService()
        self._retry.cancel()
        self._again = False

    # Reading the set

    def read(self) -> Deferred[None]:
        """
        Read the set and act on what changed.  Fires when done, never with
        a failure: one is logged, and the next read mends it.
        """
        if not self._reads:
            self._heard = []
        since = len(self._heard)
        self._reads += 1
        d = self._link.execute("SMEMBERS", self._key)

        def done(result: object) -> object:
            self._reads -= 1
            return result

        d.addBoth(done)
        return d.addCallbacks(self._read, self._read_failed, callbackArgs=(since,))

    def _read(self, members: list[bytes], since: int) -> None:
        paused = {member.decode("utf-8", "replace") for member in members}
        for task_type, pause in self._heard[since:]:
            if pause:
                paused.add(task_type)
            else:
                paused.discard(task_type)
        for task_type in sorted(paused - self.paused):
            self._change(task_type, True)
        for task_type in sorted(self.paused - paused):
            self._change(task_type, False)

    def _read_failed(self, failure: Failure) -> None:
        # Redis being away is logged once by the links: read again once the
        # link is back (the subscribing one may come back first).
        if self._again:
            return
        if self._retry.later(failure, self._link, self._read_again):
            self._again = True
            return
        self.log.failure("cannot read the paused task types from {key}", failure, key=self._key)

    def _read_again(self) -> None:
        self._again = False
        self.read()

    # The channel

    def subscribed(self) -> None:
        """Messages may have been missed while the link was down: read the set."""
        self.read()

    def message(self, channel: bytes, data: bytes) -> None:
        action, _, name = data.partition(b" ")
        pause = ACTIONS.get(action)
        if pause is None or not name:
            self.log.warn(
                "unexpected message on {channel}: {data!r}", channel=channel.decode(), data=data
            )
            return
        task_type = name.decode("utf-8", "replace")
        if self._reads:
            self._heard.append((task_type, pause))
        if pause != (task_type in self.paused):
            self._change(task_type, pause)

    def _change(self, task_type: str, pause: bool) -> None:
        if pause:
            self.paused.add(task_type)
        else:
            self.paused.discard(task_type)
        for consumer in self._consumers():
            if consumer.task_type.type != task_type:
                continue
            if pause:
                self.log.info(
                    "{type} paused: no more of its entries taken until it is resumed; "
                    "{running} running",
                    type=task_type,
                    running=consumer.running,
                )
                consumer.pause()
            else:
                self.log.info("{type} resumed: taking its entries again", type=task_type)
                consumer.resume()
