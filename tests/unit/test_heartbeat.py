"""goophry_tx.recovery.HeartbeatService: its timer, start and stop, with a fake link and a Clock."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from goophry_tx.keys import Keys
from goophry_tx.recovery import (
    BEAT_SCRIPT,
    LEAVE_SCRIPT,
    RECOVER_SCRIPT,
    Abandoned,
    HeartbeatService,
)
from goophry_tx.redis import ResponseError
from tests.unit.fakes import (
    FakeRedisLink,
    assert_no_result,
    failure_result_of,
    success_result_of,
)

#: InstanceTimeout: a beat every second, a heartbeat that lapses after 3.
TIMEOUT = 5.0
INTERVAL = 1.0
LAYOUT = ("q:instances", "q:instance:", "q:", ":inflight:")


@attrs.define
class Rig:
    clock: Clock
    link: FakeRedisLink
    heartbeat: HeartbeatService
    events: list[dict[str, Any]]

    def beats(self) -> list[str]:
        """Whether each beat sent so far looked for dead instances ("1") or not ("0")."""
        return [str(c[-1]) for c in self.link.sent if c[:2] == ("EVAL", BEAT_SCRIPT)]

    def answer_beat(self) -> None:
        self.link.take("EVAL").answer([])

    def warnings(self) -> list[str]:
        return [str(e["log_format"]) for e in self.events if e["log_level"] >= LogLevel.warn]


def rig(on_abandoned: Callable[[Abandoned], None] | None = None) -> Rig:
    clock = Clock()
    clock.advance(1000)
    link = FakeRedisLink()
    abandoned: list[Abandoned] = []
    heartbeat = HeartbeatService(
        link,
        Keys("q"),
        "i1",
        ["a", "b"],
        clock,
        TIMEOUT,
        3,
        on_abandoned or abandoned.append,
        host="h",
        pid=os.getpid(),
    )
    events: list[dict[str, Any]] = []
    heartbeat.log = Logger(observer=events.append)
    return Rig(clock, link, heartbeat, events)


def test_the_scripts_get_the_key_layout_first() -> None:
    assert Keys("q").script_layout == LAYOUT


def test_it_beats_at_start_and_every_interval_after() -> None:
    r = rig()
    r.heartbeat.startService()
    [sent] = r.link.sent
    assert sent[:9] == ("EVAL", BEAT_SCRIPT, 0, *LAYOUT, "i1", 3000)
    registered = r.heartbeat.when_beating()
    assert_no_result(registered)
    r.answer_beat()
    success_result_of(registered)
    success_result_of(r.heartbeat.when_beating())

    r.clock.advance(INTERVAL)
    assert len(r.beats()) == 2
    # A beat still under way holds the next one back.
    r.clock.advance(INTERVAL * 3)
    assert len(r.beats()) == 2
    r.answer_beat()
    r.clock.advance(INTERVAL)
    assert len(r.beats()) == 3


def test_stopping_cancels_the_timer_and_unregisters() -> None:
    r = rig()
    r.heartbeat.startService()
    r.answer_beat()
    assert len(r.clock.getDelayedCalls()) == 1
    stopped = r.heartbeat.stopService()
    assert r.clock.getDelayedCalls() == []
    assert [p.command for p in r.link.pending] == [
        ("EVAL", LEAVE_SCRIPT, 0, *LAYOUT, "i1", "a", "b")
    ]
    assert_no_result(stopped)
    r.link.take("EVAL").answer(1)
    success_result_of(stopped)
    assert not r.heartbeat.running
    r.clock.advance(INTERVAL * 10)
    assert len(r.beats()) == 1
    assert r.warnings() == []


def test_a_stop_waits_for_the_beat_under_way_before_unregistering() -> None:
    r = rig()
    r.heartbeat.startService()
    stopped = r.heartbeat.stopService()
    assert r.link.names() == ["EVAL"]
    assert_no_result(stopped)
    r.answer_beat()
    assert [p.command[1] for p in r.link.pending] == [LEAVE_SCRIPT]
    r.link.take("EVAL").answer(1)
    success_result_of(stopped)
    assert r.clock.getDelayedCalls() == []


def test_a_stop_cancels_whoever_waits_for_the_first_beat() -> None:
    r = rig()
    r.heartbeat.startService()
    waiting = r.heartbeat.when_beating()
    r.heartbeat.stopService()
    failure_result_of(waiting, CancelledError)


def test_kept_registered_it_stops_beating_and_sends_nothing() -> None:
    r = rig()
    r.heartbeat.startService()
    r.answer_beat()
    r.heartbeat.keep_registered()
    success_result_of(r.heartbeat.stopService())
    assert r.link.pending == []
    assert r.clock.getDelayedCalls() == []


def test_still_in_flight_it_says_so_and_a_failed_unregistering_is_logged() -> None:
    r = rig()
    r.heartbeat.startService()
    r.answer_beat()
    stopped = r.heartbeat.stopService()
    r.link.take("EVAL").answer(0)
    success_result_of(stopped)
    assert r.warnings() == [
        "entries of this instance are still in flight; they will be recovered "
        "when its heartbeat lapses"
    ]

    r = rig()
    r.heartbeat.startService()
    r.answer_beat()
    r.link.lose_connection()
    success_result_of(r.heartbeat.stopService())
    assert r.warnings() == ["could not unregister this instance: {error}"]


def test_a_beat_lost_to_an_outage_is_tried_again_and_no_one_is_declared_dead_for_a_while() -> None:
    r = rig()
    r.heartbeat.startService()
    r.answer_beat()
    r.link.lose_connection()
    r.clock.advance(INTERVAL)
    assert len(r.beats()) == 2, "a beat tried while Redis is away"
    r.link.reconnect()
    # Every live instance gets an InstanceTimeout to beat again first.
    for _ in range(int(TIMEOUT / INTERVAL)):
        r.clock.advance(INTERVAL)
        r.answer_beat()
    r.clock.advance(INTERVAL)
    assert r.beats() == ["1", "1", "0", "0", "0", "0", "0", "1"]


def test_a_redis_that_has_only_just_started_makes_the_first_beats_look_for_no_one() -> None:
    r = rig()
    prepared = r.heartbeat.prepare(redis_uptime=2.0)
    # What died on this host is recovered first.
    r.link.take("HGETALL").answer([])
    success_result_of(prepared)
    r.heartbeat.startService()
    r.answer_beat()
    for _ in range(3):
        r.clock.advance(INTERVAL)
        r.answer_beat()
    assert r.beats() == ["0", "0", "0", "1"]


def test_each_beat_reads_what_else_is_read_per_beat_and_the_first_waits_for_it() -> None:
    clock = Clock()
    link = FakeRedisLink()
    reads: list[Deferred[None]] = []

    def read() -> Deferred[None]:
        reads.append(link.execute("SMEMBERS", "q:paused").addCallback(lambda _: None))
        return reads[-1]

    heartbeat = HeartbeatService(
        link, Keys("q"), "i1", ["a"], clock, TIMEOUT, 3, lambda a: None, on_beat=read
    )
    heartbeat.startService()
    # In the same round trip as the beat.
    assert link.names() == ["EVAL", "SMEMBERS"]
    beating = heartbeat.when_beating()
    link.take("EVAL").answer([])
    assert_no_result(beating)
    link.take("SMEMBERS").answer([])
    success_result_of(beating)
    clock.advance(INTERVAL)
    assert link.names() == ["EVAL", "SMEMBERS"]
    assert len(reads) == 2


def test_the_record_says_when_the_instance_started() -> None:
    r = rig()
    r.heartbeat.startService()
    record = json.loads(r.link.sent[0][9])
    assert record["started"] == 1000
    assert record["types"] == ["a", "b"]


def test_each_dead_instance_recovered_is_counted() -> None:
    clock = Clock()
    link = FakeRedisLink()
    recovered: list[None] = []
    heartbeat = HeartbeatService(
        link,
        Keys("q"),
        "i1",
        ["a"],
        clock,
        TIMEOUT,
        3,
        lambda a: None,
        on_recovered=lambda: recovered.append(None),
    )
    heartbeat.log = Logger(observer=lambda event: None)
    heartbeat.startService()
    link.take("EVAL").answer([b"dead1", b"dead2"])
    # dead1 had entries to put back; dead2 had none and is only unregistered.
    link.take("EVAL").answer([b"2"])
    assert recovered == [None]
    link.take("EVAL").answer([])
    assert recovered == [None]


def test_a_refused_beat_is_logged_and_a_bug_with_its_traceback() -> None:
    r = rig()
    r.heartbeat.startService()
    r.link.take("EVAL").refuse(ResponseError("NOSCRIPT gone"))
    assert r.warnings() == ["heartbeat failed: {error}"]

    def broken(abandoned: Abandoned) -> None:
        raise RuntimeError(f"cannot record {abandoned.payload!r}")

    r = rig(on_abandoned=broken)
    r.heartbeat.startService()
    r.link.take("EVAL").answer([b"dead:1"])
    [recover] = r.link.pending
    assert recover.command[:2] == ("EVAL", RECOVER_SCRIPT)
    recover.answer([b"0", b"a", b"x", b"3"])
    [event] = [e for e in r.events if "log_failure" in e]
    assert event["log_format"] == "heartbeat failed"
    assert event["log_failure"].check(RuntimeError)
    # The next beat comes all the same.
    r.clock.advance(INTERVAL)
    assert len(r.beats()) == 2
