"""
Failover measurement: what a Sentinel failover costs the daemons.

``python -m bench.failover [--failovers 10] [--entries 2000] [--daemons 2] [--workers 4]
[--how kill|sentinel] [--wait-replicas 0] [--min-replicas-to-write 0] [--stall 60]
[--json out.json]``

Each round starts a master, a replica and three sentinels on loopback ports
(the suite's own harness, ``tests.helpers.SentinelGroup``), pushes the
entries and waits until the replica has them (``WAIT``), starts the daemons
(``RedisSentinels``), lets them drain a third of the queue, then SIGKILLs
the master (``--how kill``) or asks the sentinels for a failover while it
runs (``--how sentinel``).  Once everything has drained from the new master
it counts, from the script's record file, the entries that never ran (lost)
and the runs beyond the first (repeated), and how long no task ran around
the failover (the pause).

The drain has no fixed limit: with ``RedisWaitReplicas`` on and no replica
left, each take waits a second, and 1,300 entries take minutes.  A round
fails only when no task has ended for ``--stall`` seconds.

The exit status is non-zero when an entry is lost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.helpers import (
    DaemonProcess,
    RedisReplyError,
    RedisServer,
    SentinelGroup,
    daemon_argv,
    daemon_env,
    wait_for,
    write_config,
    write_script,
)

QUEUE_KEY = "gfailover"


@dataclass(frozen=True)
class Round:
    """One failover: what was lost and repeated, how long no task ended, how long it all took."""

    ran_before: int
    lost: int
    repeated: int
    pause: float
    drain: float


def wait_for_progress(
    predicate: Callable[[], bool],
    progress: Callable[[], int],
    stall: float,
    interval: float = 0.1,
    message: Callable[[], str] = lambda: "condition not met",
) -> None:
    """
    Poll C{predicate} until it is true, for as long as C{progress} grows.

    A drain's length depends on the set-up (a second per take while
    C{WAIT} times out), so it is bounded by the longest time without
    progress rather than by a total.

    @param progress: a count that grows while the work goes on.
    @param stall: how long C{progress} may stay the same before this fails.
    """
    seen = progress()
    last_change = time.monotonic()
    while not predicate():
        now = time.monotonic()
        current = progress()
        if current != seen:
            seen, last_change = current, now
        elif now - last_change >= stall:
            raise AssertionError(f"no progress for {stall:g}s: {message()}")
        time.sleep(interval)


def run_round(directory: Path, opts: argparse.Namespace) -> Round:
    count = iter(range(1_000_000))

    def folder() -> Path:
        path = directory / f"redis-{next(count)}"
        path.mkdir()
        return path

    group = SentinelGroup(lambda **config: RedisServer(folder(), **config).start(), folder)
    daemons: list[DaemonProcess] = []
    try:
        if opts.min_replicas_to_write:
            # The master only: the replica, once promoted, has no replica of
            # its own until the old master rejoins, and would refuse writes.
            group.master.cli("CONFIG", "SET", "min-replicas-to-write", opts.min_replicas_to_write)
        record = directory / "ran"
        script = write_script(directory, "record.sh", f'echo "$1 $(date +%s.%N)" >> {record}')
        config = write_config(
            directory,
            RedisSentinels=group.addresses,
            RedisSentinelMaster=group.name,
            RedisQueueKey=QUEUE_KEY,
            Tasks=[{"Type": "record", "Script": str(script), "Workers": opts.workers}],
            InstanceTimeout=3,
            RedisWaitReplicas=opts.wait_replicas,
        )
        names = [f"e{i}" for i in range(opts.entries)]
        payloads = [json.dumps({"Args": [name]}) for name in names]
        group.master.cli("RPUSH", f"{QUEUE_KEY}:record", *payloads)
        group.master.cli("WAIT", 1, 5000)

        def runs() -> list[tuple[str, float]]:
            lines = record.read_text().splitlines() if record.exists() else []
            return [(name, float(at)) for name, at in (line.split() for line in lines)]

        for n in range(opts.daemons):
            argv, env = daemon_argv(config, (), "twistd")
            log = directory / f"daemon-{n}.log"
            daemons.append(DaemonProcess(argv, cwd=directory, env=daemon_env(env), log_path=log))
        wait_for(lambda: len(runs()) >= opts.entries // 3, 60, message="a third drained")
        failed_at = time.time()
        if opts.how == "kill":
            group.master.kill()
        else:
            group.sentinels[0].cli("SENTINEL", "FAILOVER", group.name)
        ran_before = len(runs())

        def drained() -> bool:
            try:
                queue = group.replica.cli("LLEN", f"{QUEUE_KEY}:record")
                inflight = group.replica.cli("KEYS", f"{QUEUE_KEY}:record:inflight:*")
            except (OSError, RedisReplyError):
                # Promoting the replica closes its clients, this one included.
                return False
            return len({name for name, _ in runs()}) == opts.entries and not queue and not inflight

        def stuck() -> str:
            missing = opts.entries - len({name for name, _ in runs()})
            logs = "\n".join(d.log_text()[-3000:] for d in daemons)
            return f"everything to drain from the new master: {missing} never ran\n{logs}"

        wait_for_progress(drained, lambda: len(runs()), opts.stall, message=stuck)
        drain = time.time() - failed_at
        done = runs()
        counts = Counter(name for name, _ in done)
        # The longest time without a task ending, from the last one before the failover.
        times = sorted(at for _, at in done)
        around = [at for at in times if at > failed_at]
        before = [at for at in times if at <= failed_at]
        around[:0] = before[-1:]
        pause = max((b - a for a, b in zip(around, around[1:], strict=False)), default=0.0)
        return Round(
            ran_before=ran_before,
            lost=sum(1 for name in names if not counts[name]),
            repeated=sum(c - 1 for c in counts.values()),
            pause=pause,
            drain=drain,
        )
    finally:
        for daemon in daemons:
            daemon.kill_session()
        group.kill()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--failovers", type=int, default=10)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--daemons", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--how", choices=("kill", "sentinel"), default="kill")
    parser.add_argument(
        "--wait-replicas", type=int, default=0, help="the daemons' RedisWaitReplicas"
    )
    parser.add_argument(
        "--min-replicas-to-write",
        type=int,
        default=0,
        help="the master's min-replicas-to-write (Redis's own guard against a stale master)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="seconds without a task ending before a round's drain counts as stuck",
    )
    parser.add_argument("--json", help="write every round's figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    rounds = []
    started = time.monotonic()
    for n in range(opts.failovers):
        with tempfile.TemporaryDirectory(prefix="goophry-failover-") as directory:
            result = run_round(Path(directory), opts)
        rounds.append(result)
        print(
            f"failover {n + 1}/{opts.failovers} ({opts.how}): ran before={result.ran_before} "
            f"lost={result.lost} repeated={result.repeated} pause={result.pause:.2f}s "
            f"drained {result.drain:.1f}s after",
            flush=True,
        )
    lost = sum(r.lost for r in rounds)
    repeated = [r.repeated for r in rounds]
    pauses = [r.pause for r in rounds]
    drains = [r.drain for r in rounds]
    min_replicas = (
        f", min-replicas-to-write={opts.min_replicas_to_write}"
        if opts.min_replicas_to_write
        else ""
    )
    print(
        f"{len(rounds)} failovers ({opts.how}), {opts.entries} entries each, {opts.daemons} "
        f"daemons x {opts.workers} workers, RedisWaitReplicas={opts.wait_replicas}"
        f"{min_replicas}: "
        f"lost={lost} repeated total={sum(repeated)} "
        f"(max {max(repeated)} in one) pause median={statistics.median(pauses):.2f}s "
        f"max={max(pauses):.2f}s drain median={statistics.median(drains):.1f}s "
        f"max={max(drains):.1f}s, {time.monotonic() - started:.0f}s in all"
    )
    if opts.json:
        data = {"options": vars(opts), "rounds": [asdict(r) for r in rounds]}
        Path(opts.json).write_text(json.dumps(data, indent=2) + "\n")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
