"""The benchmark scenarios: each measures the daemon beside a reference, in the same run."""

from __future__ import annotations

import collections
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.daemon import NO_STATS, STANDIN_DAEMON_CMD, Counts, Daemon, TaskSpec
from bench.inotify import CreationWatcher
from bench.scaleout import daemon_counts, describe_summary, summarise
from goophry_tx.keys import Keys
from tests.helpers import RedisConnection, RedisServer, encode_command

TRUE = "/bin/true"
TOUCH = "/usr/bin/touch"
SLEEP = "/bin/sleep"
#: Redis commands that block server-side waiting for an entry.
BLOCKING = {"blpop", "brpop", "blmove", "brpoplpush", "blmpop", "bzpopmin", "bzpopmax"}
POLL_S = 0.02
TAIL_POLL_S = 0.01
METHOD = (
    "daemon started, warmed up and idle (blocked on Redis); N entries pushed with pipelined "
    "RPUSH (1000 per command); timed from just before the push until the queue is empty "
    "(LLEN polled every 20 ms), the stats show TaskCount (tasks started) grown by N and the "
    "daemon has no child left (every 10 ms): the one rule the original's stats allow, "
    "applied to both daemons (without stats: queue empty and no child). Raw reference: a "
    "fresh `python -m bench.raw` process, timed inside. They alternate (original, ours, raw, "
    "...), each daemon on a queue of its own; figures are medians."
)
#: The original's command line (its path is filled in first).
ORIGINAL_CMD = "{original} -c {{config}}"
#: Printed and recorded when the benchmark runs without the original.
NO_ORIGINAL = (
    "not given (--original PATH, make bench ORIGINAL=PATH): no comparison with the Go "
    "daemon in this run"
)


def median(values: Sequence[float]) -> float:
    """Median, or NaN when there is nothing."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


class CommandMeter:
    """Commands other clients sent between C{start} and C{stop} (ours subtracted)."""

    def __init__(self, client: RedisConnection) -> None:
        self.client = client
        self.before: dict[str, int] = {}
        self.sent_before: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        """Take the first snapshot."""
        self.sent_before = collections.Counter(self.client.sent)
        self.before = self.client.commandstats()

    def stop(self) -> dict[str, int]:
        """Per-command calls by others since C{start} (zero counts dropped)."""
        mine = collections.Counter(self.client.sent)
        mine.subtract(self.sent_before)
        after = self.client.commandstats()
        delta = {k: v - self.before.get(k, 0) - mine.get(k, 0) for k, v in after.items()}
        return {k: v for k, v in sorted(delta.items()) if v}


class RoundTripMeter:
    """
    The commands clients sent between C{start} and C{stop}, by name, read
    from C{MONITOR}: what a Lua script calls inside Redis is shown there as
    coming from C{lua} and is not counted, so a script is one command, as
    it is one round trip (C{INFO commandstats} counts its inner calls too).
    """

    #: Sent by the meter to mark the end of its window.
    MARK = "goophry-bench-round-trips-end"

    def __init__(self, client: RedisConnection, port: int) -> None:
        self.client = client
        self.port = port
        self.monitor: RedisConnection | None = None

    def start(self) -> None:
        self.monitor = RedisConnection("127.0.0.1", self.port)
        self.monitor.call("MONITOR")

    def stop(self) -> dict[str, int]:
        """Per-command counts since C{start} (the window ends at the mark)."""
        assert self.monitor is not None
        self.client.call("ECHO", self.MARK)
        counts: collections.Counter[str] = collections.Counter()
        try:
            while True:
                line = self.monitor.read()
                text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
                # 1733150000.123456 [0 127.0.0.1:54321] "EVAL" "..."
                source, _, rest = text.partition("] ")
                name = rest.split(" ", 1)[0].strip('"').lower()
                if name == "echo" and self.MARK in rest:
                    break
                if not source.endswith(" lua"):
                    counts[name] += 1
        finally:
            self.monitor.close()
        return dict(sorted(counts.items()))


class DaemonExited(RuntimeError):
    """The daemon under test ended while a drain was being timed."""


def _check_alive(d: Daemon) -> None:
    """Raise L{DaemonExited} if the daemon has ended (the original crashes at times)."""
    if d.process is not None and not d.process.running():
        raise DaemonExited(
            f"daemon exited with {d.process.proc.returncode} during a drain: {d.log_tail(300)!r}"
        )


@dataclass
class Bench:
    """What every scenario shares: the private Redis, the daemon command, options."""

    daemon_cmd: str
    #: The original Go binary's absolute path, run beside ours when given.
    original: str | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="goophry-bench-"))
    redis: RedisServer | None = None
    client: RedisConnection | None = None
    notes: list[str] = field(default_factory=list)
    #: Keep workdir (Redis and daemon logs) at exit, e.g. after an error.
    keep: bool = False
    #: (exit code, seconds to exit) of each daemon stopped with SIGTERM.
    stops: list[tuple[int | None, float]] = field(default_factory=list)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)

    def __enter__(self) -> Bench:
        self.redis = RedisServer(Path(self.workdir), maxclients="2000").start()
        self.client = self.redis.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client:
            self.client.close()
        if self.redis:
            self.redis.stop()
        if self.keep:
            self.log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def rc(self) -> RedisConnection:
        """The harness's own Redis connection."""
        assert self.client is not None
        return self.client

    def redis_version(self) -> str:
        """The private server's version."""
        return self.rc.info("server").get("redis_version", "?")

    @property
    def original_cmd(self) -> str | None:
        """The command that runs the original, or None when it was not given."""
        if self.original is None:
            return None
        return ORIGINAL_CMD.format(original=shlex.quote(os.path.abspath(self.original)))

    @contextmanager
    def daemon(
        self, tasks: list[TaskSpec], cmd: str | None = None, queue_key: str = Daemon.queue_key
    ) -> Iterator[Daemon]:
        """A started daemon for a block; stopped (SIGTERM) and Redis flushed after."""
        assert self.redis is not None
        d = Daemon(
            cmd or self.daemon_cmd,
            tempfile.mkdtemp(dir=self.workdir),
            self.redis.port,
            tasks,
            queue_key=queue_key,
        )
        d.start(self.rc)
        try:
            yield d
        finally:
            d.stop()
            if cmd is None:
                self.stops.append((d.exit_code, d.stop_s))
            self.rc.call("FLUSHALL")
            label = {STANDIN_DAEMON_CMD: "reference spawner", None: "daemon"}.get(cmd, "original")
            for note in d.notes:
                if cmd is not None and note == NO_STATS:
                    continue  # expected of the reference, and it times no drains
                if f"{label}: {note}" not in self.notes:
                    self.notes.append(f"{label}: {note}")
                    self.log(f"  note: {label}: {note}")

    def drain(
        self,
        d: Daemon,
        pushes: dict[str, list[bytes]],
        count_children: bool = False,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Push all entries at once and time the daemon until it has finished them."""
        n = sum(len(v) for v in pushes.values())
        keys = [Keys(d.queue_key).queue(t) for t in pushes]
        cmds: list[list[object]] = [
            ["RPUSH", k, *v[i : i + 1000]]
            for k, v in zip(keys, pushes.values(), strict=True)
            for i in range(0, len(v), 1000)
        ]
        base = d.counts()
        meter = CommandMeter(self.rc)
        meter.start()
        cpu0 = d.cpu_s()
        peak_children = 0
        t0 = time.monotonic()
        self.rc.pipeline(cmds)
        timeout = timeout or max(30.0, n / 100)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            _check_alive(d)
            if count_children:
                peak_children = max(peak_children, len(d.children()))
            if not any(self.rc.pipeline([["LLEN", k] for k in keys])):
                break
            time.sleep(POLL_S)
        # The original serves only TaskCount (tasks started): a drain ends, for every
        # daemon alike, when N more have started and no child is left.
        while time.monotonic() < deadline:
            _check_alive(d)
            counts = d.counts() if base is not None else None
            children = d.children()
            if count_children:
                peak_children = max(peak_children, len(children))
            started = base is None or (counts is not None and counts.started - base.started >= n)
            if started and not children:
                break
            time.sleep(TAIL_POLL_S)
        else:
            raise RuntimeError(f"daemon did not finish {n} tasks in {timeout:.0f} s")
        wall = time.monotonic() - t0
        cpu = d.cpu_s() - cpu0
        counts = self._outcomes(d, base, n, deadline)
        commands = meter.stop()
        result: dict[str, Any] = {
            "n": n,
            "wall_s": wall,
            "rate": n / wall,
            "cpu_s": cpu,
            "cpu_per_1000_s": cpu * 1000 / n,
            "redis_commands": commands,
            "peak_rss_kb": d.peak_rss_kb(),
            "completion": "llen+taskcount+children" if base is not None else "llen+children",
        }
        if base is not None and counts is not None and counts.finished:
            ok = counts.succeeded - base.succeeded
            result.update(
                succeeded=ok,
                failed=counts.failed - base.failed,
                invalid=counts.invalid - base.invalid,
            )
        else:
            ok = n
        result["commands_per_task"] = sum(commands.values()) / max(1, ok)
        if count_children:
            result["peak_children"] = peak_children
        return result

    def _outcomes(self, d: Daemon, base: Counts | None, n: int, deadline: float) -> Counts | None:
        """The counters once every outcome is written (after the timing: ours only).

        The original serves no outcome counters; its figures stay as they are.
        """
        counts = d.counts() if base is not None else None
        while base is not None and counts is not None and counts.finished:
            if counts.finished - base.finished >= n or time.monotonic() > deadline:
                break
            time.sleep(TAIL_POLL_S)
            counts = d.counts()
        return counts

    @contextmanager
    def other_load(self, d: Daemon) -> Iterator[Callable[[], float]]:
        """Measure the CPU that processes outside the benchmark used during a block.

        Busy CPU of the machine minus that of the harness (and the children it
        waited for, e.g. the raw loop), the daemon (and its reaped scripts) and
        Redis: the cores other work took, averaged over the block.
        """
        assert self.redis is not None and self.redis.proc is not None and d.ps is not None
        ours = [psutil.Process(self.redis.proc.pid), d.ps]

        def snap() -> tuple[float, float, float]:
            t = psutil.cpu_times()
            busy = t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)
            h = os.times()
            own = h.user + h.system + h.children_user + h.children_system
            for p in ours:
                c = p.cpu_times()
                own += c.user + c.system + c.children_user + c.children_system
            return busy, own, time.monotonic()

        before = snap()
        result = [float("nan")]
        yield lambda: result[0]
        after = snap()
        wall = after[2] - before[2]
        result[0] = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall

    def raw(self, n: int, concurrency: int, argv: Sequence[str] = (TRUE,)) -> dict[str, Any]:
        """One run of the raw posix_spawn loop, in a fresh process."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.raw",
                "--n",
                str(n),
                "--concurrency",
                str(concurrency),
                "--",
                *argv,
            ],
            check=True,
            capture_output=True,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        ).stdout
        result: dict[str, Any] = json.loads(out)
        return result


def true_entries(n: int) -> list[bytes]:
    """n entries without arguments."""
    return [b'{"Args":[]}'] * n


def _spread(
    n: int, types: Sequence[str], make: Callable[[int], list[bytes]]
) -> dict[str, list[bytes]]:
    """n entries dealt evenly across types."""
    return {t: make(n // len(types) + (i < n % len(types))) for i, t in enumerate(types)}


#: The original's queue key: both daemons stay up through a comparison, each on its own queue.
ORIGINAL_QUEUE_KEY = "bench-original"


#: How many times, in one comparison, the original is started again after a crash.
ORIGINAL_RESTARTS = 3


def _clear(b: Bench, queue_key: str) -> None:
    """Delete every key under C{queue_key}: what a crashed daemon left."""
    keys = b.rc.call("KEYS", f"{queue_key}:*")
    if keys:
        b.rc.call("DEL", *keys)


def _compare(
    b: Bench,
    tasks: list[TaskSpec],
    pushes: dict[str, list[bytes]],
    concurrency: int,
    repeats: int,
    argv: Sequence[str] = (TRUE,),
    count_children: bool = False,
    warmup: int = 0,
) -> dict[str, Any]:
    """Alternate the original (when given), ours and raw C{repeats} times; medians, ratios.

    Each daemon is started once per comparison (the original exits when its Redis link
    breaks, so it is never reused across scenarios).
    """
    n = sum(len(v) for v in pushes.values())
    raws: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    origs: list[dict[str, Any]] = []

    def timed(d: Daemon, into: list[dict[str, Any]], run: Callable[[], dict[str, Any]]) -> None:
        with b.other_load(d) as load:
            into.append(run())
        into[-1]["other_load_cores"] = load()

    def drain(d: Daemon) -> Callable[[], dict[str, Any]]:
        return lambda: b.drain(d, pushes, count_children=count_children)

    with ExitStack() as stack:
        d = stack.enter_context(b.daemon(tasks))
        o = None
        if b.original_cmd is not None:
            o = stack.enter_context(
                b.daemon(tasks, cmd=b.original_cmd, queue_key=ORIGINAL_QUEUE_KEY)
            )
        warm = {t: v[: max(1, warmup // len(pushes))] for t, v in pushes.items()}
        crashes = 0
        for _ in range(repeats):
            while o is not None:
                try:
                    if warmup and not origs:
                        b.drain(o, warm)
                    timed(o, origs, drain(o))
                    break
                except DaemonExited as e:
                    # The original is measured, not trusted: its crash is a finding, not
                    # the end of the run.  It crashes at random (a race in its stats), so
                    # it is started again, on an empty queue, and the drain run again.
                    crashes += 1
                    note = f"original: at concurrency {concurrency}: {e}"
                    b.notes.append(note)
                    b.log(f"  note: {note}")
                    if crashes > ORIGINAL_RESTARTS:
                        o = None
                        break
                    _clear(b, ORIGINAL_QUEUE_KEY)
                    o = stack.enter_context(
                        b.daemon(tasks, cmd=b.original_cmd, queue_key=ORIGINAL_QUEUE_KEY)
                    )
                    b.log(f"  original started again ({crashes} of {ORIGINAL_RESTARTS})")
            if warmup and not ours:
                b.drain(d, warm)
            timed(d, ours, drain(d))
            timed(d, raws, lambda: b.raw(n, concurrency, argv))
    raw_rate = median([r["rate"] for r in raws])
    our_rate = median([r["rate"] for r in ours])
    out: dict[str, Any] = {
        "n": n,
        "concurrency": concurrency,
        "raw_rate": raw_rate,
        "ours_rate": our_rate,
        "ratio": our_rate / raw_rate,
        "pair_ratios": [o["rate"] / r["rate"] for o, r in zip(ours, raws, strict=True)],
        "ours_cpu_per_1000_s": median([o["cpu_per_1000_s"] for o in ours]),
        "raw_cpu_per_1000_s": median([r["cpu_per_1000_s"] for r in raws]),
        "child_cpu_per_task_ms": median([r["child_cpu_per_task_ms"] for r in raws]),
        "commands_per_task": median([o["commands_per_task"] for o in ours]),
        "peak_rss_kb": max(o["peak_rss_kb"] for o in ours),
        "failed": sum(o.get("failed", 0) + o.get("invalid", 0) for o in ours),
        "other_load_cores": max(x["other_load_cores"] for x in raws + ours + origs),
        "runs": {"raw": raws, "ours": ours},
    }
    if origs:
        orig_rate = median([r["rate"] for r in origs])
        out.update(
            original_rate=orig_rate,
            original_ratio_to_raw=orig_rate / raw_rate,
            ours_to_original=our_rate / orig_rate,
            original_pair_ratios=[
                o["rate"] / g["rate"] for o, g in zip(ours[: len(origs)], origs, strict=True)
            ],
            original_cpu_per_1000_s=median([g["cpu_per_1000_s"] for g in origs]),
            original_peak_rss_kb=max(g["peak_rss_kb"] for g in origs),
        )
        out["runs"]["original"] = origs
    if b.original_cmd is not None:
        out["original_crashes"] = crashes
    if count_children:
        out["peak_children"] = max(o["peak_children"] for o in ours)
    return out


def throughput(b: Bench, workers: Sequence[int], n: int, repeats: int) -> dict[str, Any]:
    """Tasks/s draining n pre-queued /bin/true tasks, per Workers, beside the raw loop."""
    by_workers: dict[str, Any] = {}
    for w in workers:
        t0 = time.monotonic()
        r = _compare(
            b, [TaskSpec("t0", TRUE, w)], {"t0": true_entries(n)}, w, repeats, warmup=min(n, 500)
        )
        by_workers[str(w)] = r
        original = (
            f"original {r['original_rate']:.0f}/s, ours/original {r['ours_to_original']:.2f}, "
            if "original_rate" in r
            else ""
        )
        b.log(
            f"  Workers={w}: raw {r['raw_rate']:.0f}/s, ours {r['ours_rate']:.0f}/s, "
            f"{original}ratio to raw {r['ratio']:.2f} ({time.monotonic() - t0:.1f} s)"
        )
    return {"method": METHOD, "n": n, "repeats": repeats, "by_workers": by_workers}


def cost(tput: dict[str, Any]) -> dict[str, Any]:
    """Per-task cost, read from throughput runs: CPU, Redis commands, peak RSS."""
    out: dict[str, Any] = {"go_original_cpu_per_1000_s": [0.15, 0.26], "by_workers": {}}
    for w, r in tput["by_workers"].items():
        ours = r["runs"]["ours"]
        merged: dict[str, int] = {}
        for run in ours:
            for k, v in run["redis_commands"].items():
                merged[k] = merged.get(k, 0) + v
        tasks = sum(run.get("succeeded", run["n"]) for run in ours)
        out["by_workers"][w] = {
            "ours_cpu_per_1000_s": r["ours_cpu_per_1000_s"],
            "raw_cpu_per_1000_s": r["raw_cpu_per_1000_s"],
            "cpu_ratio": r["ours_cpu_per_1000_s"] / max(1e-9, r["raw_cpu_per_1000_s"]),
            "commands_per_task": r["commands_per_task"],
            "commands_per_task_by_name": {k: v / max(1, tasks) for k, v in merged.items()},
            "peak_rss_mb": r["peak_rss_kb"] / 1024,
            "child_cpu_per_task_ms": r["child_cpu_per_task_ms"],
        }
        if "original_rate" in r:
            out["by_workers"][w].update(
                original_cpu_per_1000_s=r["original_cpu_per_1000_s"],
                original_peak_rss_mb=r["original_peak_rss_kb"] / 1024,
            )
    return out


def idle(
    b: Bench, types: int, seconds: float, workers: int = 8, settle: float = 3.0
) -> dict[str, Any]:
    """Idle CPU and Redis traffic with 1 and with C{types} task types: polling would grow."""
    by_types = {str(t): _idle(b, t, seconds, workers, settle) for t in sorted({1, types})}
    return {"types": types, "workers": workers, "settle_s": settle, "by_types": by_types}


def _idle(b: Bench, types: int, seconds: float, workers: int, settle: float) -> dict[str, Any]:
    """Daemon CPU and Redis traffic with C{types} task types and nothing to do."""
    tasks = [TaskSpec(f"t{i}", TRUE, workers) for i in range(types)]
    with b.daemon(tasks) as d:
        time.sleep(settle)
        assert b.redis is not None
        meter = RoundTripMeter(b.rc, b.redis.port)
        meter.start()
        cpu0, ns0, t0 = d.cpu_s(), d.cpu_ns_precise(), time.monotonic()
        time.sleep(seconds)
        cpu1, ns1, t1 = d.cpu_s(), d.cpu_ns_precise(), time.monotonic()
        commands = meter.stop()
    wall = t1 - t0
    blocking = sum(v for k, v in commands.items() if k in BLOCKING)
    other = sum(v for k, v in commands.items() if k not in BLOCKING)
    return {
        "seconds": wall,
        "cpu_percent": 100 * (ns1 - ns0) / 1e9 / wall,
        "cpu_percent_ticks": 100 * (cpu1 - cpu0) / wall,
        "commands_per_s": sum(commands.values()) / wall,
        "blocking_per_s": blocking / wall,
        "other_per_s": other / wall,
        "commands_per_s_by_name": {k: v / wall for k, v in commands.items()},
    }


def _latency_run(
    b: Bench,
    watcher: CreationWatcher,
    directory: str,
    tag: str,
    samples: int,
    rate: float,
    push: Callable[[str], int],
) -> dict[str, Any]:
    """Push (or spawn) C{touch <new path>} at a steady rate; latency = creation - push."""
    interval = int(1e9 / rate)
    warm = [f"{tag}-w{i}" for i in range(20)]
    names = [f"{tag}-{i}" for i in range(samples)]
    pushed: dict[str, int] = {}
    t_next = time.monotonic_ns()
    for name in warm + names:
        watcher.wait_until(t_next)
        pushed[name] = push(os.path.join(directory, name))
        t_next = max(t_next + interval, time.monotonic_ns())
    end = time.monotonic_ns() + 3_000_000_000
    while time.monotonic_ns() < end and not all(n in watcher.created for n in names):
        watcher.wait(0.05)
    lat = [round((watcher.created[n] - pushed[n]) / 1e6, 4) for n in names if n in watcher.created]
    return {"samples_ms": lat, "missing": samples - len(lat)}


def _summary(lat: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else float("nan"),
        "n": len(lat),
    }


def latency(b: Bench, rate: float, samples: int, rounds: int, workers: int = 8) -> dict[str, Any]:
    """Push-to-start of C{touch} at a low rate: ours, a plain BLPOP spawner, a bare spawn."""
    directory = tempfile.mkdtemp(dir=b.workdir, prefix="touch-")
    watcher = CreationWatcher(directory)
    tasks = [TaskSpec("lat", TOUCH, workers)]
    key = Keys(Daemon.queue_key).queue("lat")

    def push_redis(path: str) -> int:
        cmd = encode_command(["RPUSH", key, json.dumps({"Args": [path]})])
        t = time.monotonic_ns()
        b.rc.sock.sendall(cmd)
        b.rc.read()
        return t

    def spawn_direct(path: str) -> int:
        while True:  # reap finished touches before the clock starts
            try:
                if not os.waitpid(-1, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
        t = time.monotonic_ns()
        os.posix_spawn(TOUCH, [TOUCH, path], os.environ)
        return t

    series: dict[str, list[float]] = {"ours": [], "blpop": [], "floor": []}
    # The original first, restarted for each round like the others.
    daemons: list[tuple[str, str | None]] = [("blpop", STANDIN_DAEMON_CMD), ("ours", None)]
    if b.original_cmd is not None:
        series["original"] = []
        daemons.insert(0, ("original", b.original_cmd))
    missing = dict.fromkeys(series, 0)
    #: Cores other processes took while each daemon was measured (max over rounds).
    busy: dict[str, float] = {}
    per = max(1, samples // rounds)
    try:
        for r in range(rounds):
            for who, cmd in daemons:
                with b.daemon(tasks, cmd=cmd) as d, b.other_load(d) as load:
                    got = _latency_run(b, watcher, directory, f"{who}{r}", per, rate, push_redis)
                busy[who] = max(busy.get(who, 0.0), load())
                series[who] += got["samples_ms"]
                missing[who] += got["missing"]
        got = _latency_run(b, watcher, directory, "floor", per, rate, spawn_direct)
        series["floor"] += got["samples_ms"]
        missing["floor"] += got["missing"]
    finally:
        watcher.close()
    out: dict[str, Any] = {
        "rate_per_s": rate,
        "workers": workers,
        "rounds": rounds,
        "clock": "time.monotonic_ns (push: just before the RPUSH is sent; "
        "start: inotify IN_CREATE of the touched path)",
    }
    for who, lat in series.items():
        out[who] = {**_summary(lat), "missing": missing[who], "samples_ms": lat}
        out[who]["other_load_cores"] = busy.get(who, float("nan"))
    out["ratio_p50_to_blpop"] = out["ours"]["p50_ms"] / out["blpop"]["p50_ms"]
    out["ratio_p99_to_blpop"] = out["ours"]["p99_ms"] / out["blpop"]["p99_ms"]
    out["ours_over_floor_p50_ms"] = out["ours"]["p50_ms"] - out["floor"]["p50_ms"]
    if "original" in out:
        out["ratio_p50_to_original"] = out["ours"]["p50_ms"] / out["original"]["p50_ms"]
        out["ratio_p99_to_original"] = out["ours"]["p99_ms"] / out["original"]["p99_ms"]
    return out


def scale(
    b: Bench,
    type_counts: Sequence[int],
    n: int,
    repeats: int,
    workers: int = 8,
    alive: int = 256,
    sleep_s: float = 0.3,
    waves: int = 8,
) -> dict[str, Any]:
    """Throughput over many task types, and with C{alive} long children at once."""
    by_types: dict[str, Any] = {}
    for t in type_counts:
        t0 = time.monotonic()
        names = [f"t{i}" for i in range(t)]
        r = _compare(
            b,
            [TaskSpec(x, TRUE, workers) for x in names],
            _spread(n, names, true_entries),
            workers * t,
            repeats,
            warmup=min(n, 500),
        )
        by_types[str(t)] = r
        original = (
            f"original {r['original_rate']:.0f}/s, ours/original {r['ours_to_original']:.2f}, "
            if "original_rate" in r
            else ""
        )
        b.log(
            f"  types={t} (Workers {workers} each): raw {r['raw_rate']:.0f}/s, ours "
            f"{r['ours_rate']:.0f}/s, {original}ratio to raw {r['ratio']:.2f} "
            f"({time.monotonic() - t0:.1f} s)"
        )
    t0 = time.monotonic()
    entry = json.dumps({"Args": [str(sleep_s)]}).encode()
    r = _compare(
        b,
        [TaskSpec("sleep", SLEEP, alive)],
        {"sleep": [entry] * (alive * waves)},
        alive,
        repeats,
        argv=(SLEEP, str(sleep_s)),
        count_children=True,
    )
    r["ideal_rate"] = alive / sleep_s
    b.log(
        f"  {alive} alive ({SLEEP} {sleep_s}): raw {r['raw_rate']:.0f}/s, ours "
        f"{r['ours_rate']:.0f}/s, ratio {r['ratio']:.2f}, peak children "
        f"{r['peak_children']} ({time.monotonic() - t0:.1f} s)"
    )
    return {
        "method": METHOD,
        "workers_per_type": workers,
        "by_types": by_types,
        "alive": {"children": alive, "script": f"{SLEEP} {sleep_s}", **r},
    }


#: How the scale-out scenario measures.
SCALEOUT_METHOD = (
    "1, 2, 3... daemons (twistd -n goophry: --daemon-cmd does not apply, each daemon's "
    "Succeeded is read from its stats) with Workers W each "
    "on the benchmark's Redis, one queue; a warm-up drain of a tenth of N, then N /bin/true "
    "entries pushed at once and timed until the daemons' Succeeded has grown by N. Redis CPU "
    "from INFO cpu, commands from INFO commandstats (the pushes and the harness's INFO left "
    "out), busy cores from /proc/stat over the drain; counts alternate, figures are medians."
)


def scaleout(
    b: Bench, counts: Sequence[int], entries: int, workers: int, repeats: int
) -> dict[str, Any]:
    """Several daemons on one Redis draining one queue: this machine's ceiling, Redis's share."""
    assert b.redis is not None
    directory = Path(tempfile.mkdtemp(dir=b.workdir, prefix="scaleout-"))
    try:
        drains = daemon_counts(
            directory, b.redis, counts, entries, workers, repeats, lambda line: b.log(f"  {line}")
        )
    except AssertionError as e:
        # The harness's bounded waits raise it: a daemon that did not start or a drain
        # that did not end fails this scenario, not the benchmark.
        raise RuntimeError(str(e)) from e
    out = summarise(drains, os.cpu_count() or 1)
    out.update(method=SCALEOUT_METHOD, workers=workers, repeats=repeats)
    for line in describe_summary(out):
        b.log(f"  {line}")
    return out
