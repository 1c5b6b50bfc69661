"""Retries with backoff and scheduled entries, with real Redis, real scripts and the real daemon."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from goophry_tx.schedule import CHECK_INTERVAL
from tests.helpers import task_payload, wait_for
from tests.integration.conftest import Goophry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A script that records when it started and with which argument, then
#: fails until its argument's count of runs reaches the count in $2.
RECORDER = """
now=$(date +%s.%N)
echo "$1 $now" >> {runs}
n=$(grep -c "^$1 " {runs})
[ "$n" -ge "${{2:-1}}" ] || exit 7
"""


def _runs(path: Path) -> list[tuple[str, float]]:
    """The runs a RECORDER script wrote: (argument, start time)."""
    if not path.exists():
        return []
    return [
        (name, float(at))
        for name, at in (line.split() for line in path.read_text().splitlines() if line)
    ]


def _scheduled(goophry: Goophry, task_type: str) -> list[bytes]:
    members = goophry.redis.cli("ZRANGE", goophry.keys.scheduled(task_type), 0, -1)
    assert isinstance(members, list)
    return members  # type: ignore[return-value]


def test_a_task_failing_twice_runs_three_times_spaced_by_the_backoff(
    goophry: Goophry, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    backoff = 0.5
    daemon = goophry.launch(
        RECORDER.format(runs=runs),
        task_payload("a", "3"),
        task={"Retries": 3, "RetryBackoff": backoff},
        FailedTasksTTL=60,
    ).daemon
    wait_for(lambda: len(_runs(runs)) == 3, 15, message=daemon.log_text)
    goophry.wait_settled()
    times = [at for _, at in _runs(runs)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Each wait within its jitter, plus a margin for a start on a loaded machine.
    assert backoff * 0.8 <= gaps[0] <= backoff * 1.2 + 0.5, gaps
    assert 2 * backoff * 0.8 <= gaps[1] <= 2 * backoff * 1.2 + 0.5, gaps
    log = daemon.log_text()
    assert "task t failed (attempt 1 of 4), next in " in log
    assert "task t failed (attempt 2 of 4), next in " in log
    assert goophry.failed("t") == []
    assert _scheduled(goophry, "t") == []
    assert goophry.llen(goophry.queue("t")) == 0


def test_a_task_failing_every_time_ends_failed_with_attempts_and_error_script_told_once(
    goophry: Goophry, tmp_path: Path
) -> None:
    runs, told = tmp_path / "runs", tmp_path / "told"
    error_script = goophry.script("error.sh", f'printf "%s\\n--\\n" "$1" >> {told}')
    daemon = goophry.launch(
        RECORDER.format(runs=runs),
        task_payload("a", "99"),
        task={"Retries": 2, "RetryBackoff": 0.1},
        FailedTasksTTL=60,
        ErrorScript=str(error_script),
    ).daemon
    [entry] = goophry.wait_failed("t", timeout=15)
    assert goophry.stamped(entry, daemon) == {
        "Args": ["a", "99"],
        "ErrorMessage": "exit status 7",
        "Attempts": 3,
    }
    wait_for(told.exists, message=daemon.log_text)
    goophry.wait_settled()
    assert len(_runs(runs)) == 3
    # Told of the last failure only: told of an earlier one, it would have
    # written before this one.
    assert told.read_text().count("\n--\n") == 1
    assert _scheduled(goophry, "t") == []


def test_scheduled_entries_run_within_a_second_of_their_time(
    goophry: Goophry, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    daemon = goophry.launch(RECORDER.format(runs=runs), task={"Workers": 4}).daemon
    now = time.time()
    # Due after the mover's next read of the earliest due time.
    due = {f"e{n}": now + CHECK_INTERVAL + 0.5 + n * 0.3 for n in range(8)}
    for name, at in due.items():
        goophry.redis.cli("ZADD", goophry.keys.scheduled("t"), repr(at), task_payload(name))
    # Due already: found at that next read.
    goophry.redis.cli("ZADD", goophry.keys.scheduled("t"), repr(now - 60), task_payload("past"))
    wait_for(lambda: len(_runs(runs)) == len(due) + 1, 15, message=daemon.log_text)
    started = dict(_runs(runs))
    late = {name: started[name] - at for name, at in due.items()}
    print("started this late (s):", late)
    assert all(delay >= 0 for delay in late.values()), late
    assert max(late.values()) < 1.0, late
    assert started["past"] - now < CHECK_INTERVAL + 1.0
    assert _scheduled(goophry, "t") == []


def test_two_daemons_move_each_of_a_thousand_due_entries_once(
    goophry: Goophry, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    script = goophry.script("t.sh", f'echo "$1" >> {runs}')
    config = goophry.config([{"Type": "t", "Script": str(script), "Workers": 4}])
    first, second = goophry.start(config), goophry.start(config)
    names = [f"e{n}" for n in range(1000)]
    # Due in a moment, so that both daemons are watching when they are.
    due = repr(time.time() + 1.0)
    commands: list[object] = []
    for name in names:
        commands += [due, task_payload(name)]
    goophry.redis.cli("ZADD", goophry.keys.scheduled("t"), *commands)

    def lines() -> list[str]:
        return runs.read_text().split() if runs.exists() else []

    wait_for(
        lambda: len(lines()) >= len(names),
        60,
        message=lambda: f"{len(lines())} runs\n{first.log_text()}\n{second.log_text()}",
    )
    goophry.wait_settled()
    assert sorted(lines()) == sorted(names)
    assert goophry.llen(goophry.queue("t")) == 0


def test_kill_9_while_entries_wait_in_the_scheduled_set_loses_none(
    goophry: Goophry, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    daemon, _, config = goophry.launch(
        RECORDER.format(runs=runs),
        task_payload("retried", "2"),
        task={"Retries": 1, "RetryBackoff": 2.0},
    )
    goophry.redis.cli(
        "ZADD", goophry.keys.scheduled("t"), repr(time.time() + 2.0), task_payload("later")
    )
    wait_for(lambda: len(_scheduled(goophry, "t")) == 2, 10, message=daemon.log_text)
    os.kill(daemon.pid, 9)
    daemon.wait()
    restarted = goophry.start(config)
    wait_for(
        lambda: sorted(name for name, _ in _runs(runs)) == ["later", "retried", "retried"],
        15,
        message=restarted.log_text,
    )
    goophry.wait_settled()
    assert _scheduled(goophry, "t") == []


def test_kill_9_while_due_entries_are_being_moved_loses_none(
    goophry: Goophry, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    script = goophry.script("t.sh", f'echo "$1" >> {runs}')
    config = goophry.config([{"Type": "t", "Script": str(script), "Workers": 4}])
    names = [f"e{n}" for n in range(2500)]
    commands: list[object] = []
    for name in names:
        commands += [repr(time.time() - 1), json.dumps({"Args": [name]})]
    goophry.redis.cli("ZADD", goophry.keys.scheduled("t"), *commands)
    first = goophry.start(config)
    # Killed between two batches of moves, or in the middle of one.
    wait_for(lambda: len(_scheduled(goophry, "t")) < len(names), 15, message=first.log_text)
    os.kill(first.pid, 9)
    first.wait()
    second = goophry.start(config)

    def done() -> set[str]:
        return set(runs.read_text().split()) if runs.exists() else set()

    wait_for(
        lambda: done() == set(names),
        90,
        message=lambda: f"{len(done())} of {len(names)} ran\n{second.log_text()}",
    )
    goophry.wait_settled(30)
    assert _scheduled(goophry, "t") == []
    assert goophry.llen(goophry.queue("t")) == 0


def _cpu_seconds(pid: int) -> float:
    """The user and system CPU time of a process so far, from C{/proc/<pid>/stat}."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The fields after the command name, which may itself hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_daemon_with_ten_retrying_types_uses_under_0_2_percent_of_a_core(
    goophry: Goophry,
) -> None:
    script = goophry.script("t.sh", "true")
    config = goophry.config(
        [
            {"Type": f"t{n}", "Script": str(script), "Retries": 3, "RetryBackoff": 1}
            for n in range(10)
        ]
    )
    daemon = goophry.start(config)
    # Past the start-up's own work.
    wait_for(lambda: len(goophry.instances()) == 1, 10, message=daemon.log_text)
    time.sleep(2)  # past the start-up: a measurement, not a wait
    before, started = _cpu_seconds(daemon.pid), time.monotonic()
    time.sleep(30)  # the measurement itself
    used = (_cpu_seconds(daemon.pid) - before) / (time.monotonic() - started)
    print(f"idle CPU: {used * 100:.3f}% of a core")
    assert used < 0.002, f"{used * 100:.3f}% of a core"
