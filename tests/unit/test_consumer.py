"""goophry_tx.consumer: the loop of one task type, with fake Redis, fake processes, a Clock."""

from __future__ import annotations

import hashlib
import json
import signal
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from goophry_tx.config import TaskType
from goophry_tx.consumer import (
    MAX_BATCH,
    MAX_UNBLOCKS,
    RECONCILE_SCRIPT,
    TAKE_SCRIPT,
    AtMostOnceTake,
    AtomicTake,
    Consumer,
    ITakeStrategy,
    State,
    TakeFactory,
    take_strategy,
)
from goophry_tx.errorscript import ErrorNotifier
from goophry_tx.keys import Keys
from goophry_tx.outcomes import OutcomeRecorder, TypeCounters, type_counters
from goophry_tx.process.runner import ScriptRunner
from goophry_tx.redis import ResponseError
from goophry_tx.replicas import ReplicaWait
from goophry_tx.schedule import RetryTimes
from goophry_tx.store import OutcomeStore
from tests.unit.fakes import (
    FakeRedisLink,
    MemoryProcessReactor,
    SpawnedProcess,
    assert_no_result,
    success_result_of,
)

SCRIPT = "/s/task.sh"
ERROR_SCRIPT = "/s/err.sh"
QUEUE = "q:t"
INFLIGHT = "q:t:inflight:i1"
FAILED = "q:t:failed"


def entry(*args: str) -> bytes:
    return json.dumps({"Args": list(args)}).encode()


def blmove(timeout: float = 10.0) -> tuple[Any, ...]:
    return ("BLMOVE", QUEUE, INFLIGHT, "LEFT", "RIGHT", timeout)


def reconcile(*known: bytes) -> tuple[Any, ...]:
    return ("EVAL", RECONCILE_SCRIPT, 2, INFLIGHT, QUEUE, *known)


@attrs.define
class Rig:
    clock: Clock
    processes: MemoryProcessReactor
    blocking: FakeRedisLink
    control: FakeRedisLink
    store: OutcomeStore
    counters: TypeCounters
    consumer: Consumer
    take: TakeFactory

    def start(self) -> None:
        """Start the consumer and answer its first reconcile."""
        self.consumer.start(self.take)
        self.control.take("EVAL").answer(0)

    def give(self, payload: bytes | None) -> None:
        """Answer the pending BLMOVE."""
        self.blocking.take("BLMOVE").answer(payload)

    def scripts(self) -> list[SpawnedProcess]:
        return [p for p in self.processes.spawned if p.executable == SCRIPT]

    def error_script_args(self) -> list[list[Any]]:
        return [p.args[1:] for p in self.processes.spawned if p.executable == ERROR_SCRIPT]


def make_rig(
    workers: int = 1,
    ttl: int = 0,
    error_script: str | None = None,
    timeout: float = 0.0,
    atomic: bool = True,
    replicas: ReplicaWait | None = None,
) -> Rig:
    clock = Clock()
    processes = MemoryProcessReactor()
    blocking = FakeRedisLink(client_id=b"42")
    control = FakeRedisLink(client_id=b"7")
    keys = Keys("q")
    store = OutcomeStore(control, keys, "i1", ttl, clock, replicas=replicas)
    runner = ScriptRunner(processes, clock, output_limit=100, kill_grace=5.0)
    notifier = ErrorNotifier(runner, error_script, queue_size=10, timeout=30.0)
    task_type = TaskType("t", SCRIPT, workers, timeout)
    counters = type_counters(["t"])
    outcomes = OutcomeRecorder(
        tasks=[task_type],
        counters=counters,
        store=store,
        notifier=notifier,
        retry_times=RetryTimes(clock, 3600.0, lambda due: None),
    )
    consumer = Consumer(
        task_type=task_type,
        keys=keys,
        instance="i1",
        blocking=blocking,
        control=control,
        outcomes=outcomes,
        runner=runner,
        clock=clock,
        block_timeout=10.0,
        replicas=replicas,
    )
    take = AtomicTake if atomic else AtMostOnceTake
    return Rig(clock, processes, blocking, control, store, counters["t"], consumer, take)


@pytest.fixture
def rig() -> Rig:
    return make_rig()


# Taking entries


def test_start_puts_back_unknown_entries_before_taking(rig: Rig) -> None:
    rig.consumer.start(rig.take)
    assert [p.command for p in rig.control.pending] == [reconcile()]
    assert rig.blocking.sent == []
    rig.control.take("EVAL").answer(0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_failed_reconcile_does_not_stop_the_consumer(rig: Rig) -> None:
    rig.consumer.start(rig.take)
    rig.control.take("EVAL").refuse(ResponseError("NOSCRIPT"))
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_an_entry_runs_its_script_with_its_args(rig: Rig) -> None:
    rig.start()
    rig.give(entry("p1", "p 2; $(x)"))
    [spawned] = rig.scripts()
    assert spawned.args == [SCRIPT, "p1", "p 2; $(x)"]
    assert (rig.counters.started, rig.counters.running) == (1, 1)
    assert rig.consumer.running == 1


def test_with_one_worker_busy_no_entry_is_taken(rig: Rig) -> None:
    rig.start()
    rig.give(entry("a"))
    # The only worker is busy: the next entry stays in Redis for others.
    assert rig.blocking.pending == []
    rig.clock.advance(60)
    assert rig.blocking.pending == []
    rig.scripts()[0].end(0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_with_two_workers_two_entries_are_taken_and_no_third() -> None:
    rig = make_rig(workers=2)
    rig.start()
    rig.give(entry("a"))
    assert [p.command for p in rig.blocking.pending] == [blmove()]
    rig.give(entry("b"))
    assert rig.blocking.pending == []
    assert [s.args[1] for s in rig.scripts()] == ["a", "b"]
    rig.scripts()[1].end(0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_nil_reply_takes_again(rig: Rig) -> None:
    rig.start()
    rig.give(None)
    rig.give(None)
    assert [p.command for p in rig.blocking.pending] == [blmove()]
    assert rig.blocking.sent == [blmove()] * 3
    assert rig.scripts() == []


def test_an_older_redis_uses_blpop_without_reconciling() -> None:
    rig = make_rig(atomic=False)
    rig.consumer.start(rig.take)
    assert rig.control.pending == []
    assert [p.command for p in rig.blocking.pending] == [("BLPOP", QUEUE, 10.0)]
    rig.blocking.take("BLPOP").answer([QUEUE.encode(), entry("x")])
    assert rig.scripts()[0].args == [SCRIPT, "x"]


def test_a_redis_error_on_take_retries_after_a_pause(rig: Rig) -> None:
    rig.start()
    rig.blocking.take("BLMOVE").refuse(ResponseError("ERR unknown command"))
    assert rig.blocking.pending == []
    rig.clock.advance(5.0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


# Outcomes


def test_success_removes_the_entry_from_the_inflight_list(rig: Rig) -> None:
    rig.start()
    payload = entry("a")
    rig.give(payload)
    rig.clock.advance(3)
    rig.scripts()[0].end(0)
    assert [p.command for p in rig.control.pending] == [("LREM", INFLIGHT, -1, payload)]
    assert (rig.counters.succeeded, rig.counters.running, rig.counters.seconds) == (1, 0, 3.0)
    assert rig.store.unwritten("t") == [payload]
    rig.control.take("LREM").answer(1)
    assert rig.store.unwritten("t") == []


def test_failure_moves_the_entry_to_the_failed_list_with_its_ttl() -> None:
    rig = make_rig(ttl=60)
    rig.start()
    payload = entry("a", "b")
    rig.give(payload)
    rig.scripts()[0].output(b"boom")
    rig.scripts()[0].end(1)
    [sent] = rig.control.pending
    assert sent.command == (
        "MULTI",
        (
            "RPUSH",
            FAILED,
            b'{"Args":["a","b"],"ErrorMessage":"exit status 1\\nboom",'
            b'"FailedAt":0,"Instance":"i1"}',
        ),
        ("EXPIRE", FAILED, 60),
        ("LREM", INFLIGHT, -1, payload),
    )
    assert rig.counters.failed == 1


def test_without_a_ttl_a_failure_only_leaves_the_inflight_list(rig: Rig) -> None:
    rig.start()
    payload = entry("a")
    rig.give(payload)
    rig.scripts()[0].end(None, signal=signal.SIGKILL)
    assert [p.command for p in rig.control.pending] == [("LREM", INFLIGHT, -1, payload)]
    assert rig.counters.failed == 1


def test_a_failure_tells_the_error_script() -> None:
    rig = make_rig(error_script=ERROR_SCRIPT)
    rig.start()
    rig.give(entry("a1", "a 2"))
    rig.scripts()[0].output(b"oops\n")
    rig.scripts()[0].end(2)
    assert rig.error_script_args() == [[f'{SCRIPT} "a1" "a 2"\n\nexit status 2\noops\n']]


def test_a_script_that_cannot_start_fails_and_frees_its_worker() -> None:
    rig = make_rig(ttl=60)
    rig.start()
    rig.processes.spawn_error = FileNotFoundError(2, "No such file or directory")
    rig.give(entry("a"))
    # Told on the reactor's next turn, not from inside the take.
    assert rig.control.pending == []
    rig.clock.advance(0)
    [sent] = rig.control.pending
    assert sent.command[1] == (
        "RPUSH",
        FAILED,
        b'{"Args":["a"],"ErrorMessage":"fork/exec /s/task.sh: no such file or directory",'
        b'"FailedAt":0,"Instance":"i1"}',
    )
    assert (rig.counters.started, rig.counters.running, rig.counters.failed) == (1, 0, 1)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_an_invalid_entry_goes_to_the_failed_list_with_its_payload() -> None:
    rig = make_rig(ttl=60, error_script=ERROR_SCRIPT)
    rig.start()
    payload = b'{"Args":"x"}'
    rig.give(payload)
    assert rig.scripts() == []
    [sent] = rig.control.pending
    reason = "invalid task entry: Args must be an array of strings"
    assert sent.name == "MULTI"
    assert json.loads(sent.command[1][2]) == {
        "Args": None,
        "ErrorMessage": reason,
        "Payload": '{"Args":"x"}',
        "FailedAt": 0,
        "Instance": "i1",
    }
    assert sent.command[2:] == (("EXPIRE", FAILED, 60), ("LREM", INFLIGHT, -1, payload))
    assert (rig.counters.invalid, rig.counters.started) == (1, 0)
    assert rig.error_script_args() == [[f'{SCRIPT}\n\n{reason}\n{{"Args":"x"}}']]
    # Its worker is free again.
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_an_outcome_that_finishes_while_redis_is_away_is_written_when_it_returns(
    rig: Rig,
) -> None:
    rig.start()
    payload = entry("a")
    rig.give(payload)
    rig.control.lose_connection()
    rig.scripts()[0].end(0)
    assert rig.control.pending == []
    assert rig.store.unwritten("t") == [payload]
    rig.control.reconnect()
    assert [p.command for p in rig.control.pending] == [("LREM", INFLIGHT, -1, payload)]


# Losing the connection


def test_a_lost_connection_on_take_waits_reconciles_and_takes_again() -> None:
    rig = make_rig(workers=2)
    rig.start()
    running = entry("running")
    rig.give(running)
    assert [p.command for p in rig.blocking.pending] == [blmove()]
    rig.blocking.lose_connection()
    assert rig.blocking.pending == []
    assert rig.control.pending == []
    rig.clock.advance(60)
    assert rig.control.pending == []
    rig.blocking.reconnect()
    # What is running is known; anything else in the in-flight list goes back.
    assert [p.command for p in rig.control.pending] == [reconcile(running)]
    assert rig.blocking.pending == []
    rig.control.take("EVAL").answer(1)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_reconcile_counts_unwritten_outcomes_as_known(rig: Rig) -> None:
    rig.start()
    payload = entry("done")
    rig.give(payload)
    rig.control.lose_connection()
    rig.scripts()[0].end(0)  # its LREM waits for Redis
    rig.blocking.lose_connection()
    rig.control.reconnect()
    rig.blocking.reconnect()
    assert [p.command for p in rig.control.pending] == [
        ("LREM", INFLIGHT, -1, payload),
        reconcile(payload),
    ]


def test_reconcile_waits_for_the_control_link_too(rig: Rig) -> None:
    rig.start()
    rig.blocking.lose_connection()
    rig.control.lose_connection()
    rig.blocking.reconnect()  # first back; the EVAL cannot be sent yet
    assert rig.control.sent.count(reconcile()) == 1  # the one at start
    assert rig.blocking.pending == []
    rig.control.reconnect()
    assert [p.command for p in rig.control.pending] == [reconcile()]
    rig.control.take("EVAL").answer(0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_reconcile_cut_off_by_a_lost_connection_is_sent_again(rig: Rig) -> None:
    rig.start()
    rig.blocking.lose_connection()
    rig.blocking.reconnect()
    rig.control.lose_connection()  # the EVAL's reply is lost
    assert rig.blocking.pending == []
    rig.control.reconnect()
    assert [p.command for p in rig.control.pending] == [reconcile()]
    rig.control.take("EVAL").answer(0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


# Stopping


def test_stop_while_taking_unblocks_and_fires_when_the_take_ends(rig: Rig) -> None:
    rig.start()
    stopped = rig.consumer.stop()
    assert [p.command for p in rig.control.pending] == [("CLIENT", "UNBLOCK", b"42")]
    assert_no_result(stopped)
    rig.control.take("CLIENT").answer(1)
    rig.give(None)
    assert success_result_of(stopped) is None
    assert rig.blocking.pending == []
    rig.clock.advance(10)
    assert rig.control.pending == []
    assert rig.blocking.pending == []


def test_unblock_is_asked_again_until_the_take_ends(rig: Rig) -> None:
    # The CLIENT UNBLOCK may reach Redis before the BLMOVE blocks.
    rig.start()
    rig.consumer.stop()
    rig.control.take("CLIENT").answer(0)
    rig.clock.advance(0.2)
    assert [p.command for p in rig.control.pending] == [("CLIENT", "UNBLOCK", b"42")]
    rig.control.take("CLIENT").answer(1)
    rig.give(None)
    rig.clock.advance(1)
    assert rig.control.pending == []


def test_an_entry_taken_after_stop_is_requeued_not_run(rig: Rig) -> None:
    rig.start()
    stopped = rig.consumer.stop()
    payload = entry("late")
    rig.give(payload)
    assert rig.scripts() == []
    assert [p.command for p in rig.control.pending if p.name == "MULTI"] == [
        ("MULTI", ("LREM", INFLIGHT, -1, payload), ("LPUSH", QUEUE, payload))
    ]
    assert rig.blocking.pending == []
    success_result_of(stopped)


def test_stop_waits_for_running_scripts(rig: Rig) -> None:
    rig.start()
    payload = entry("a")
    rig.give(payload)
    stopped = rig.consumer.stop()
    # Waiting for a worker, not blocked in Redis: nothing to unblock.
    assert rig.control.pending == []
    rig.clock.advance(3600)
    assert_no_result(stopped)
    assert rig.scripts()[0].transport.signals == []
    rig.scripts()[0].end(0)
    assert [p.command for p in rig.control.pending] == [("LREM", INFLIGHT, -1, payload)]
    assert success_result_of(stopped) is None
    assert rig.blocking.pending == []


def test_stop_with_a_script_running_and_a_take_pending() -> None:
    rig = make_rig(workers=2)
    rig.start()
    rig.give(entry("a"))
    stopped = rig.consumer.stop()
    rig.control.take("CLIENT").answer(1)
    rig.scripts()[0].end(0)
    assert_no_result(stopped)
    rig.give(None)
    success_result_of(stopped)


def test_stop_with_nothing_running_and_no_connection_fires_at_once(rig: Rig) -> None:
    rig.start()
    rig.blocking.lose_connection()
    stopped = rig.consumer.stop()
    success_result_of(stopped)
    rig.blocking.reconnect()
    assert rig.control.pending == []
    assert rig.blocking.pending == []


def test_stop_scripts_requeues_their_entries(rig: Rig) -> None:
    rig.start()
    payload = entry("long")
    rig.give(payload)
    stopped = rig.consumer.stop()
    rig.consumer.stop_scripts()
    spawned = rig.scripts()[0]
    assert spawned.transport.signals == ["TERM"]
    rig.clock.advance(5.0)
    assert spawned.transport.signals == ["TERM", "KILL"]
    spawned.end(None, signal=signal.SIGKILL)
    assert [p.command for p in rig.control.pending] == [
        ("MULTI", ("LREM", INFLIGHT, -1, payload), ("LPUSH", QUEUE, payload))
    ]
    assert (rig.counters.requeued, rig.counters.failed, rig.counters.succeeded) == (1, 0, 0)
    success_result_of(stopped)


def test_stop_twice_fires_both(rig: Rig) -> None:
    rig.start()
    rig.give(entry("a"))
    first = rig.consumer.stop()
    second = rig.consumer.stop()
    rig.scripts()[0].end(0)
    success_result_of(second)
    success_result_of(first)


def test_the_type_timeout_applies_to_its_scripts() -> None:
    rig = make_rig(ttl=60, timeout=30.0)
    rig.start()
    rig.give(entry("slow"))
    spawned = rig.scripts()[0]
    rig.clock.advance(30.0)
    assert spawned.transport.signals == ["TERM"]
    spawned.end(None, signal=signal.SIGTERM)
    [sent] = rig.control.pending
    assert sent.command[1] == (
        "RPUSH",
        FAILED,
        b'{"Args":["slow"],"ErrorMessage":"timed out after 30s (signal: terminated)",'
        b'"FailedAt":30,"Instance":"i1"}',
    )


# Take strategies


def evalsha(sha: str | bytes, wanted: int) -> tuple[Any, ...]:
    return ("EVALSHA", sha, 2, QUEUE, INFLIGHT, wanted)


TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()


def test_the_strategies_provide_their_interface() -> None:
    link = FakeRedisLink()
    for strategy in (AtomicTake, AtMostOnceTake):
        assert verifyObject(ITakeStrategy, strategy(link, QUEUE, INFLIGHT, 10.0))


def test_the_strategy_follows_the_redis_version() -> None:
    assert take_strategy((6, 0, 16)) is AtMostOnceTake
    assert take_strategy((6, 2, 0)) is AtomicTake
    assert take_strategy((7, 2, 4)) is AtomicTake
    assert take_strategy(()) is AtomicTake


def test_several_free_workers_take_a_batch_in_one_round_trip() -> None:
    rig = make_rig(workers=3)
    rig.start()
    # Nothing known of the queue yet: block for one entry.
    rig.give(entry("a"))
    assert [p.command for p in rig.blocking.pending] == [evalsha(TAKE_SHA, 2)]
    rig.blocking.take("EVALSHA").answer([entry("b"), entry("c")])
    assert [s.args[1] for s in rig.scripts()] == ["a", "b", "c"]
    assert rig.consumer.state is State.FULL
    assert rig.blocking.pending == []
    rig.scripts()[0].end(0)
    # One worker free: one entry, blocking; the next freed worker waits for it.
    assert [p.command for p in rig.blocking.pending] == [blmove()]
    rig.scripts()[1].end(0)
    assert rig.blocking.names() == ["BLMOVE"]
    rig.give(entry("d"))
    # "d" runs on one of the two free workers; the last one blocks for one entry.
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_batch_that_finds_the_queue_empty_blocks_for_one_next() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("EVALSHA").answer([])
    assert [p.command for p in rig.blocking.pending] == [blmove()]
    assert (rig.counters.started, rig.consumer.state) == (1, State.TAKING)


def test_a_batch_is_at_most_max_batch_entries() -> None:
    rig = make_rig(workers=MAX_BATCH + 10)
    rig.start()
    rig.give(entry("a"))
    assert [p.command for p in rig.blocking.pending] == [evalsha(TAKE_SHA, MAX_BATCH)]


def test_an_invalid_entry_in_a_batch_keeps_no_worker() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("EVALSHA").answer([b"not json", entry("b")])
    assert (rig.counters.invalid, rig.counters.started) == (1, 2)
    # Two of three workers busy: one more is taken, blocking.
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_forgotten_take_script_is_loaded_again() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("EVALSHA").refuse(ResponseError("NOSCRIPT No matching script."))
    assert [p.command for p in rig.blocking.pending] == [("SCRIPT", "LOAD", TAKE_SCRIPT)]
    rig.blocking.take("SCRIPT").answer(b"f00d")
    assert [p.command for p in rig.blocking.pending] == [evalsha(b"f00d", 2)]
    rig.blocking.take("EVALSHA").answer([entry("b")])
    assert [s.args[1] for s in rig.scripts()] == ["a", "b"]
    # The loaded script's id is kept for the next batch.
    rig.scripts()[0].end(0)
    rig.scripts()[1].end(0)
    rig.give(entry("c"))
    assert [p.command for p in rig.blocking.pending] == [evalsha(b"f00d", 2)]


def test_a_take_script_that_cannot_be_loaded_is_retried_after_a_pause() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("EVALSHA").refuse(ResponseError("NOSCRIPT No matching script."))
    rig.blocking.take("SCRIPT").refuse(ResponseError("ERR scripting disabled"))
    assert rig.consumer.state is State.RETRYING
    assert rig.blocking.pending == []
    rig.clock.advance(5.0)
    assert [p.command for p in rig.blocking.pending] == [evalsha(TAKE_SHA, 2)]


# State and workers


def test_the_state_says_where_the_loop_is(rig: Rig) -> None:
    assert rig.consumer.state is State.IDLE
    rig.consumer.start(rig.take)
    assert rig.consumer.state is State.RECONCILING
    rig.control.take("EVAL").answer(0)
    assert rig.consumer.state is State.TAKING
    rig.give(entry("a"))
    assert rig.consumer.state is State.FULL
    rig.consumer.stop()
    assert rig.consumer.state is State.STOPPED


def test_a_raise_while_recording_an_outcome_is_logged_and_frees_the_worker(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(rig.consumer, "log", Logger(observer=events.append))

    def broken(task: Any) -> None:
        raise RuntimeError("broken store")

    monkeypatch.setattr(rig.store, "succeeded", broken)
    rig.start()
    rig.give(entry("a"))
    rig.scripts()[0].end(0)
    [event] = [e for e in events if "log_failure" in e]
    assert event["log_failure"].check(RuntimeError)
    assert rig.consumer.running == 0
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_stop_while_paused_cancels_the_retry(rig: Rig) -> None:
    rig.start()
    rig.blocking.take("BLMOVE").refuse(ResponseError("ERR unknown command"))
    stopped = rig.consumer.stop()
    success_result_of(stopped)
    assert rig.clock.getDelayedCalls() == []


def test_a_stop_while_waiting_for_redis_forgets_the_wait(rig: Rig) -> None:
    rig.start()
    rig.blocking.lose_connection()
    success_result_of(rig.consumer.stop())
    rig.blocking.reconnect()
    assert rig.control.pending == []
    assert rig.consumer.state is State.STOPPED


def test_a_take_that_will_not_end_is_aborted_after_the_last_unblock(rig: Rig) -> None:
    rig.start()
    stopped = rig.consumer.stop()
    for _ in range(MAX_UNBLOCKS):
        # Redis says the client is not blocked (yet), every time.
        rig.control.take("CLIENT").answer(0)
        rig.clock.advance(0.2)
    assert rig.control.sent.count(("CLIENT", "UNBLOCK", b"42")) == MAX_UNBLOCKS
    assert rig.blocking.aborted == 1
    # The abort ended the take with the connection.
    assert success_result_of(stopped) is None
    assert rig.consumer.state is State.STOPPED
    rig.clock.advance(10)
    assert rig.control.pending == []
    assert rig.blocking.aborted == 1


def test_a_batch_taken_while_stopping_goes_back_in_order() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    stopped = rig.consumer.stop()
    rig.control.take("CLIENT").answer(0)
    rig.blocking.take("EVALSHA").answer([entry("b"), entry("c")])
    assert [p.command for p in rig.control.pending if p.name == "MULTI"] == [
        ("MULTI", ("LREM", INFLIGHT, -1, entry(x)), ("LPUSH", QUEUE, entry(x))) for x in "bc"
    ]
    assert rig.counters.requeued == 0
    assert [s.args[1] for s in rig.scripts()] == ["a"]
    rig.scripts()[0].end(0)
    success_result_of(stopped)


def test_a_raise_while_starting_a_taken_entry_is_logged_and_taking_goes_on(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(rig.consumer, "log", Logger(observer=events.append))
    rig.start()
    with monkeypatch.context() as patch:

        def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("broken runner")

        patch.setattr(rig.consumer._runner, "run", broken)
        rig.give(entry("a"))
    [event] = [e for e in events if "log_failure" in e]
    assert event["log_failure"].check(RuntimeError)
    assert rig.consumer.state is State.RETRYING
    rig.clock.advance(5.0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


# Pausing a type


def test_a_pause_while_taking_unblocks_and_holds(rig: Rig) -> None:
    rig.start()
    rig.consumer.pause()
    assert rig.consumer.state is State.HOLDING
    assert [p.command for p in rig.control.pending] == [("CLIENT", "UNBLOCK", b"42")]
    rig.control.take("CLIENT").answer(1)
    rig.give(None)
    assert rig.consumer.state is State.HELD
    rig.clock.advance(60)
    assert rig.blocking.pending == []
    assert rig.control.pending == []


def test_an_entry_the_pending_take_brought_goes_back_unrun(rig: Rig) -> None:
    rig.start()
    rig.consumer.pause()
    payload = entry("late")
    # The BLMOVE took it before the CLIENT UNBLOCK reached Redis.
    rig.give(payload)
    assert rig.scripts() == []
    assert rig.consumer.state is State.HELD
    assert [p.command for p in rig.control.pending if p.name == "MULTI"] == [
        ("MULTI", ("LREM", INFLIGHT, -1, payload), ("LPUSH", QUEUE, payload))
    ]
    # Not a requeue of a run: nothing was started.
    assert (rig.counters.started, rig.counters.requeued) == (0, 0)
    # No CLIENT UNBLOCK is sent after the take has ended.
    rig.clock.advance(1)
    assert [p.name for p in rig.control.pending] == ["CLIENT", "MULTI"]


def test_resume_takes_again(rig: Rig) -> None:
    rig.start()
    rig.consumer.pause()
    rig.give(None)
    rig.consumer.resume()
    assert rig.consumer.state is State.TAKING
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_resume_before_the_take_has_ended_takes_again_once_it_has(rig: Rig) -> None:
    rig.start()
    rig.consumer.pause()
    rig.consumer.resume()
    assert rig.consumer.state is State.HOLDING
    rig.give(None)
    assert rig.consumer.state is State.TAKING
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_running_scripts_finish_while_paused_and_free_no_take(rig: Rig) -> None:
    rig.start()
    payload = entry("a")
    rig.give(payload)
    assert rig.consumer.state is State.FULL
    rig.consumer.pause()
    # Waiting for a worker, not blocked in Redis: nothing to unblock.
    assert rig.consumer.state is State.HELD
    assert rig.control.pending == []
    assert rig.scripts()[0].transport.signals == []
    rig.scripts()[0].end(0)
    assert rig.counters.succeeded == 1
    assert rig.blocking.pending == []
    assert rig.consumer.state is State.HELD
    rig.consumer.resume()
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_consumer_paused_before_it_starts_reconciles_then_holds(rig: Rig) -> None:
    rig.consumer.pause()
    rig.consumer.start(rig.take)
    assert rig.consumer.state is State.RECONCILING
    rig.control.take("EVAL").answer(0)
    assert rig.consumer.state is State.HELD
    assert rig.blocking.sent == []


def test_a_take_lost_with_the_connection_while_pausing_holds_after_the_reconcile(
    rig: Rig,
) -> None:
    rig.start()
    rig.consumer.pause()
    rig.control.take("CLIENT").answer(0)
    rig.blocking.lose_connection()
    assert rig.consumer.state is State.RETRYING
    # The CLIENT UNBLOCKs end with the take.
    rig.clock.advance(1)
    assert rig.control.pending == []
    rig.blocking.reconnect()
    rig.control.take("EVAL").answer(0)
    assert rig.consumer.state is State.HELD
    assert rig.blocking.pending == []


def test_a_stop_while_pausing_goes_on_unblocking_and_fires_when_the_take_ends(rig: Rig) -> None:
    rig.start()
    rig.consumer.pause()
    stopped = rig.consumer.stop()
    assert rig.consumer.state is State.UNBLOCKING
    rig.control.take("CLIENT").answer(0)
    rig.clock.advance(0.2)
    assert [p.command for p in rig.control.pending] == [("CLIENT", "UNBLOCK", b"42")]
    rig.give(None)
    assert success_result_of(stopped) is None
    assert rig.consumer.state is State.STOPPED


def test_a_stop_while_held_fires_once_the_scripts_are_done(rig: Rig) -> None:
    rig.start()
    rig.give(entry("a"))
    rig.consumer.pause()
    stopped = rig.consumer.stop()
    assert rig.consumer.state is State.STOPPED
    assert_no_result(stopped)
    rig.scripts()[0].end(0)
    assert success_result_of(stopped) is None
    # A resume after the stop takes nothing.
    rig.consumer.resume()
    assert rig.blocking.pending == []
