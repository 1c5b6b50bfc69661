"""
Waiting for replicas (C{RedisWaitReplicas}).

Replication is asynchronous: a failover loses what the master had not yet
sent to a replica.  With C{RedisWaitReplicas} above 0 the daemon sends
C{WAIT n timeout} after taking an entry (before running it) and after
writing an outcome, so that what it acted on is on C{n} replicas before it
goes on.  C{WAIT} covers the writes of the connection it is sent on only,
which is why it goes on the link that made the write.
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from goophry_tx.redis import ConnectionError, IRedisLink, ResponseError

T = TypeVar("T")

#: How long one C{WAIT} blocks at most.  A replica on the same network
#: acknowledges within a millisecond; a second bounds what a lost or lagging
#: replica costs each take and each outcome (the daemon goes on after it),
#: while it is long enough for a replica catching up after a brief stall.
WAIT_TIMEOUT_MS = 1000


class ReplicaWait:
    """
    Sends C{WAIT} after a write, and says once when fewer replicas than
    wanted acknowledged in time, and once when they do again.  The daemon
    goes on either way: C{WAIT} narrows the window a failover can lose, it
    does not make a write synchronous.
    """

    log = Logger()

    def __init__(self, replicas: int, timeout_ms: int = WAIT_TIMEOUT_MS) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._short = False

    def after(self, link: IRedisLink, result: T) -> Deferred[T]:
        """
        Wait for the writes made so far on C{link} to reach the replicas;
        fires with C{result}, never fails.
        """
        d = link.execute("WAIT", self.replicas, self.timeout_ms)
        d.addCallbacks(self._answered, self._failed)
        return d.addCallback(lambda _: result)

    def _answered(self, acknowledged: int) -> None:
        if acknowledged < self.replicas:
            if not self._short:
                self._short = True
                self.log.warn(
                    "only {acknowledged} of {replicas} replicas acknowledged a write within "
                    "{timeout} ms (RedisWaitReplicas); going on without them",
                    acknowledged=acknowledged,
                    replicas=self.replicas,
                    timeout=self.timeout_ms,
                )
        elif self._short:
            self._short = False
            self.log.info(
                "{replicas} replicas acknowledge writes again (RedisWaitReplicas)",
                replicas=self.replicas,
            )

    def _failed(self, failure: Failure) -> None:
        if not failure.check(ConnectionError, ResponseError):
            self.log.failure("WAIT for {replicas} replicas", failure, replicas=self.replicas)
            return
        # The write itself was made: a lost connection or a refused WAIT
        # changes nothing about it, so the daemon goes on, as after a WAIT
        # that timed out.
        self.log.warn(
            "WAIT for {replicas} replicas failed: {error}; going on without it",
            replicas=self.replicas,
            error=failure.getErrorMessage(),
        )
