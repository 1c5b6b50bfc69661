"""
Reliability soak: every entry pushed is accounted for, across kill -9s.

C{python -m bench.soak [--entries 20000] [--seed 1] [--duration-limit 600] [--json out.json]}

It starts its own redis-server (AOF, C{appendfsync always}) on a free port,
writes a config with three task types (C{ok}, C{fail}, C{slow}) whose
scripts append their first argument to a record file, pushes N entries with
unique ids in batches while the daemon runs, and, on a seeded random
schedule, kill -9s the daemon (started again after a short pause) and
kill -9s Redis (started again on the same port and directory, so the AOF
reloads).  Then it lets everything drain and checks that every entry either
ran (its id is in a record file) or is in a failed list.

The producer retries a batch whose reply it did not get, as a careful
producer would; each batch also bumps a counter in the same MULTI/EXEC, so
the soak knows how often a batch really landed, and tells the duplicate runs
the producer caused from those the daemon caused.

The exit status is non-zero when an entry is lost (or never drained).
The processes and the Redis client are the test suite's harness (tests/helpers.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.soak.run import Options, Result, run_soak
from bench.soak.workload import TYPES


def summary_line(res: Result) -> str:
    verdict = "OK" if res.ok else "FAIL"
    return (
        f"soak {verdict}: entries={res.entries} daemon_kills={res.daemon_kills} "
        f"redis_kills={res.redis_kills} lost={res.lost} undrained={res.undrained} "
        f"duplicates={res.duplicates} producer_duplicates={res.producer_duplicates} "
        f"failed_list_duplicates={res.failed_list_duplicates} elapsed={res.elapsed:.1f}s"
    )


def table(res: Result) -> str:
    rows = [
        ("entries", res.entries),
        (
            "  ok / fail / slow / invalid",
            " / ".join(str(res.kinds.get(k, 0)) for k in ("ok", "fail", "slow", "invalid")),
        ),
        ("batches (pushed twice)", f"{res.batches} ({res.batches_pushed_twice})"),
        ("producer retries", res.producer_retries),
        ("daemon kill -9s", res.daemon_kills),
        ("redis kill -9s", res.redis_kills),
        ("daemon unexpected exits", res.daemon_unexpected_exits),
        ("script runs ok / fail / slow", " / ".join(str(res.runs.get(t, 0)) for t in TYPES)),
        ("lost", res.lost),
        ("undrained / never pushed", f"{res.undrained} / {res.unpushed}"),
        ("duplicates (entries / extra runs)", f"{res.duplicates} / {res.duplicate_runs}"),
        ("producer duplicates", res.producer_duplicates),
        ("failed-list duplicates", res.failed_list_duplicates),
        ("ok/slow entries in a failed list", res.abandoned),
        ("unknown records", res.unknown_records),
        *((f"log: {name.replace('_', ' ')}", n) for name, n in res.daemon_log.items()),
        ("drained", f"{res.drained} ({res.drain_seconds:.1f}s)"),
        ("elapsed", f"{res.elapsed:.1f}s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n")[1]
    )
    p.add_argument("--entries", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration-limit", type=float, default=600.0, help="hard bound, seconds")
    p.add_argument("--daemon-kills", type=int, default=8)
    p.add_argument("--redis-kills", type=int, default=5)
    p.add_argument("--chaos-seconds", type=float, default=None, help="window of the kills")
    p.add_argument("--push-seconds", type=float, default=None, help="time to push everything")
    p.add_argument("--batch", type=int, default=100, help="entries per producer batch")
    p.add_argument("--workers", default="8,4,4", help="Workers of ok,fail,slow")
    p.add_argument("-v", "--verbose", action="store_true", help="run the daemon with -v")
    p.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the workdir even when all is well")
    p.add_argument("--json", default=None, help="write the figures to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--stall-seconds",
        type=float,
        default=30.0,
        help="give up draining when in-flight entries sit this long with nothing running",
    )
    ns = p.parse_args(argv)
    ok, fail, slow = (int(x) for x in ns.workers.split(","))
    return Options(
        entries=ns.entries,
        seed=ns.seed,
        duration_limit=ns.duration_limit,
        daemon_kills=ns.daemon_kills,
        redis_kills=ns.redis_kills,
        chaos_seconds=ns.chaos_seconds,
        push_seconds=ns.push_seconds,
        batch=ns.batch,
        workers_ok=ok,
        workers_fail=fail,
        workers_slow=slow,
        verbose=ns.verbose,
        workdir=ns.workdir,
        keep=ns.keep,
        json=ns.json,
        quiet=ns.quiet,
        stall_seconds=ns.stall_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    res = run_soak(opts)
    print(summary_line(res))
    print(table(res))
    if res.workdir:
        print(f"  workdir kept: {res.workdir}")
    dropped = res.daemon_log.get("outcome_writes_dropped", 0)
    skipped = res.daemon_log.get("reconcile_skipped", 0)
    if dropped or skipped:
        print(
            f"  warning: the daemon gave up {dropped} outcome writes and {skipped} in-flight "
            "checks on an error reply (e.g. LOADING after a Redis restart); those entries stay "
            "in a live instance's in-flight list until that daemon dies"
        )
    if opts.json:
        data = asdict(res)
        data["ok"] = res.ok
        data["options"] = asdict(opts)
        Path(opts.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0 if res.ok else 1
