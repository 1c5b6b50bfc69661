"""The benchmark's pure parts: the scale-out summary, the single-core ceiling, the cost figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.report import plot_cost, render, single_core_ceilings, targets
from bench.scaleout import Drain, summarise


def _drain(daemons: int, rate: float, shares: list[float], redis_us: float = 40.0) -> Drain:
    return Drain(
        daemons=daemons,
        wait_replicas=0,
        entries=5000,
        seconds=5000 / rate,
        rate=rate,
        shares=shares,
        commands_per_task=2.5,
        redis_cpu_us_per_task=redis_us,
        waits_per_task=0.0,
        daemon_cpu_per_1000_s=0.3,
        busy_cores=1.9,
        other_load_cores=0.1,
    )


def _run(cpu: float, original: bool = True) -> dict[str, Any]:
    """One drain comparison as the throughput and scale scenarios record it."""
    r: dict[str, Any] = {
        "concurrency": 8,
        "raw_rate": 2000.0,
        "ours_rate": 1500.0,
        "ratio": 0.75,
        "pair_ratios": [0.75],
        "ours_cpu_per_1000_s": cpu,
        "raw_cpu_per_1000_s": 0.08,
        "other_load_cores": 0.2,
        "failed": 0,
    }
    if original:
        r.update(
            original_rate=1400.0,
            ours_to_original=1500 / 1400,
            original_pair_ratios=[1.07],
            original_cpu_per_1000_s=0.25,
        )
    return r


def _doc() -> dict[str, Any]:
    scaleout = summarise([_drain(1, 1000, [1.0]), _drain(2, 1500, [0.4, 0.6], 30.0)], cores=2)
    scaleout.update(workers=8, repeats=1)
    scn: dict[str, Any] = {
        "throughput": {
            "n": 5000,
            "repeats": 1,
            "by_workers": {"1": _run(0.5), "8": _run(0.4), "256": _run(0.25)},
        },
        "scale": {
            "workers_per_type": 8,
            "by_types": {"1": _run(0.4), "10": _run(0.32)},
            "alive": {
                **_run(0.3),
                "children": 256,
                "script": "/bin/sleep 0.3",
                "ideal_rate": 853.0,
                "peak_children": 256,
            },
        },
        "scaleout": scaleout,
    }
    doc: dict[str, Any] = {
        "started": "2026-12-02T14:00:00",
        "duration_s": 1.0,
        "machine": {
            "cores": 2,
            "python": "3.11",
            "twisted": "26.10",
            "redis": "7.0",
            "loadavg": "0.1 0.1 0.1",
        },
        "daemon_cmd": "twistd",
        "original_cmd": "goophry-1.1.0 -c {config}",
        "timings_s": {},
        "errors": {},
        "notes": [],
        "sigterm": {"exit_codes": [], "seconds": []},
        "scenarios": scn,
    }
    doc["targets"] = targets(doc)
    return doc


def test_scaleout_summary_finds_the_ceiling_and_what_one_redis_carries() -> None:
    s = summarise(
        [
            _drain(1, 1000, [1.0]),
            _drain(2, 1500, [0.4, 0.6], 30.0),
            _drain(2, 1700, [0.5, 0.5], 30.0),
            _drain(3, 1400, [0.2, 0.3, 0.5], 30.0),
        ],
        cores=2,
    )
    assert s["by_daemons"]["2"]["rate"] == 1600
    # The least busy daemon's share against an even one: 0.4 * 2 and 0.5 * 2.
    assert s["by_daemons"]["2"]["fairness"] == pytest.approx(0.9)
    assert s["by_daemons"]["3"]["fairness"] == pytest.approx(0.6)
    assert s["ceiling"] == {"daemons": 2, "rate": 1600, "busy_cores": 1.9, "cores": 2}
    # The median Redis CPU per task (30 us) is 33,333 tasks/s for one core of Redis:
    # 33 daemons at one daemon's 1000/s, 21 hosts at this one's 1600/s.
    redis = s["redis"]
    assert redis["tasks_per_s_per_core"] == pytest.approx(1e6 / 30)
    assert redis["commands_per_s_per_core"] == pytest.approx(2.5e6 / 30)
    assert redis["daemons_per_core"] == pytest.approx(1e6 / 30 / 1000)
    assert redis["hosts_per_core"] == pytest.approx(1e6 / 30 / 1600)
    # 0.3 CPU s per 1000 tasks: 3333 tasks/s for a daemon with a core of its own.
    assert redis["daemon_single_core_ceiling"] == pytest.approx(1000 / 0.3)
    assert redis["daemons_per_core_at_their_ceiling"] == pytest.approx(10)


def test_single_core_ceiling_is_1000_over_cpu_per_1000_tasks_for_each_process() -> None:
    scn = {
        "throughput": {"by_workers": {"8": _run(0.4)}},
        "scale": {"by_types": {"10": _run(0.25, original=False)}},
    }
    ceilings = single_core_ceilings(scn)
    assert ceilings["ours"] == [("Workers 8", 2500), ("10 types", 4000)]
    assert ceilings["original"] == [("Workers 8", 4000)]
    assert ceilings["raw"] == [("Workers 8", 12500), ("10 types", 12500)]


def test_report_shows_the_original_in_the_scale_table_the_ceiling_and_the_scaleout() -> None:
    text = render(_doc())
    scale = text[text.index("\nscale:") : text.index("single-core ceiling")]
    assert "original/s" in scale and "original CPU s/1000" in scale
    assert "ours: 2000-4000  (Workers 1 2000, Workers 8 2500" in text
    assert "ceiling here: 1500 tasks/s with 2 daemon(s), 1.90 of 2 cores busy" in text
    assert "40% 60%" in text


def test_cost_figure_is_drawn_from_a_small_doc(tmp_path: Path) -> None:
    path = plot_cost(_doc(), str(tmp_path / "cost.png"))
    assert Path(path).read_bytes().startswith(b"\x89PNG")


def test_cost_figure_is_drawn_without_the_original_or_the_scale_scenario(
    tmp_path: Path,
) -> None:
    doc = _doc()
    doc["scenarios"] = {"throughput": {"by_workers": {"8": _run(0.4, original=False)}}}
    path = plot_cost(doc, str(tmp_path / "cost.png"))
    assert Path(path).read_bytes().startswith(b"\x89PNG")


def test_a_drain_the_original_crashed_in_leaves_its_cells_empty() -> None:
    doc = _doc()
    crashed = _run(0.32, original=False)
    doc["scenarios"]["scale"]["by_types"]["10"] = crashed
    doc["scenarios"]["throughput"]["by_workers"]["8"] = crashed
    text = render(doc)
    assert "original/s" in text[text.index("\nthroughput:") : text.index("\nscale:")]
    scale = text[text.index("\nscale:") : text.index("single-core ceiling")]
    assert "original CPU s/1000" in scale
    assert any(line.split()[:2] == ["10", "types"] and " - " in line for line in scale.split("\n"))
