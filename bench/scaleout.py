"""
Scaling out: what C{RedisWaitReplicas} costs, and what several daemons on one Redis give.

``python -m bench.scaleout wait [--entries 5000] [--workers 8] [--repeats 3]``
    A master and a replica on loopback ports; one daemon drains the
    entries (C{/bin/true}) with C{RedisWaitReplicas} 0 and 1 in turn.

``python -m bench.scaleout daemons [--entries 5000] [--workers 8] [--daemons 1,2,3]``
    One Redis; 1, 2, 3 daemons drain the same queue at once.

Each drain reports the total rate, each daemon's share (its C{Succeeded}),
the Redis commands per task (C{INFO commandstats}, the harness's own pushes
left out) and Redis's CPU per task (C{INFO cpu}, user + system).  A warm-up
drain of a tenth of the entries comes first, so that the figures leave out
the daemons' start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
) -> Iterator[list[str]]:
    """C{count} daemons draining one queue of C{server}; yields their stats addresses."""
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
            argv, env = daemon_argv(config, (), "twistd")
            log = directory / f"daemon-{n}.log"
            daemons.append(DaemonProcess(argv, cwd=directory, env=daemon_env(env), log_path=log))
        for address, daemon in zip(addresses, daemons, strict=True):
            wait_for(
                lambda a=address: get_stats(a) is not None,  # type: ignore[misc]
                30,
                message=lambda d=daemon: f"the daemon's stats:\n{d.log_text()}",  # type: ignore[misc]
            )
        yield addresses
    finally:
        for daemon in daemons:
            daemon.stop()
        server.cli("FLUSHALL")


def drain(server: RedisServer, addresses: Sequence[str], entries: int, wait_replicas: int) -> Drain:
    """Push C{entries} at once and time the daemons until all have succeeded."""
    queue = Keys(QUEUE_KEY).queue(TYPE)

    def succeeded() -> list[int]:
        docs = [get_stats(address) for address in addresses]
        return [stats_total(doc, "Succeeded") if doc else 0 for doc in docs]

    before = succeeded()
    server.cli("CONFIG", "RESETSTAT")
    cpu0 = _redis_cpu(server)
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
    cpu = _redis_cpu(server) - cpu0
    stats = _commandstats(server)
    theirs = sum(calls for name, calls in stats.items() if name not in NOT_THE_DAEMONS)
    after = succeeded()
    return Drain(
        daemons=len(addresses),
        wait_replicas=wait_replicas,
        entries=entries,
        seconds=seconds,
        rate=entries / seconds,
        shares=[(a - b) / entries for a, b in zip(after, before, strict=True)],
        commands_per_task=theirs / entries,
        redis_cpu_us_per_task=cpu * 1e6 / entries,
        waits_per_task=stats.get("wait", 0) / entries,
    )


def _print(result: Drain) -> None:
    shares = " ".join(f"{share:.0%}" for share in result.shares)
    print(
        f"daemons={result.daemons} RedisWaitReplicas={result.wait_replicas}: "
        f"{result.rate:.0f} tasks/s ({result.entries} in {result.seconds:.1f}s), shares {shares}, "
        f"{result.commands_per_task:.2f} commands/task ({result.waits_per_task:.2f} WAIT), "
        f"Redis CPU {result.redis_cpu_us_per_task:.0f} us/task",
        flush=True,
    )


def measure(
    directory: Path, server: RedisServer, daemons: int, wait_replicas: int, opts: argparse.Namespace
) -> Drain:
    """Start the daemons, warm them up, time one drain."""
    with running_daemons(directory, server, daemons, opts.workers, wait_replicas) as addresses:
        drain(server, addresses, max(1, opts.entries // 10), wait_replicas)
        result = drain(server, addresses, opts.entries, wait_replicas)
    _print(result)
    return result


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
                results.append(measure(directory, master, 1, wait_replicas, opts))
        for wait_replicas in (0, 1):
            rates = [r.rate for r in results if r.wait_replicas == wait_replicas]
            print(
                f"RedisWaitReplicas={wait_replicas}: median {statistics.median(rates):.0f} tasks/s"
            )
        return results
    finally:
        replica.kill()
        master.kill()


def many_daemons(directory: Path, opts: argparse.Namespace) -> list[Drain]:
    """1, 2, 3... daemons on one Redis, draining one queue."""
    server = RedisServer(directory / "redis").start()
    try:
        return [
            measure(directory, server, daemons, 0, opts)
            for _ in range(opts.repeats)
            for daemons in opts.daemons
        ]
    finally:
        server.kill()


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
