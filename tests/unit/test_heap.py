"""goophry_tx.heap: the start-up heap frozen once the reactor runs, its garbage collected first."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor

from goophry_tx.heap import freeze_when_running


class Node:
    """Half of a reference cycle: only the cyclic collector frees it."""

    other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process's heap is given back to the collector after each test."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_nothing_frozen_until_the_reactor_runs() -> None:
    reactor = MemoryReactor()
    freeze_when_running(reactor)
    assert gc.get_freeze_count() == 0
    reactor.run()
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("unfrozen")
def test_start_up_garbage_is_collected_not_kept() -> None:
    reactor = MemoryReactor()
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    freeze_when_running(reactor)
    reactor.run()
    assert gone() is None, "a start-up cycle was frozen instead of collected"


@pytest.mark.usefixtures("unfrozen")
def test_objects_alive_at_start_are_frozen() -> None:
    reactor = MemoryReactor()
    kept = [Node()]
    freeze_when_running(reactor)
    reactor.run()
    # A full collection no longer walks them: they are out of every generation.
    assert not any(kept is o for o in gc.get_objects())
