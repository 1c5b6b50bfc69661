"""
Scaling out: what C{RedisWaitReplicas} costs, and what several daemons on one Redis give.

``python -m bench.scaleout wait [--entries 5000] [--workers 8] [--repeats 3]``
    A master and a replica on loopback ports; one daemon drains the
    entries (C{/bin/true}) with C{RedisWaitReplicas} 0 and 1 in turn.

``python -m bench.scaleout daemons [--entries 5000] [--workers 8] [--daemons 1,2,3]``
    One Redis; 1, 2, 3 daemons drain the same queue at once.

Each drain reports the total rate, each daemon's share (its C{Succeeded}),
the Redis commands per task (C{INFO commandstats}, the harness's own pushes
left out), Redis's CPU per task (C{INFO cpu}, user + system), the daemons'
own CPU per 1000 tasks and how many of the machine's cores were busy.  A
warm-up drain of a tenth of the entries comes first, so that the figures
leave out the daemons' start.  C{python -m bench scaleout} runs the second
form inside the benchmark, and L{summarise} reads the ceiling from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from goophry_tx.keys import Keys
from tests.helpers import (
    DaemonProcess,
    RedisServer,
    daemon_argv,
    daemon_env,
    free_port,
    get_stats,
    stats_total,
    wait_for,
    write_config,
)

QUEUE_KEY = "gscale"
TYPE = "t"
TRUE = "/bin/true"
#: Commands the harness (and a replica's acknowledgements) send, left out of the per-task count.
NOT_THE_DAEMONS = ("rpush", "info", "config", "replconf", "psync")


@dataclass(frozen=True)
class Drain:
    """One drain: its rate, how it was shared, and what it cost Redis."""

    daemons: int
    wait_replicas: int
    entries: int
    seconds: float
    rate: float
    shares: list[float]
    commands_per_task: float
    redis_cpu_us_per_task: float
    waits_per_task: float
    #: The daemons' own CPU (not their scripts'), summed, per 1000 tasks.
    daemon_cpu_per_1000_s: float
    #: Cores the whole machine kept busy during the drain (of C{os.cpu_count()}).
    busy_cores: float
    #: Of those, the cores that processes other than Redis, the daemons, their scripts
    #: and the harness took: other work on a shared machine.
    other_load_cores: float


@dataclass(frozen=True)
class RunningDaemon:
    """One daemon of a scale-out drain: where its stats answer, and its process."""

    address: str
    process: psutil.Process

    def cpu_s(self) -> float:
        """Its own CPU seconds so far, all threads (its reaped scripts left out)."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def with_scripts_cpu_s(self) -> float:
        """Its CPU seconds and those of the scripts it has reaped."""
        times = self.process.cpu_times()
        return self.cpu_s() + float(times.children_user + times.children_system)


def _harness_cpu_s() -> float:
    """This process's CPU seconds (it polls the stats and pushes)."""
    times = os.times()
    return times.user + times.system


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot, over all cores."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


def _redis_cpu(server: RedisServer) -> float:
    with server.connect() as connection:
        info = connection.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _commandstats(server: RedisServer) -> dict[str, int]:
    with server.connect() as connection:
        return connection.commandstats()


@contextmanager
def running_daemons(
    directory: Path, server: RedisServer, count: int, workers: int, wait_replicas: int
) -> Iterator[list[RunningDaemon]]:
    """C{count} daemons draining one queue of C{server}, started and answering their stats."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    daemons: list[DaemonProcess] = []
    try:
        for n, address in enumerate(addresses):
            config = write_config(
                directory,
                filename=f"goophry-{n}.json",
                RedisAddress=server.address,
                RedisQueueKey=QUEUE_KEY,
                RedisWaitReplicas=wait_replicas,
                Tasks=[{"Type": TYPE, "Script": TRUE, "Workers": workers}],
                StatsInterface=address,
                StatsPattern="/",
            )
            # No pidfile: the daemons share a directory, and twistd refuses to start
            # beside a live pidfile.
            argv, env = daemon_argv(config, (), "twistd", ("--pidfile=",))
            log = directory / f"daemon-{n}.log"
            daemons.append(DaemonProcess(argv, cwd=directory, env=daemon_env(env), log_path=log))
        for address, daemon in zip(addresses, daemons, strict=True):
            wait_for(
                lambda a=address: get_stats(a) is not None,  # type: ignore[misc]
                30,
                message=lambda d=daemon: f"the daemon's stats:\n{d.log_text()}",  # type: ignore[misc]
            )
        yield [
            RunningDaemon(address, psutil.Process(daemon.pid))
            for address, daemon in zip(addresses, daemons, strict=True)
        ]
    finally:
        for daemon in daemons:
            daemon.stop()
        server.cli("FLUSHALL")


def drain(
    server: RedisServer, daemons: Sequence[RunningDaemon], entries: int, wait_replicas: int
) -> Drain:
    """Push C{entries} at once and time the daemons until all have succeeded."""
    queue = Keys(QUEUE_KEY).queue(TYPE)

    def succeeded() -> list[int]:
        docs = [get_stats(daemon.address) for daemon in daemons]
        return [stats_total(doc, "Succeeded") if doc else 0 for doc in docs]

    before = succeeded()
    server.cli("CONFIG", "RESETSTAT")
    cpu0 = _redis_cpu(server)
    daemons_cpu0 = sum(daemon.cpu_s() for daemon in daemons)
    ours0 = sum(daemon.with_scripts_cpu_s() for daemon in daemons) + _harness_cpu_s()
    busy0 = _busy_s()
    t0 = time.monotonic()
    for start in range(0, entries, 1000):
        server.cli("RPUSH", queue, *[b'{"Args":[]}'] * min(1000, entries - start))
    wait_for(
        lambda: sum(succeeded()) - sum(before) >= entries,
        max(60.0, entries / 50),
        interval=0.02,
        message=lambda: f"{sum(succeeded()) - sum(before)} of {entries} succeeded",
    )
    seconds = time.monotonic() - t0
    busy = _busy_s() - busy0
    daemons_cpu = sum(daemon.cpu_s() for daemon in daemons) - daemons_cpu0
    ours = sum(daemon.with_scripts_cpu_s() for daemon in daemons) + _harness_cpu_s() - ours0
    cpu = _redis_cpu(server) - cpu0
    stats = _commandstats(server)
    theirs = sum(calls for name, calls in stats.items() if name not in NOT_THE_DAEMONS)
    after = succeeded()
    return Drain(
        daemons=len(daemons),
        wait_replicas=wait_replicas,
        entries=entries,
        seconds=seconds,
        rate=entries / seconds,
        shares=[(a - b) / entries for a, b in zip(after, before, strict=True)],
        commands_per_task=theirs / entries,
        redis_cpu_us_per_task=cpu * 1e6 / entries,
        waits_per_task=stats.get("wait", 0) / entries,
        daemon_cpu_per_1000_s=daemons_cpu * 1000 / entries,
        busy_cores=busy / seconds,
        other_load_cores=max(0.0, busy - ours - cpu) / seconds,
    )


def describe(result: Drain) -> str:
    """One line of a drain's figures."""
    shares = " ".join(f"{share:.0%}" for share in result.shares)
    return (
        f"daemons={result.daemons} RedisWaitReplicas={result.wait_replicas}: "
        f"{result.rate:.0f} tasks/s ({result.entries} in {result.seconds:.1f}s), shares {shares}, "
        f"{result.commands_per_task:.2f} commands/task ({result.waits_per_task:.2f} WAIT), "
        f"Redis CPU {result.redis_cpu_us_per_task:.0f} us/task, daemons' CPU "
        f"{result.daemon_cpu_per_1000_s:.3f} s/1000 tasks, {result.busy_cores:.2f} cores busy "
        f"({result.other_load_cores:.2f} by other work)"
    )


def measure(
    directory: Path,
    server: RedisServer,
    daemons: int,
    wait_replicas: int,
    entries: int,
    workers: int,
    log: Callable[[str], None],
) -> Drain:
    """Start the daemons, warm them up, time one drain."""
    with running_daemons(directory, server, daemons, workers, wait_replicas) as running:
        drain(server, running, max(1, entries // 10), wait_replicas)
        result = drain(server, running, entries, wait_replicas)
    log(describe(result))
    return result


def _say(line: str) -> None:
    print(line, flush=True)


def wait_cost(directory: Path, opts: argparse.Namespace) -> list[Drain]:
    """RedisWaitReplicas 0 and 1 in turn, against a master with one replica."""
    master = RedisServer(directory / "master").start()
    replica = RedisServer(directory / "replica", replicaof=f"{master.host} {master.port}").start()
    try:
        wait_for(
            lambda: b"master_link_status:up" in bytes(replica.cli("INFO", "replication")),  # type: ignore[arg-type]
            20,
            message="the replica in sync",
        )
        results = []
        for _ in range(opts.repeats):
            for wait_replicas in (0, 1):
                results.append(
                    measure(directory, master, 1, wait_replicas, opts.entries, opts.workers, _say)
                )
        for wait_replicas in (0, 1):
            rates = [r.rate for r in results if r.wait_replicas == wait_replicas]
            print(
                f"RedisWaitReplicas={wait_replicas}: median {statistics.median(rates):.0f} tasks/s"
            )
        return results
    finally:
        replica.kill()
        master.kill()


def daemon_counts(
    directory: Path,
    server: RedisServer,
    counts: Sequence[int],
    entries: int,
    workers: int,
    repeats: int,
    log: Callable[[str], None],
) -> list[Drain]:
    """Each count of daemons on C{server} in turn, C{repeats} times over (alternating)."""
    return [
        measure(directory, server, daemons, 0, entries, workers, log)
        for _ in range(repeats)
        for daemons in counts
    ]


def summarise(drains: Sequence[Drain], cores: int) -> dict[str, Any]:
    """Medians per count of daemons, where the rate stops growing, and what one Redis carries.

    What one Redis carries is read on paper: one core of Redis at the measured CPU
    per task is C{1e6 / us_per_task} tasks/s; divided by one daemon's rate it is
    the daemons, and by the best total rate of this machine the hosts like it.
    A daemon's rate on a shared machine is whatever the other work left it, so
    the daemons are also counted at their single-core ceiling (1000 over their
    CPU seconds per 1000 tasks), which the other work moves far less.
    """
    by_daemons: dict[str, Any] = {}
    for count in sorted({d.daemons for d in drains}):
        mine = [d for d in drains if d.daemons == count]
        by_daemons[str(count)] = {
            "rate": statistics.median(d.rate for d in mine),
            "rates": [d.rate for d in mine],
            # 1.0: every daemon took an even share; 0.5: the least busy took half of it.
            "fairness": statistics.median(min(d.shares) * count for d in mine),
            "shares": [d.shares for d in mine],
            "commands_per_task": statistics.median(d.commands_per_task for d in mine),
            "redis_cpu_us_per_task": statistics.median(d.redis_cpu_us_per_task for d in mine),
            "daemon_cpu_per_1000_s": statistics.median(d.daemon_cpu_per_1000_s for d in mine),
            "busy_cores": statistics.median(d.busy_cores for d in mine),
            "other_load_cores": max(d.other_load_cores for d in mine),
        }
    best = max(by_daemons, key=lambda count: by_daemons[count]["rate"])
    top = by_daemons[best]
    redis_us = statistics.median(d.redis_cpu_us_per_task for d in drains)
    commands = statistics.median(d.commands_per_task for d in drains)
    redis_rate = 1e6 / redis_us
    one = by_daemons.get("1", by_daemons[min(by_daemons, key=int)])
    daemon_ceiling = 1000 / statistics.median(d.daemon_cpu_per_1000_s for d in drains)
    return {
        "entries": drains[0].entries,
        "by_daemons": by_daemons,
        "ceiling": {
            "daemons": int(best),
            "rate": top["rate"],
            "busy_cores": top["busy_cores"],
            "cores": cores,
        },
        "redis": {
            "cpu_us_per_task": redis_us,
            "commands_per_task": commands,
            "cpu_us_per_command": redis_us / commands,
            "commands_per_s_per_core": 1e6 * commands / redis_us,
            "tasks_per_s_per_core": redis_rate,
            "daemons_per_core": redis_rate / one["rate"],
            "daemon_single_core_ceiling": daemon_ceiling,
            "daemons_per_core_at_their_ceiling": redis_rate / daemon_ceiling,
            "hosts_per_core": redis_rate / top["rate"],
        },
        "drains": [asdict(d) for d in drains],
    }


def describe_summary(summary: dict[str, Any]) -> list[str]:
    """The ceiling and what one Redis carries, in words."""
    c, r = summary["ceiling"], summary["redis"]
    return [
        f"ceiling on this machine: {c['rate']:.0f} tasks/s with {c['daemons']} daemon(s), "
        f"{c['busy_cores']:.2f} of {c['cores']} cores busy",
        f"one Redis core, on paper: {r['commands_per_task']:.2f} commands and "
        f"{r['cpu_us_per_task']:.0f} us per task ({r['cpu_us_per_command']:.0f} us per command) "
        f"is {r['tasks_per_s_per_core']:.0f} tasks/s: {r['daemons_per_core']:.0f} daemons at one "
        f"daemon's rate here, {r['daemons_per_core_at_their_ceiling']:.0f} at their single-core "
        f"ceiling ({r['daemon_single_core_ceiling']:.0f} tasks/s), "
        f"{r['hosts_per_core']:.0f} hosts like this one at its ceiling",
    ]


def many_daemons(directory: Path, opts: argparse.Namespace) -> list[Drain]:
    """1, 2, 3... daemons on one Redis, draining one queue."""
    server = RedisServer(directory / "redis").start()
    try:
        drains = daemon_counts(
            directory, server, opts.daemons, opts.entries, opts.workers, opts.repeats, _say
        )
    finally:
        server.kill()
    for line in describe_summary(summarise(drains, os.cpu_count() or 1)):
        print(line)
    return drains


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("what", choices=("wait", "daemons"))
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--daemons", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2, 3]
    )
    parser.add_argument("--json", help="write every drain's figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="goophry-scaleout-") as name:
        directory = Path(name)
        for sub in ("master", "replica", "redis"):
            (directory / sub).mkdir()
        run = wait_cost if opts.what == "wait" else many_daemons
        results: list[Any] = run(directory, opts)
    if opts.json:
        data = {"options": vars(opts), "drains": [asdict(r) for r in results]}
        Path(opts.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
