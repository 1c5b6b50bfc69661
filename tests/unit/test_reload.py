"""
goophry_tx.reload and what a reload changes: the decision (live or needing a
restart), the consumer's worker count, and the service applying a change,
with fake Redis links, fake processes and a Clock.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher

from goophry_tx import reload as reload_module
from goophry_tx.config import Config, TaskType, load_config, setting_name
from goophry_tx.consumer import State
from goophry_tx.notify import SystemdNotifier
from goophry_tx.recovery import BEAT_SCRIPT
from goophry_tx.reload import compare, read_again, reload_on_sighup
from goophry_tx.schedule import MOVE_DUE_SCRIPT
from goophry_tx.service import GoophryService, Phase
from tests.unit.test_consumer import SCRIPT, TAKE_SHA, blmove, entry, evalsha, make_rig
from tests.unit.test_service import INFO, FakeReactor, LinkService, Spawner

RUNNING = Config(
    path="/etc/goophry.json",
    redis_queue_key="q",
    tasks=(TaskType("mail", "/s/mail.sh", 2, 30.0), TaskType("sms", "/s/sms.sh")),
    redis_password="old secret",
)


# --------------------------------------------------------------------------
# The decision


def test_the_same_configuration_changes_nothing() -> None:
    change = compare(RUNNING, RUNNING)
    assert change.config == RUNNING
    assert (change.added, change.removed, change.changed) == ((), (), ())
    assert (change.applied, change.restart) == ((), ())


def test_a_type_s_workers_script_and_timeout_apply_live() -> None:
    new = attrs.evolve(
        RUNNING, tasks=(TaskType("mail", "/s/mail2.sh", 5, 0.0), TaskType("sms", "/s/sms.sh"))
    )
    change = compare(RUNNING, new)
    assert change.changed == (TaskType("mail", "/s/mail2.sh", 5, 0.0),)
    assert change.config == new
    assert change.applied == (
        "Script of mail /s/mail.sh -> /s/mail2.sh",
        "Workers of mail 2 -> 5",
        "Timeout of mail 30 -> 0",
    )
    assert change.restart == ()


def test_types_added_and_removed() -> None:
    new = attrs.evolve(
        RUNNING, tasks=(TaskType("mail", "/s/mail.sh", 2, 30.0), TaskType("fax", "/s/f"))
    )
    change = compare(RUNNING, new)
    assert change.added == (TaskType("fax", "/s/f"),)
    assert change.removed == ("sms",)
    assert change.changed == ()
    assert change.config.tasks == new.tasks
    assert change.applied == (
        "type fax added (1 workers)",
        "type sms removed (its running scripts finish)",
    )


def test_errorscript_ttl_output_limit_and_the_other_plain_values_apply_live() -> None:
    new = attrs.evolve(
        RUNNING,
        error_script="/s/err.sh",
        failed_tasks_ttl=60,
        output_limit=100,
        kill_grace=1.0,
        shutdown_timeout=10.0,
        error_script_timeout=5.0,
        error_queue_size=7,
    )
    change = compare(RUNNING, new)
    assert change.config == new
    assert change.restart == ()
    assert change.applied == (
        "ErrorScript none -> /s/err.sh",
        "FailedTasksTTL 0 -> 60",
        "OutputLimit 65536 -> 100",
        "ShutdownTimeout 0 -> 10",
        "KillGrace 5 -> 1",
        "ErrorScriptTimeout 30 -> 5",
        "ErrorQueueSize 1000 -> 7",
    )


def test_settings_that_need_a_restart_are_named_and_kept() -> None:
    new = attrs.evolve(
        RUNNING,
        redis_address="10.0.0.5:6379",
        redis_password="new secret",
        redis_db=2,
        redis_queue_key="other",
        stats_interface="127.0.0.1:8080",
        stats_tls_cert_file="/c.pem",
        log_format="json",
        logfile="/var/log/g.log",
        block_timeout=1.0,
        output_limit=100,
    )
    change = compare(RUNNING, new)
    assert change.restart == (
        "RedisQueueKey",
        "RedisAddress",
        "RedisPassword",
        "RedisDB",
        "Logfile",
        "LogFormat",
        "StatsInterface",
        "StatsTLSCertFile",
        "BlockTimeout",
    )
    assert change.applied == ("OutputLimit 65536 -> 100",)
    assert change.config == attrs.evolve(RUNNING, output_limit=100)
    # Only names: a password's value is never in a phrase.
    assert not any("secret" in phrase for phrase in change.applied + change.restart)


def test_a_task_setting_that_is_not_live_keeps_its_running_value() -> None:
    @attrs.frozen
    class Later:
        """A type with a setting this module does not apply live."""

        type: str
        workers: int
        retries: int

    before, after = Later("mail", 1, 0), Later("mail", 3, 2)
    applied, restart = reload_module._differences(
        before,  # type: ignore[arg-type]
        after,  # type: ignore[arg-type]
        reload_module.LIVE_TASK,
        " of mail",
    )
    assert (applied, restart) == (["Workers of mail 1 -> 3"], ["Retries of mail"])


def test_setting_names_are_those_of_the_file() -> None:
    assert setting_name("redis_db") == "RedisDB"
    assert setting_name("stats_tls_key_file") == "StatsTLSKeyFile"
    assert setting_name("failed_tasks_ttl") == "FailedTasksTTL"
    assert setting_name("workers") == "Workers"
    assert setting_name("not_a_setting") == "not_a_setting"


# --------------------------------------------------------------------------
# Reading the file again


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _texts(events: list[LogEvent]) -> list[tuple[LogLevel, str]]:
    return [(e["log_level"], formatEvent(e)) for e in events]


def test_a_refused_file_is_logged_as_a_start_prints_it_and_changes_nothing(
    logged: list[LogEvent], tmp_path: Path
) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(
        '{"RedisQueueKey": "q", "Tasks": [{"Type": "t", "Script": "/bin/sh", "Workers": "two"}]}'
    )
    running = attrs.evolve(RUNNING, path=str(path))
    assert read_again(running) is None
    assert _texts(logged) == [
        (
            LogLevel.error,
            f'goophry: {path}: Tasks[0].Workers: expected an integer, got "two"; '
            "not reloaded: running on with the configuration as it was",
        )
    ]


def test_one_line_says_what_changed_one_what_needs_a_restart(logged: list[LogEvent]) -> None:
    new = attrs.evolve(RUNNING, redis_address="10.0.0.5:6379", failed_tasks_ttl=9, warnings=("w",))
    change = read_again(RUNNING, load=lambda path: new)
    assert change is not None and change.config.failed_tasks_ttl == 9
    assert _texts(logged) == [
        (LogLevel.warn, "w"),
        (LogLevel.info, "configuration reloaded from /etc/goophry.json: FailedTasksTTL 0 -> 9"),
        (
            LogLevel.warn,
            "/etc/goophry.json: changing RedisAddress needs a restart; running on with the "
            "values it started with",
        ),
    ]


def test_nothing_changed_says_so(logged: list[LogEvent]) -> None:
    assert read_again(RUNNING, load=lambda path: RUNNING) is not None
    assert _texts(logged) == [
        (LogLevel.info, "configuration reloaded from /etc/goophry.json: nothing changed")
    ]


class SignalReactor(FakeReactor):
    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Callable[[], object]] = []

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.from_thread.append(f)


def test_sighup_calls_reload_in_the_reactor_thread_once_the_reactor_runs() -> None:
    reactor = SignalReactor()
    reloads: list[None] = []
    previous = signal.getsignal(signal.SIGHUP)
    try:
        reload_on_sighup(reactor, lambda: reloads.append(None))
        # Not before the reactor runs.
        assert signal.getsignal(signal.SIGHUP) == previous
        [running] = reactor.when_running
        running()
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        [reload] = reactor.from_thread
        assert reloads == []
        reload()
        assert reloads == [None]
    finally:
        signal.signal(signal.SIGHUP, previous)


# --------------------------------------------------------------------------
# The consumer's workers


def test_more_workers_take_at_once() -> None:
    rig = make_rig(workers=1)
    rig.start()
    rig.give(entry("a"))
    assert rig.consumer.state is State.FULL
    rig.consumer.reconfigure(TaskType("t", SCRIPT, 3))
    # Two workers free, and the queue had entries: one round trip for both.
    assert [p.command for p in rig.blocking.pending] == [evalsha(TAKE_SHA, 2)]
    rig.blocking.take("EVALSHA").answer([entry("b"), entry("c")])
    assert rig.consumer.running == 3
    assert rig.consumer.state is State.FULL


def test_fewer_workers_take_again_once_enough_scripts_have_finished() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("EVALSHA").answer([entry("b"), entry("c")])
    rig.consumer.reconfigure(TaskType("t", SCRIPT, 1))
    a, b, c = rig.scripts()
    a.end(0)
    b.end(0)
    # Two had to finish: one still runs, as many as Workers now allows.
    assert rig.blocking.pending == []
    assert rig.consumer.state is State.FULL
    c.end(0)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_entries_taken_before_workers_were_lowered_all_run() -> None:
    rig = make_rig(workers=3)
    rig.start()
    rig.give(entry("a"))
    # A batch for two is on its way when Workers goes down to 1.
    rig.consumer.reconfigure(TaskType("t", SCRIPT, 1))
    rig.blocking.take("EVALSHA").answer([entry("b"), entry("c")])
    # Taken, so run: nothing goes back, nothing more is taken.
    assert [s.args[1] for s in rig.scripts()] == ["a", "b", "c"]
    assert rig.blocking.pending == []


def test_a_new_script_and_timeout_apply_to_the_next_entries_only() -> None:
    rig = make_rig(workers=2)
    rig.start()
    rig.give(entry("a"))
    rig.consumer.reconfigure(TaskType("t", "/s/new.sh", 2, 5.0))
    rig.blocking.take("BLMOVE").answer(entry("b"))
    old, new = rig.processes.spawned
    assert (old.executable, new.executable) == (SCRIPT, "/s/new.sh")
    rig.clock.advance(5.0)
    # The new timeout stops the new run only.
    assert new.transport.signals == ["TERM"]
    assert old.transport.signals == []


# --------------------------------------------------------------------------
# The service applying a change


class RecordingNotifier(SystemdNotifier):
    """A notifier with a socket to tell, that keeps what it would send."""

    def __init__(self) -> None:
        super().__init__("/run/fake-notify")
        self.sent: list[dict[str, str]] = []

    def notify(self, **fields: str) -> None:
        self.sent.append(fields)


@attrs.define
class Daemon:
    folder: Path
    reactor: FakeReactor
    service: GoophryService
    systemd: RecordingNotifier
    journal: list[str]

    @property
    def control(self) -> LinkService:
        return self.service.control  # type: ignore[return-value]

    def write(self, tasks: list[dict[str, Any]], **settings: Any) -> None:
        for task in tasks:
            script = self.folder / task["Script"]
            script.write_text("#!/bin/sh\n")
            script.chmod(0o755)
        config = {"RedisQueueKey": "q", "Tasks": tasks, **settings}
        (self.folder / "cfg.json").write_text(json.dumps(config))

    def start(self) -> None:
        self.service.startService()
        self.control.reconnect()
        self.control.take("INFO").answer(INFO)
        self.control.take("HGETALL").answer([])
        self.control.take("EVAL").answer([])
        self.control.take("SMEMBERS").answer([])
        assert self.service.phase is Phase.CONSUMING
        # The due-entry mover's first look: nothing scheduled.
        self.control.take("EVAL").answer([b"", 0, 0])
        self.take()

    def take(self) -> list[str]:
        taken, self.journal[:] = list(self.journal), []
        return taken

    def types(self) -> list[str]:
        return [c.task_type.type for c in self.service.consumers]


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    reactor = FakeReactor()
    journal: list[str] = []
    systemd = RecordingNotifier()
    d = Daemon(tmp_path, reactor, None, systemd, journal)  # type: ignore[arg-type]
    d.write([{"Type": "t", "Script": "t.sh"}, {"Type": "u", "Script": "u.sh"}])
    service = GoophryService(
        load_config(str(tmp_path / "cfg.json")),
        reactor,
        instance="i1",
        links=lambda purpose: LinkService(purpose, journal),  # type: ignore[arg-type, return-value]
        spawner=lambda: Spawner(journal),  # type: ignore[arg-type, return-value]
        systemd=systemd,
    )
    service.log = Logger(observer=lambda event: None)
    d.service = service
    return d


def test_systemd_hears_reloading_then_ready(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.systemd.sent == [{"READY": "1", "STATUS": "2 types"}]
    daemon.write([{"Type": "t", "Script": "t.sh"}])
    daemon.service.reload()
    reloading, ready = daemon.systemd.sent[1:]
    assert list(reloading) == ["RELOADING", "MONOTONIC_USEC"]
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert ready == {"READY": "1", "STATUS": "1 types"}


def test_a_type_added_gets_a_link_a_consumer_counters_and_a_registration(
    daemon: Daemon,
) -> None:
    daemon.start()
    daemon.write(
        [
            {"Type": "t", "Script": "t.sh"},
            {"Type": "u", "Script": "u.sh"},
            {"Type": "v", "Script": "v.sh"},
        ]
    )
    daemon.service.reload()
    assert daemon.take() == ["start take:2"]
    assert daemon.types() == ["t", "u", "v"]
    assert "v" in daemon.service.stats.types
    added = daemon.service.consumers[-1]
    # Started: it waits for its link.
    assert added.state is State.RECONCILING
    daemon.reactor.advance(daemon.service.heartbeat.interval)
    # The due-entry mover looks first (its check interval is shorter), and
    # in the added type's scheduled set too.
    move = daemon.control.take("EVAL")
    assert move.command[1] == MOVE_DUE_SCRIPT
    assert move.command[2:9] == (
        6,
        "q:t:scheduled",
        "q:u:scheduled",
        "q:v:scheduled",
        "q:t",
        "q:u",
        "q:v",
    )
    move.answer([b"", 0, 0, 0])
    beat = daemon.control.take("EVAL")
    assert beat.command[1] == BEAT_SCRIPT
    assert '"types":["t","u","v"]' in beat.command[-2]


def test_a_type_removed_stops_taking_and_its_link_goes_once_its_scripts_are_done(
    daemon: Daemon,
) -> None:
    daemon.start()
    link = daemon.service._takers["u"]
    link.reconnect()  # type: ignore[attr-defined]
    daemon.control.take("EVAL").answer(0)
    link.take("BLMOVE").answer(entry("x"))  # type: ignore[attr-defined]
    daemon.take()
    daemon.write([{"Type": "t", "Script": "t.sh"}])
    daemon.service.reload()
    assert daemon.types() == ["t"]
    # Its script still runs: the link stays.
    assert daemon.take() == []
    [run] = daemon.service.spawner.spawned  # type: ignore[attr-defined]
    run.end(1)
    # The outcome is recorded, and the link goes.
    assert daemon.take() == ["control: LREM", "stop take:1"]
    assert daemon.service.counters["u"].failed == 1
    # Counters stay until a restart.
    assert "u" in daemon.service.stats.types


def test_a_type_added_again_waits_for_its_last_scripts_to_end(daemon: Daemon) -> None:
    daemon.start()
    link = daemon.service._takers["u"]
    link.reconnect()  # type: ignore[attr-defined]
    daemon.control.take("EVAL").answer(0)
    link.take("BLMOVE").answer(entry("x"))  # type: ignore[attr-defined]
    daemon.write([{"Type": "t", "Script": "t.sh"}])
    daemon.service.reload()
    daemon.write([{"Type": "t", "Script": "t.sh"}, {"Type": "u", "Script": "u.sh"}])
    daemon.service.reload()
    again = daemon.service.consumers[-1]
    # Started, it would put back the entry that still runs.
    assert again.state is State.IDLE
    daemon.take()
    [run] = daemon.service.spawner.spawned  # type: ignore[attr-defined]
    run.end(0)
    assert "stop take:1" in daemon.take()
    assert again.state is State.RECONCILING


def test_the_plain_values_reach_the_parts_that_read_them(daemon: Daemon) -> None:
    daemon.start()
    daemon.write(
        [{"Type": "t", "Script": "t2.sh", "Workers": 4}, {"Type": "u", "Script": "u.sh"}],
        ErrorScript="t.sh",
        FailedTasksTTL=60,
        OutputLimit=10,
        KillGrace=1,
        ErrorScriptTimeout=2,
        ErrorQueueSize=3,
        ShutdownTimeout=4,
    )
    daemon.service.reload()
    service = daemon.service
    assert (service.runner.output_limit, service.runner.kill_grace) == (10, 1.0)
    assert service.notifier.script == str(daemon.folder / "t.sh")
    assert (service.notifier.timeout, service.notifier.queue_size) == (2.0, 3)
    assert service.store.failed_ttl == 60
    assert service.config.shutdown_timeout == 4.0
    assert service.consumers[0].task_type == TaskType("t", str(daemon.folder / "t2.sh"), 4)


def test_a_type_added_keeps_failed_entries_as_long_as_its_own_ttl_says(daemon: Daemon) -> None:
    daemon.start()
    daemon.write(
        [
            {"Type": "t", "Script": "t.sh", "FailedTasksTTL": 5},
            {"Type": "u", "Script": "u.sh"},
            {"Type": "v", "Script": "v.sh", "FailedTasksTTL": 7},
        ],
        FailedTasksTTL=60,
    )
    daemon.service.reload()
    store = daemon.service.store
    # A kept type's own TTL needs a restart; an added type's applies.
    assert (store.failed_ttl, store.failed_ttls) == (60, {"v": 7})


def test_a_refused_file_changes_nothing_and_systemd_hears_ready_again(daemon: Daemon) -> None:
    daemon.start()
    before = daemon.service.config
    (daemon.folder / "cfg.json").write_text("{")
    daemon.service.reload()
    assert daemon.service.config is before
    assert daemon.systemd.sent[-1] == {"READY": "1", "STATUS": "2 types"}


def test_a_reload_before_redis_answers_is_applied_at_the_start(daemon: Daemon) -> None:
    daemon.service.startService()
    daemon.write([{"Type": "t", "Script": "t.sh"}, {"Type": "v", "Script": "v.sh"}])
    daemon.service.reload()
    # The start's READY=1 is still to come: no reload is announced.
    assert daemon.systemd.sent == []
    assert daemon.types() == ["t", "v"]
    daemon.control.reconnect()
    daemon.control.take("INFO").answer(INFO)
    daemon.control.take("HGETALL").answer([])
    daemon.control.take("EVAL").answer([])
    daemon.control.take("SMEMBERS").answer([])
    assert [c.state for c in daemon.service.consumers] == [State.RECONCILING] * 2
    assert daemon.systemd.sent == [{"READY": "1", "STATUS": "2 types"}]


def test_a_reload_while_stopping_is_ignored(daemon: Daemon) -> None:
    daemon.start()
    daemon.service.stopService()
    daemon.write([{"Type": "t", "Script": "t.sh"}])
    daemon.service.reload()
    assert daemon.types() == ["t", "u"]
    assert [f for f in daemon.systemd.sent if "RELOADING" in f] == []


def test_status_lines_only_when_the_figure_changes(daemon: Daemon) -> None:
    daemon.start()
    link = daemon.service._takers["t"]
    link.reconnect()  # type: ignore[attr-defined]
    daemon.control.take("EVAL").answer(0)
    daemon.reactor.advance(5)
    assert daemon.systemd.sent == [{"READY": "1", "STATUS": "2 types"}]
    link.take("BLMOVE").answer(entry("x"))  # type: ignore[attr-defined]
    daemon.reactor.advance(5)
    assert daemon.systemd.sent[1:] == [{"STATUS": "2 types, 1 running"}]
    daemon.reactor.advance(5)
    assert len(daemon.systemd.sent) == 2
    daemon.service.stopService()
    daemon.reactor.advance(5)
    assert daemon.systemd.sent[2:] == [{"STOPPING": "1"}, {"STATUS": "stopping, 1 running"}]


def test_no_status_timer_without_a_socket() -> None:
    reactor = FakeReactor()
    journal: list[str] = []
    service = GoophryService(
        RUNNING,
        reactor,
        instance="i1",
        links=lambda purpose: LinkService(purpose, journal),  # type: ignore[arg-type, return-value]
        spawner=lambda: Spawner(journal),  # type: ignore[arg-type, return-value]
        systemd=SystemdNotifier(None),
    )
    service.log = Logger(observer=lambda event: None)
    service.startService()
    service.control.reconnect()  # type: ignore[attr-defined]
    service.control.take("INFO").answer(INFO)  # type: ignore[attr-defined]
    service.control.take("HGETALL").answer([])  # type: ignore[attr-defined]
    service.control.take("EVAL").answer([])  # type: ignore[attr-defined]
    service.control.take("SMEMBERS").answer([])  # type: ignore[attr-defined]
    assert service.phase is Phase.CONSUMING
    # The heartbeat's timer, nothing else.
    assert len(reactor.getDelayedCalls()) == 1
    assert service.status.parent is None
