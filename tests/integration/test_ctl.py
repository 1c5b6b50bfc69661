"""goophry-ctl as an operator runs it: real Redis, real daemons, its output parsed back."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    DaemonProcess,
    RedisServer,
    daemon_env,
    free_port,
    refusing_port,
    wait_for,
)
from tests.integration.conftest import Goophry

pytestmark = pytest.mark.integration

CTL = [sys.executable, "-m", "goophry_tx.ctl"]


def ctl(
    config: Path, *args: str, stdin: Any = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """Run goophry-ctl with this config; its output as text."""
    return subprocess.run(
        [*CTL, "-c", str(config), *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
    )


def ok(config: Path, *args: str) -> str:
    done = ctl(config, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_json(config: Path, *args: str) -> Any:
    return json.loads(ok(config, "--json", *args))


def one_error_line(done: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    """The exit status, and one line on stderr that says C{text}, no traceback."""
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("goophry-ctl: ")
    assert text in lines[0]


def rows(text: str) -> list[dict[str, str]]:
    """An aligned table parsed back: one dict per row, by the header's columns."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    header = next(i for i, line in enumerate(lines) if re.fullmatch(r"[A-Z][A-Z ]+", line))
    names = re.split(r" {2,}", lines[header])
    parsed = []
    for line in lines[header + 1 :]:
        cells = re.split(r" {2,}", line)
        if len(cells) != len(names):
            break
        parsed.append(dict(zip(names, cells, strict=True)))
    return parsed


def config_with(
    goophry: Goophry, write_config: Callable[..., Path], body: str = "exit 1", **settings: Any
) -> Path:
    script = goophry.script("t.sh", body)
    settings.setdefault("Tasks", [{"Type": "t", "Script": str(script)}])
    settings.setdefault("FailedTasksTTL", 600)
    return write_config(**settings)


def failed_record(*args: str, **fields: Any) -> str:
    return json.dumps({"Args": list(args), "ErrorMessage": "exit status 1\nboom", **fields})


# The commands, one by one


def test_help_lists_every_command() -> None:
    done = subprocess.run([*CTL, "--help"], capture_output=True, text=True, env=daemon_env())
    assert done.returncode == 0
    for command in ("stats", "push", "failed", "inflight", "instances", "pause", "resume", "check"):
        assert command in done.stdout
    failed = subprocess.run(
        [*CTL, "failed", "--help"], capture_output=True, text=True, env=daemon_env()
    )
    for action in ("ls", "show", "retry", "purge"):
        assert action in failed.stdout


def test_it_is_installed_as_a_console_script() -> None:
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "goophry-ctl"]
    assert script.value == "goophry_tx.ctl:main"


def test_stats_counts_queued_failed_paused_and_in_flight(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    script = goophry.script("t.sh", "exit 1")
    cfg = config_with(
        goophry,
        write_config,
        Tasks=[{"Type": "t", "Script": str(script)}, {"Type": "u", "Script": str(script)}],
    )
    goophry.push_args("t", "1")
    goophry.push_args("t", "2")
    goophry.redis.cli("RPUSH", goophry.failed_key("u"), failed_record("x"))
    goophry.redis.cli("ZADD", goophry.keys.scheduled("u"), 4102444800, '{"Args":["later"]}')
    goophry.redis.cli("RPUSH", f"{goophry.key}:u:inflight:gone", '{"Args":[]}')
    goophry.redis.cli("HSET", f"{goophry.key}:instances", "gone", '{"types":["u"]}')
    goophry.redis.cli("SET", f"{goophry.key}:instance:here", "1")
    goophry.redis.cli("HSET", f"{goophry.key}:instances", "here", '{"types":["t"]}')
    ok(cfg, "pause", "u")

    document = as_json(cfg, "stats")
    assert document == {
        "types": {
            "t": {"queued": 2, "inflight": 0, "failed": 0, "paused": False, "scheduled": 0},
            "u": {"queued": 0, "inflight": 1, "failed": 1, "paused": True, "scheduled": 1},
        },
        "instances": {"alive": 1, "dead": 1},
    }
    text = ok(cfg, "stats")
    assert rows(text) == [
        {
            "TYPE": "t",
            "QUEUED": "2",
            "INFLIGHT": "0",
            "FAILED": "0",
            "SCHEDULED": "0",
            "PAUSED": "no",
        },
        {
            "TYPE": "u",
            "QUEUED": "0",
            "INFLIGHT": "1",
            "FAILED": "1",
            "SCHEDULED": "1",
            "PAUSED": "yes",
        },
    ]
    assert "instances: 1 alive, 1 dead" in text


def test_push_refuses_an_unknown_type_unless_forced(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config)
    assert as_json(cfg, "push", "t", "a b", "$(x)") == {
        "type": "t",
        "entry": {"Args": ["a b", "$(x)"]},
        "queued": 1,
    }
    assert "(2 queued)" in ok(cfg, "push", "t")
    one_error_line(ctl(cfg, "push", "other", "x"), 2, "unknown task type 'other'")
    assert goophry.llen(goophry.queue("other")) == 0
    ok(cfg, "push", "--force", "other", "x")
    assert goophry.redis.cli("LRANGE", goophry.queue("t"), 0, -1) == [
        b'{"Args":["a b","$(x)"]}',
        b'{"Args":[]}',
    ]
    assert goophry.redis.cli("LRANGE", goophry.queue("other"), 0, -1) == [b'{"Args":["x"]}']


def test_failed_ls_and_show_read_every_kind_of_entry(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config)
    goophry.redis.cli(
        "RPUSH",
        goophry.failed_key("t"),
        failed_record("a", "b", FailedAt=1700000000, Instance="host:1:ab"),
        json.dumps({"Args": None, "ErrorMessage": "invalid task entry: not JSON", "Payload": "z"}),
        "garbage",
        failed_record("c"),
    )
    page = as_json(cfg, "failed", "ls", "t")
    assert page["total"] == 4
    assert [e["index"] for e in page["entries"]] == [0, 1, 2, 3]
    first = page["entries"][0]
    assert first["args"] == ["a", "b"]
    assert first["failed_at"] == 1700000000
    assert first["instance"] == "host:1:ab"
    assert first["error"] == "exit status 1\nboom"
    assert page["entries"][1]["invalid"] is True
    assert page["entries"][2]["problem"] == "not JSON"

    table = rows(ok(cfg, "failed", "ls", "t"))
    assert [row["INDEX"] for row in table] == ["0", "1", "2", "3"]
    assert table[0]["ID"] == first["id"]
    assert table[0]["ERROR"] == "exit status 1"
    assert table[0]["ARGS"] == '["a", "b"]'
    assert table[0]["INSTANCE"] == "host:1:ab"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", table[0]["FAILED AT"])
    assert table[3]["FAILED AT"] == "-"
    assert "not JSON" in table[2]["ERROR"]

    limited = as_json(cfg, "failed", "ls", "t", "--offset", "1", "--limit", "2")
    assert [e["index"] for e in limited["entries"]] == [1, 2]

    shown = ok(cfg, "failed", "show", "t", "0")
    assert "ErrorMessage:\n    exit status 1\n    boom" in shown
    assert 'Instance: "host:1:ab"' in shown
    assert (
        as_json(cfg, "failed", "show", "t", "0")["entry"]["ErrorMessage"] == "exit status 1\nboom"
    )
    assert "not a failed-task record (not JSON)" in ok(cfg, "failed", "show", "t", "2")
    one_error_line(ctl(cfg, "failed", "show", "t", "9"), 1, "no entry at index 9")


def test_bad_indices_and_malformed_entries_are_left_alone_with_a_line_each(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config)
    goophry.redis.cli(
        "RPUSH",
        goophry.failed_key("t"),
        failed_record("keep"),
        "garbage",
        json.dumps({"Args": None, "ErrorMessage": "invalid", "Payload": "z"}),
        failed_record("go"),
    )
    listed = as_json(cfg, "failed", "ls", "t")["entries"]
    # Someone else takes the head of the list: every index moves.
    goophry.redis.cli("RPUSH", goophry.failed_key("t"), failed_record("new"))

    for args, text in [
        (["9"], "no entry at index 9"),
        (["1"], "not a failed-task record (not JSON)"),
        (["2"], "an invalid entry (stored with its Payload)"),
        ([f"0@{listed[3]['id']}"], "changed since it was listed"),
    ]:
        one_error_line(ctl(cfg, "failed", "retry", "t", *args), 1, text)
    assert goophry.llen(goophry.queue("t")) == 0
    assert goophry.llen(goophry.failed_key("t")) == 5

    bad = ctl(cfg, "failed", "retry", "t", "x")
    assert bad.returncode == 2 and "INDEX or INDEX@ID" in bad.stderr
    assert ctl(cfg, "failed", "retry", "t").returncode == 2


def test_redis_down_is_one_line_and_status_1(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    with refusing_port() as port:
        cfg = config_with(goophry, write_config, RedisAddress=f"127.0.0.1:{port}")
        for args in (["stats"], ["failed", "ls", "t"], ["push", "t", "x"], ["instances"]):
            one_error_line(ctl(cfg, *args), 1, "cannot reach Redis at 127.0.0.1:")


def test_a_redis_that_does_not_answer_is_one_line_and_status_1(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    with socket.socket() as silent:
        # The kernel accepts connections into the backlog; nothing answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        cfg = config_with(goophry, write_config, RedisAddress=f"127.0.0.1:{port}")
        one_error_line(ctl(cfg, "stats"), 1, "no answer within 5s")


def test_a_wrong_password_is_one_line_and_status_1(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config, RedisPassword="wrong")
    one_error_line(ctl(cfg, "stats"), 1, "cannot reach Redis")


def test_config_errors_and_check(
    goophry: Goophry, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = config_with(goophry, write_config)
    assert "OK" in ok(cfg, "check")
    checked = as_json(cfg, "check")
    assert checked["ok"] is True and [t["type"] for t in checked["types"]] == ["t"]
    bad = write_config(Tasks=[{"Type": "t", "Script": "nowhere.sh"}])
    for args in (["check"], ["stats"]):
        one_error_line(ctl(bad, *args), 2, "Tasks[0].Script")
    one_error_line(ctl(tmp_path / "missing.json", "stats"), 2, "cannot read the configuration")
    # check never touches Redis.
    down = config_with(goophry, write_config, RedisAddress=f"127.0.0.1:{free_port()}")
    assert "OK" in ok(down, "check")


def test_pause_and_resume_publish_beside_the_set(
    goophry: Goophry, write_config: Callable[..., Path], redis: RedisServer
) -> None:
    cfg = config_with(goophry, write_config)
    with socket.create_connection((redis.host, redis.port), timeout=10) as listener:
        channel = f"{goophry.key}:paused".encode()
        listener.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        heard = b""
        while b":1\r\n" not in heard:
            heard += listener.recv(4096)
        assert "t paused" in ok(cfg, "pause", "t")
        assert as_json(cfg, "pause", "t") == {"type": "t", "paused": True, "changed": False}
        assert redis.cli("SMEMBERS", f"{goophry.key}:paused") == [b"t"]
        assert "t resumed" in ok(cfg, "resume", "t")
        assert redis.cli("EXISTS", f"{goophry.key}:paused") == 0
        while b"resume t" not in heard:
            heard += listener.recv(4096)
        assert heard.index(b"pause t") < heard.index(b"resume t")
    one_error_line(ctl(cfg, "pause", "nope"), 2, "unknown task type 'nope'")


# Purging


def test_purge_by_index_and_all(goophry: Goophry, write_config: Callable[..., Path]) -> None:
    cfg = config_with(goophry, write_config)
    goophry.redis.cli("RPUSH", goophry.failed_key("t"), *(failed_record(str(n)) for n in range(5)))
    listed = as_json(cfg, "failed", "ls", "t")["entries"]
    done = as_json(cfg, "failed", "purge", "t", "1", f"3@{listed[3]['id']}")
    assert done == {"type": "t", "done": [1, 3], "skipped": []}
    assert [e["Args"] for e in goophry.failed("t")] == [["0"], ["2"], ["4"]]

    one_error_line(ctl(cfg, "failed", "purge", "t", "--all"), 2, "needs --yes")
    assert goophry.llen(goophry.failed_key("t")) == 3
    assert "purged 3 entries" in ok(cfg, "failed", "purge", "t", "--all", "--yes")
    assert goophry.llen(goophry.failed_key("t")) == 0
    assert goophry.llen(goophry.queue("t")) == 0


@pytest.mark.parametrize("answer, left", [(b"y\n", 0), (b"n\n", 2)])
def test_purge_all_asks_on_a_terminal(
    goophry: Goophry, write_config: Callable[..., Path], answer: bytes, left: int
) -> None:
    cfg = config_with(goophry, write_config)
    goophry.redis.cli("RPUSH", goophry.failed_key("t"), failed_record("1"), failed_record("2"))
    main, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CTL, "-c", str(cfg), "failed", "purge", "t", "--all"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=daemon_env(),
        )
        os.close(terminal)
        os.write(main, answer)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
    assert b"Delete every entry of" in err
    assert proc.returncode == (0 if left == 0 else 1)
    assert goophry.llen(goophry.failed_key("t")) == left


# Retrying, with the daemon running them again


FLAKY = """
if [ -e "{flag}" ]; then echo "$1" >> "{ran}"; exit 0; fi
exit 1
"""


def test_retry_one_several_and_all_run_again(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    flag, ran = tmp_path / "flag", tmp_path / "ran"
    cfg = config_with(goophry, write_config, FLAKY.format(flag=flag, ran=ran))
    goophry.started(run_daemon(cfg))
    for n in range(6):
        goophry.push_args("t", f"e{n}")
    goophry.wait_failed("t", 6)
    flag.touch()

    def ran_args() -> list[str]:
        return ran.read_text().split() if ran.exists() else []

    def wait_ran(count: int) -> None:
        wait_for(
            lambda: len(ran_args()) >= count, 15, message=lambda: f"{count} runs: {ran_args()}"
        )

    listed = as_json(cfg, "failed", "ls", "t")["entries"]
    order = [e["args"][0] for e in listed]
    assert sorted(order) == [f"e{n}" for n in range(6)]

    one = ok(cfg, "failed", "retry", "t", f"0@{listed[0]['id']}")
    assert "retried 1 entry" in one
    wait_ran(1)
    assert ran_args() == [order[0]]

    several = as_json(cfg, "failed", "retry", "t", "0", "2")
    assert several == {"type": "t", "done": [0, 2], "skipped": []}
    wait_ran(3)
    assert sorted(ran_args()[1:]) == sorted([order[1], order[3]])

    assert "retried 3 entries" in ok(cfg, "failed", "retry", "t", "--all")
    wait_ran(6)
    assert sorted(ran_args()) == sorted(order)
    assert goophry.llen(goophry.failed_key("t")) == 0
    wait_for(lambda: not goophry.llen(goophry.queue("t")), 15, message="the queue drained")
    assert len(ran_args()) == 6


RACING = """
case "$1" in
  new-*) exit 1 ;;
esac
if [ -e "{flag}" ]; then echo "$1" >> "{ran}"; exit 0; fi
exit 1
"""


def test_retry_racing_a_daemon_writing_failures_loses_and_doubles_nothing(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    flag, ran = tmp_path / "flag", tmp_path / "ran"
    script = goophry.script("racing.sh", RACING.format(flag=flag, ran=ran))
    cfg = config_with(
        goophry, write_config, Tasks=[{"Type": "t", "Script": str(script), "Workers": 4}]
    )
    goophry.started(run_daemon(cfg))
    olds = [f"old-{n}" for n in range(40)]
    for arg in olds:
        goophry.push_args("t", arg)
    goophry.wait_failed("t", len(olds))
    flag.touch()

    news: list[str] = []
    retried = threading.Event()

    def produce() -> None:
        # New failures all along the retries, paced so the daemon keeps up.
        while not retried.is_set() or len(news) < 20:
            news.append(f"new-{len(news)}")
            goophry.push_args("t", news[-1])
            retried.wait(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        # Several rounds, each meeting failures written while it works.
        for _ in range(3):
            ok(cfg, "failed", "retry", "t", "--all")
    finally:
        retried.set()
        producer.join(60)

    def settled() -> bool:
        if goophry.llen(goophry.queue("t")) or goophry.inflight_keys():
            return False
        return goophry.llen(goophry.failed_key("t")) == len(news)

    wait_for(
        settled,
        30,
        message=lambda: f"{len(news)} new failures; failed list: {goophry.failed('t')}",
    )
    assert sorted(ran.read_text().split()) == sorted(olds)
    assert sorted(e["Args"][0] for e in goophry.failed("t")) == sorted(news)


# Instances and what they hold


def test_instances_and_inflight_tell_a_killed_instance_from_a_live_one(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
) -> None:
    script = goophry.script("t.sh", "exit 0")
    slow = goophry.script("slow.sh", "sleep 60")
    # The live one beats rarely: the dead one stays listed until its next beat.
    live_cfg = write_config(
        tmp_path / "live", Tasks=[{"Type": "t", "Script": str(script)}], InstanceTimeout=200
    )
    doomed_cfg = write_config(
        tmp_path / "doomed",
        Tasks=[{"Type": "t", "Script": str(script)}, {"Type": "slow", "Script": str(slow)}],
        InstanceTimeout=1.5,
    )
    live = goophry.started(run_daemon(live_cfg))
    doomed = goophry.started(run_daemon(doomed_cfg))
    cfg = doomed_cfg

    def listed() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = as_json(cfg, "instances")["instances"]
        return found

    wait_for(lambda: len(listed()) == 2, 15, message=lambda: f"two instances: {listed()}")
    goophry.push_args("slow", "held")
    wait_for(lambda: as_json(cfg, "inflight", "ls")["entries"], 15, message="slow taken")
    doomed.kill()

    def one_dead() -> list[dict[str, Any]] | None:
        found = listed()
        return found if sorted(i["alive"] for i in found) == [False, True] else None

    found = wait_for(one_dead, 15, message=lambda: f"one dead instance: {listed()}")
    by_pid = {i["pid"]: i for i in found}
    assert by_pid[live.pid]["alive"] is True
    assert by_pid[doomed.pid]["alive"] is False
    assert by_pid[doomed.pid]["types"] == ["t", "slow"]
    assert by_pid[doomed.pid]["inflight"] == 1
    assert abs(by_pid[live.pid]["started"] - time.time()) < 600
    # Read from the record, which says when the instance started.
    record = json.loads(goophry.redis.cli("HGET", goophry.keys.instances, by_pid[live.pid]["name"]))
    assert isinstance(record["started"], int)
    assert by_pid[live.pid]["started"] == record["started"]

    table = rows(ok(cfg, "instances"))
    states = {row["PID"]: row["STATE"] for row in table}
    assert states == {str(live.pid): "alive", str(doomed.pid): "dead"}

    held = as_json(cfg, "inflight", "ls", "slow")["entries"]
    assert [(e["alive"], e["args"]) for e in held] == [(False, ["held"])]
    assert as_json(cfg, "inflight", "ls", "t")["entries"] == []
    inflight_rows = rows(ok(cfg, "inflight", "ls"))
    assert [(r["STATE"], r["TYPE"], r["ARGS"]) for r in inflight_rows] == [
        ("dead", "slow", '["held"]')
    ]
    stats = as_json(cfg, "stats")
    assert stats["instances"] == {"alive": 1, "dead": 1}
    assert stats["types"]["slow"]["inflight"] == 1
