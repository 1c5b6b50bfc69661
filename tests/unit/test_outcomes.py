"""OutcomeRecorder: each outcome counted, written and reported, with fake Redis and processes."""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.task import Clock

from goophry_tx.config import TaskType
from goophry_tx.errorscript import ErrorNotifier
from goophry_tx.keys import Keys
from goophry_tx.outcomes import OutcomeRecorder, TypeCounters, type_counters
from goophry_tx.process.runner import ScriptRunner
from goophry_tx.recovery import Abandoned
from goophry_tx.schedule import RetryTimes
from goophry_tx.store import OutcomeStore
from goophry_tx.task import InvalidEntry, Outcome, Task
from tests.unit.fakes import FakeRedisLink, MemoryProcessReactor

SCRIPT = "/s/mail.sh"
ERROR_SCRIPT = "/s/err.sh"
INFLIGHT = "q:mail:inflight:me"
FAILED = "q:mail:failed"


@attrs.define
class Rig:
    link: FakeRedisLink
    processes: MemoryProcessReactor
    counters: dict[str, TypeCounters]
    outcomes: OutcomeRecorder
    #: The due times of the retries the recorder scheduled.
    dues: list[float]

    @property
    def mail(self) -> TypeCounters:
        return self.counters["mail"]

    def commands(self) -> list[tuple[Any, ...]]:
        return [p.command for p in self.link.pending]

    def told(self) -> list[str]:
        return [str(p.args[1]) for p in self.processes.spawned]


#: The time of the rig's clock: a failure stored says when, in whole seconds.
NOW = 1764669185.75


def make_rig(retries: int = 0, backoff: float = 10.0, clock: Clock | None = None) -> Rig:
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    link, processes = FakeRedisLink(), MemoryProcessReactor()
    store = OutcomeStore(link, Keys("q"), "me", 60, clock)
    notifier = ErrorNotifier(ScriptRunner(processes, clock), ERROR_SCRIPT)
    counters = type_counters(["mail"])
    dues: list[float] = []
    outcomes = OutcomeRecorder(
        tasks=[TaskType("mail", SCRIPT, 2, retries=retries, retry_backoff=backoff)],
        counters=counters,
        store=store,
        notifier=notifier,
        # No jitter: the delays are exact.
        retry_times=RetryTimes(clock, 3600.0, dues.append, jitter=lambda: 0.5),
    )
    return Rig(link, processes, counters, outcomes, dues)


def task(*args: str) -> Task:
    return Task("mail", args, json.dumps({"Args": list(args)}).encode())


def test_a_success_is_counted_and_its_entry_forgotten() -> None:
    rig = make_rig()
    rig.outcomes.started(task("a"))
    assert (rig.mail.started, rig.mail.running) == (1, 1)
    rig.outcomes.succeeded(task("a"), Outcome(exit_code=0, duration=2.5))
    assert (rig.mail.running, rig.mail.succeeded, rig.mail.seconds) == (0, 1, 2.5)
    assert rig.commands() == [("LREM", INFLIGHT, -1, task("a").payload)]
    assert rig.told() == []


def test_a_failure_is_counted_stored_and_told() -> None:
    rig = make_rig()
    rig.outcomes.started(task("a"))
    rig.outcomes.failed(task("a"), Outcome(exit_code=3, duration=1.0))
    assert (rig.mail.running, rig.mail.failed) == (0, 1)
    [(multi, rpush, expire, lrem)] = rig.commands()
    assert rpush == (
        "RPUSH",
        FAILED,
        b'{"Args":["a"],"ErrorMessage":"exit status 3","FailedAt":1764669185,"Instance":"me"}',
    )
    assert rig.told() == [f'{SCRIPT} "a"\n\nexit status 3']


def test_a_run_stopped_by_shutdown_is_requeued_and_counted() -> None:
    rig = make_rig()
    rig.outcomes.started(task("a"))
    rig.outcomes.requeued(task("a"), Outcome(signal=15, duration=1.0))
    assert (rig.mail.running, rig.mail.requeued, rig.mail.failed) == (0, 1, 0)
    assert rig.commands() == [
        ("MULTI", ("LREM", INFLIGHT, -1, task("a").payload), ("LPUSH", "q:mail", task("a").payload))
    ]


def test_an_entry_put_back_unstarted_is_not_counted() -> None:
    rig = make_rig()
    rig.outcomes.put_back("mail", b"x")
    assert rig.commands() == [("MULTI", ("LREM", INFLIGHT, -1, b"x"), ("LPUSH", "q:mail", b"x"))]
    assert (rig.mail.requeued, rig.mail.started) == (0, 0)


def test_an_invalid_entry_is_counted_stored_and_told() -> None:
    rig = make_rig()
    rig.outcomes.invalid(InvalidEntry("mail", b"[1]", "invalid task entry: not an object"))
    assert (rig.mail.invalid, rig.mail.failed) == (1, 0)
    assert rig.told() == [f"{SCRIPT}\n\ninvalid task entry: not an object\n[1]"]


def test_an_abandoned_entry_is_a_failure_stored_and_told() -> None:
    rig = make_rig()
    rig.outcomes.abandoned(Abandoned("mail", task("a").payload, 3, "dead:1"))
    assert rig.mail.failed == 1
    [(multi, rpush, expire, lrem)] = rig.commands()
    error = "abandoned after 3 recoveries: the daemon running it died each time (last dead:1)"
    assert json.loads(rpush[2]) == {
        "Args": ["a"],
        "ErrorMessage": error,
        "FailedAt": 1764669185,
        "Instance": "me",
    }
    assert rig.told() == [f'{SCRIPT} "a"\n\n{error}']


def test_an_abandoned_entry_of_a_type_not_run_here_is_stored_not_counted() -> None:
    rig = make_rig()
    rig.outcomes.abandoned(Abandoned("sms", b'{"Args":[]}', 3, "dead:1"))
    assert list(rig.counters) == ["mail"]
    assert rig.mail.failed == 0
    [(multi, rpush, expire, lrem)] = rig.commands()
    assert rpush[1] == "q:sms:failed"
    assert rig.told()[0].startswith("sms\n\nabandoned after 3 recoveries")


def test_known_payloads_are_those_not_written_yet() -> None:
    rig = make_rig()
    rig.outcomes.succeeded(task("a"), Outcome(exit_code=0))
    rig.outcomes.failed(task("b"), Outcome(exit_code=1))
    rig.outcomes.put_back("mail", task("a").payload)
    assert sorted(rig.outcomes.known_payloads("mail")) == sorted(
        [task("a").payload, task("a").payload, task("b").payload]
    )
    for sent in list(rig.link.pending):
        sent.answer(1)
    assert rig.outcomes.known_payloads("mail") == []
