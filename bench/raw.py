"""The raw reference: a plain posix_spawn + waitpid loop at a fixed concurrency.

It keeps C{concurrency} children alive until C{n} have run, reaping with
os.waitpid(-1). Run as C{python -m bench.raw --n 5000 --concurrency 8} it prints
one JSON object, so the harness runs it in a fresh process like the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence


def run_raw(n: int, concurrency: int, argv: Sequence[str]) -> dict[str, float]:
    """Run n children, at most C{concurrency} at once; return rate and CPU figures."""
    env = os.environ
    path = argv[0]
    args = list(argv)
    started = done = failed = 0
    t0 = os.times()
    w0 = time.monotonic()
    while started < min(concurrency, n):
        os.posix_spawn(path, args, env)
        started += 1
    while done < n:
        _, status = os.waitpid(-1, 0)
        done += 1
        failed += status != 0
        if started < n:
            os.posix_spawn(path, args, env)
            started += 1
    wall = time.monotonic() - w0
    t1 = os.times()
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    child_cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    return {
        "n": n,
        "concurrency": concurrency,
        "wall_s": wall,
        "rate": n / wall,
        "failed": failed,
        "cpu_s": cpu,
        "cpu_per_1000_s": cpu * 1000 / n,
        "child_cpu_per_task_ms": child_cpu * 1000 / n,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the figures of one run as JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("command", nargs="*", default=["/bin/true"], help="argv of each child")
    a = p.parse_args(argv)
    json.dump(run_raw(a.n, max(1, a.concurrency), a.command), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
