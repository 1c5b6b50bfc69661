"""Workers bounds how many scripts run at once; the rest wait in Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.integration.conftest import Goophry, stats_when

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _events(log: Path) -> list[tuple[float, str, str]]:
    """C{(time, "start"|"end", task)} from the lines the scripts appended."""
    events = []
    for line in log.read_text().splitlines():
        kind, task, when = line.split()
        events.append((float(when), kind, task))
    return sorted(events)


def _max_overlap(events: list[tuple[float, str, str]]) -> int:
    running = peak = 0
    # At equal times an end sorts before a start ("end" < "start"): not an overlap.
    for _, kind, _task in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    return peak


def test_two_workers_run_two_tasks_at_once_and_leave_the_rest_in_redis(
    goophry: Goophry, tmp_path: Path, stats_address: str
) -> None:
    log = tmp_path / "events"
    for n in range(6):
        goophry.push_args("slow", f"t{n}")
    daemon = goophry.launch(
        f'echo "start $1 $(date +%s.%N)" >> {log}\nsleep 1\necho "end $1 $(date +%s.%N)" >> {log}',
        task_type="slow",
        task={"Workers": 2},
        StatsInterface=stats_address,
    ).daemon

    def starts() -> int:
        return log.read_text().count("start ") if log.exists() else 0

    wait_for(lambda: starts() >= 2, message=lambda: f"two tasks started:\n{daemon.log_text()}")
    # The first two run; the other four are still in Redis, for any daemon to take.
    assert goophry.llen(goophry.queue("slow")) == 4
    assert starts() == 2
    [inflight] = goophry.inflight_keys()
    assert goophry.llen(inflight.decode()) == 2

    stats = stats_when(stats_address, lambda s: s["Succeeded"]["slow"] == 6, timeout=15)
    assert stats["TaskCount"] == {"slow": 6}
    assert stats["Failed"] == {"slow": 0}

    events = _events(log)
    assert sorted(task for _, kind, task in events if kind == "end") == [f"t{n}" for n in range(6)]
    assert _max_overlap(events) == 2
    # Taken in FIFO order.
    assert [task for _, kind, task in events if kind == "start"][:2] in (
        ["t0", "t1"],
        ["t1", "t0"],
    )
    assert goophry.llen(goophry.queue("slow")) == 0
    assert goophry.inflight_keys() == []
