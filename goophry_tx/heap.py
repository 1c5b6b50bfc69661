"""
The objects the daemon builds to start (modules, classes, the service
tree) live as long as it does: once it runs, they are moved out of the
cyclic garbage collector's sight (C{gc.freeze}), so that a full
collection walks only what tasks allocate, not the whole start-up heap,
and does not stall the reactor while a task waits to start.
"""

from __future__ import annotations

import gc

from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

log = Logger()


def freeze_when_running(reactor: IReactorCore) -> None:
    """
    Once C{reactor} runs: collect, then freeze what is left.

    Called by L{goophry_tx.startup.when_running} (the three ways to start),
    never by the service itself: a test process builds many services.
    """

    def freeze() -> None:
        # Collected first, so that no start-up garbage is kept for good.
        gc.collect()
        gc.freeze()
        log.info(
            "start-up heap frozen: {objects} objects left out of garbage collection",
            objects=gc.get_freeze_count(),
        )

    reactor.callWhenRunning(freeze)
