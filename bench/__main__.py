"""Command line of the benchmark suite (C{make bench} runs C{python -m bench})."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import report, scenarios
from bench.daemon import DEFAULT_DAEMON_CMD, STANDIN_DAEMON_CMD
from tests.helpers import REPO_ROOT

#: In the order they run: the scale-out last, as it starts daemons of its own.
SCENARIOS = ("throughput", "latency", "idle", "cost", "scale", "scaleout")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine(bench: scenarios.Bench) -> dict[str, Any]:
    """Facts about where the figures come from."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": _version("twisted"),
        "txredisapi": _version("txredisapi"),
        "redis": bench.redis_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git_commit": commit or "?",
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options; --quick shrinks every default for a smoke run."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenario", nargs="?", choices=("all", *SCENARIOS), default="all")
    p.add_argument("--quick", action="store_true", help="small N, one repeat: a smoke run")
    p.add_argument("--workers", type=_ints, help="throughput/cost Workers (default 1,8,64,256)")
    p.add_argument("--n", type=int, help="tasks per drain (default 5000)")
    p.add_argument(
        "--repeats", type=int, help="raw/ours alternations (default 3; scale and scaleout 2)"
    )
    p.add_argument("--rate", type=float, default=100.0, help="latency pushes per second")
    p.add_argument("--samples", type=int, help="latency samples per consumer (default 1000)")
    p.add_argument("--rounds", type=int, default=2, help="latency alternations")
    p.add_argument("--idle-types", type=int, default=10)
    p.add_argument("--idle-seconds", type=float, help="default 10")
    p.add_argument("--types", type=_ints, help="scale: task type counts (default 1,10,50)")
    p.add_argument("--daemons", type=_ints, help="scaleout: daemons on one Redis (default 1,2,3)")
    p.add_argument("--daemon-workers", type=int, default=8, help="scaleout: Workers of each daemon")
    p.add_argument(
        "--daemon-cmd",
        default=DEFAULT_DAEMON_CMD,
        help="command run as the daemon; {config}, {python}, {twistd} are filled in "
        "(default: %(default)r)",
    )
    p.add_argument(
        "--standin",
        action="store_true",
        help=f"run the plain BLPOP spawner as the daemon ({STANDIN_DAEMON_CMD!r})",
    )
    p.add_argument(
        "--original",
        metavar="PATH",
        help="the original Go binary, run as a third column beside ours and the raw loop "
        "(without it the benchmark says so and compares with the raw loop only)",
    )
    p.add_argument("--results", default=report.RESULTS, help="directory for JSON and PNG")
    p.add_argument("--no-save", action="store_true", help="print only; write no results")
    p.add_argument(
        "--plot-to",
        metavar="PNG",
        help="also draw the cost figure (rate and CPU per 1000 tasks against Workers and "
        "types) here; make bench draws docs/bench-cost.png",
    )
    p.add_argument(
        "--plot-from",
        metavar="JSON",
        help="run nothing: draw the cost figure of a recorded run (with --plot-to)",
    )
    a = p.parse_args(argv)
    q = a.quick
    a.n = a.n or (1000 if q else 5000)
    a.samples = a.samples or (200 if q else 1000)
    a.idle_seconds = a.idle_seconds or (3.0 if q else 10.0)
    a.types = a.types or ([1, 10] if q else [1, 10, 50])
    a.daemons = a.daemons or [1, 2, 3]
    if a.plot_from and not a.plot_to:
        p.error("--plot-from needs --plot-to")
    if a.standin:
        a.daemon_cmd = STANDIN_DAEMON_CMD
    return a


def run_one(b: scenarios.Bench, name: str, a: argparse.Namespace, scn: dict[str, Any]) -> None:
    """Run one scenario into scn (cost reads throughput's runs, or makes its own)."""
    q = a.quick
    if name == "throughput":
        ws = a.workers or ([1, 8, 256] if q else [1, 8, 64, 256])
        scn[name] = scenarios.throughput(b, ws, a.n, a.repeats or (1 if q else 3))
    elif name == "cost":
        if "throughput" not in scn:
            scn["throughput"] = scenarios.throughput(b, a.workers or [8, 256], a.n, a.repeats or 1)
        scn[name] = scenarios.cost(scn["throughput"])
    elif name == "latency":
        scn[name] = scenarios.latency(b, a.rate, a.samples, a.rounds)
    elif name == "idle":
        scn[name] = scenarios.idle(b, a.idle_types, a.idle_seconds)
    elif name == "scale":
        scn[name] = scenarios.scale(
            b, a.types, a.n, a.repeats or (1 if q else 2), waves=2 if q else 8
        )
    elif name == "scaleout":
        scn[name] = scenarios.scaleout(
            b, a.daemons, a.n, a.daemon_workers, a.repeats or (1 if q else 2)
        )


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen scenarios; return the full result document."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t_start = time.monotonic()
    scn: dict[str, Any] = {}
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    wanted = SCENARIOS if a.scenario == "all" else (a.scenario,)
    with scenarios.Bench(a.daemon_cmd, original=a.original) as b:
        facts = machine(b)
        if a.original is None:
            b.log(f"original: {scenarios.NO_ORIGINAL}")
        for name in wanted:
            t0 = time.monotonic()
            b.log(f"{name} ...")
            if name == "cost" and "throughput" in errors:
                errors[name] = "needs the throughput runs, which failed"
                continue
            try:
                run_one(b, name, a, scn)
            except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as e:
                errors[name] = f"{type(e).__name__}: {e}"
                b.keep = True
                b.log(f"{name} FAILED: {errors[name]}")
            timings[name] = time.monotonic() - t0
            b.log(f"{name}: {timings[name]:.1f} s")
        notes, stops = b.notes, b.stops
    doc: dict[str, Any] = {
        "started": started,
        "duration_s": time.monotonic() - t_start,
        "machine": facts,
        "daemon_cmd": a.daemon_cmd,
        "original_cmd": b.original_cmd,
        "quick": a.quick,
        "timings_s": timings,
        "notes": notes,
        "errors": errors,
        "sigterm": {"exit_codes": [c for c, _ in stops], "seconds": [s for _, s in stops]},
        "scenarios": scn,
    }
    doc["single_core_ceilings"] = report.single_core_ceilings(scn)
    doc["targets"] = report.targets(doc)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write JSON and PNG."""
    a = parse(argv)
    if a.plot_from:
        with open(a.plot_from) as f:
            print(f"written: {report.plot_cost(json.load(f), a.plot_to)}")
        return 0
    doc = run(a)
    print(report.render(doc))
    if not a.no_save:
        path, png = report.write(doc, doc["started"].replace(":", ""), a.results)
        print(f"\nwritten: {path}, {os.path.join(a.results, 'latest.json')}, {png}")
    if a.plot_to:
        print(f"written: {report.plot_cost(doc, a.plot_to)}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
