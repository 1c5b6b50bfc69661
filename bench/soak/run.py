"""
One soak run: the processes, the producer, the kills, the drain, and the
records handed to L{bench.soak.accounting.account}.
"""

from __future__ import annotations

import collections
import json
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak.accounting import Tally, account
from bench.soak.chaos import restart_pause, schedule
from bench.soak.workload import (
    ID_RE,
    KEYS,
    PUSHES_KEY,
    TYPES,
    Entry,
    batches_of,
    make_entries,
    push_batch,
    write_files,
)
from tests.helpers import (
    DaemonProcess,
    RedisReplyError,
    RedisServer,
    command_line_pids,
    kill_quietly,
    start_daemon_process,
)


@dataclass
class Options:
    entries: int = 20000
    seed: int = 1
    duration_limit: float = 600.0
    daemon_kills: int = 8
    redis_kills: int = 5
    chaos_seconds: float | None = None  # None: from the entry count
    push_seconds: float | None = None  # None: from the entry count
    batch: int = 100
    workers_ok: int = 8
    workers_fail: int = 4
    workers_slow: int = 4
    verbose: bool = False
    workdir: str | None = None
    keep: bool = False
    json: str | None = None
    quiet: bool = False
    stall_seconds: float = 30.0


@dataclass
class Result(Tally):
    """The figures of a run: the tally, and what happened on the way."""

    entries: int = 0
    batches: int = 0
    daemon_kills: int = 0
    redis_kills: int = 0
    producer_retries: int = 0
    daemon_unexpected_exits: int = 0
    drained: bool = False
    elapsed: float = 0.0
    drain_seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    undrained_detail: dict[str, list[str]] = field(default_factory=dict)
    daemon_log: dict[str, int] = field(default_factory=dict)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.undrained == 0 and self.unpushed == 0


class Daemon:
    """C{twistd -n goophry -c cfg}, started again after each kill; one log per start."""

    def __init__(self, workdir: Path, config: Path, verbose: bool) -> None:
        self.workdir = workdir
        self.config = config
        self.verbose = verbose
        self.incarnations: list[DaemonProcess] = []

    @property
    def current(self) -> DaemonProcess | None:
        return self.incarnations[-1] if self.incarnations else None

    def start(self) -> None:
        log_path = self.workdir / f"daemon-{len(self.incarnations) + 1}.log"
        self.incarnations.append(
            start_daemon_process(
                self.config,
                *(["-v"] if self.verbose else []),
                log_path=log_path,
                cwd=self.workdir,
                twistd_args=["--pidfile="],
            )
        )

    @property
    def pid(self) -> int | None:
        return self.current.pid if self.current is not None else None

    def running(self) -> bool:
        return self.current is not None and self.current.running()

    def kill(self) -> None:
        """SIGKILL the daemon alone: its scripts run on, as after a crash."""
        if self.current is not None:
            self.current.kill()

    def terminate(self, timeout: float = 20.0) -> int | None:
        return self.current.stop(timeout) if self.current is not None else None

    def log_lines(self) -> Iterable[tuple[str, bytes]]:
        for process in self.incarnations:
            try:
                data = process.log_path.read_bytes()
            except FileNotFoundError:
                continue
            for line in data.splitlines():
                yield process.log_path.name, line


# What the daemon's logs say about the paths the kills exercised.
LOG_PATTERNS = {
    "requeued_from_dead_instances": re.compile(rb"is gone: (\d+) of its in-flight entries"),
    "requeued_after_lost_move": re.compile(rb"(\d+) \w+ entries taken as the connection was lost"),
    "outcome_writes_dropped": re.compile(rb"cannot record the outcome"),
    "reconcile_skipped": re.compile(rb"cannot check the \w+ in-flight list"),
    "abandoned": re.compile(rb"abandoned after \d+ recoveries"),
    "redis_outages_logged": re.compile(rb"RedisHealth#warn\] Redis at .* unreachable"),
    "tracebacks": re.compile(rb"Traceback \(most recent call last\)"),
}


def scan_logs(lines: Iterable[tuple[str, bytes]]) -> dict[str, int]:
    """Counts per pattern (the number a pattern captures, when it has one)."""
    counts = dict.fromkeys(LOG_PATTERNS, 0)
    for _, line in lines:
        for name, pattern in LOG_PATTERNS.items():
            m = pattern.search(line)
            if m:
                counts[name] += int(m.group(1)) if m.groups() else 1
    return counts


class Soak:
    """One run: Redis, the daemon, the producer thread and the kills."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.result = Result()
        if opts.workdir:
            self.workdir = Path(opts.workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="goophry-soak-"))
        self.result.workdir = str(self.workdir)
        (self.workdir / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(self.workdir / "redis", appendonly="yes", appendfsync="always")
        self.workers = {"ok": opts.workers_ok, "fail": opts.workers_fail, "slow": opts.workers_slow}
        self.config, self.scripts, self.records = write_files(
            self.workdir, self.redis.address, self.workers
        )
        self.daemon = Daemon(self.workdir, self.config, opts.verbose)
        self.entries: list[Entry] = []
        self.t0 = time.monotonic()
        self.stop_producer = threading.Event()
        self.acknowledged = 0

    # ---- helpers

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        line = f"[{self.now():7.2f}s] {text}"
        self.result.events.append(line)
        if not self.opts.quiet:
            print(line, flush=True)

    def command(self, *args: object) -> Any:
        """One command on Redis; an error reply raises."""
        return self.redis.cli(*args, timeout=5.0)

    # ---- the main loop

    def run(self) -> Result:
        opts = self.opts
        entries = make_entries(opts.entries, opts.batch, self.rng)
        self.entries = entries
        batches = batches_of(entries)
        self.result.entries = len(entries)
        self.result.batches = len(batches)
        self.result.kinds = dict(collections.Counter(e.kind for e in entries))
        # About 200 entries a second get through on two cores (with the kills);
        # push a little slower than that, so that the kills meet entries in
        # flight rather than a long queue, and cause them while entries flow.
        self.push_seconds = opts.push_seconds or max(5.0, opts.entries / 150.0)
        self.chaos_seconds = opts.chaos_seconds or self.push_seconds
        hard_deadline = opts.duration_limit

        self.redis.start(timeout=30.0)
        # Again: the first start may have moved Redis to another port.
        write_files(self.workdir, self.redis.address, self.workers)
        self.say(f"redis-server on port {self.redis.port}, workdir {self.workdir}")
        self.daemon.start()

        events = schedule(self.rng, opts.daemon_kills, opts.redis_kills, self.chaos_seconds)
        self.say(
            "schedule: "
            + ", ".join(f"{what}@{at:.1f}s" for at, what in events)
            + f"; pushing {len(entries)} entries in {len(batches)} batches "
            f"over {self.push_seconds:.0f}s"
        )
        pending: list[tuple[float, str]] = sorted(events)
        producer = threading.Thread(
            target=self.produce, args=(batches,), name="soak-producer", daemon=True
        )
        producer.start()
        daemon_down = False

        while True:
            now = self.now()
            if now > hard_deadline:
                self.say("duration limit reached before the chaos phase ended")
                break
            # Kills and restarts.
            while pending and pending[0][0] <= now:
                _, what = pending.pop(0)
                if what == "daemon":
                    self.daemon.kill()
                    self.result.daemon_kills += 1
                    daemon_down = True
                    pause = restart_pause(self.rng, what)
                    self.say(f"kill -9 daemon (pid {self.daemon.pid}); back in {pause:.2f}s")
                    pending.append((now + pause, "daemon-start"))
                elif what == "redis":
                    self.redis.kill()
                    self.result.redis_kills += 1
                    pause = restart_pause(self.rng, what)
                    self.say(f"kill -9 redis-server; back in {pause:.2f}s")
                    pending.append((now + pause, "redis-start"))
                elif what == "daemon-start":
                    # Two kills in one pause make two starts: the second finds it up.
                    if not self.daemon.running():
                        self.daemon.start()
                        self.say(f"daemon started again (pid {self.daemon.pid})")
                    daemon_down = False
                elif what == "redis-start":
                    if not self.redis.running():
                        self.redis.start(timeout=30.0)
                        self.say("redis-server started again (AOF reloaded)")
                pending.sort()
            self.check_daemon(daemon_down)
            if not producer.is_alive() and not pending:
                break
            time.sleep(0.01)
        self.stop_producer.set()
        producer.join(10)

        self.say(
            f"chaos over; {self.acknowledged} of {len(batches)} batches acknowledged; draining"
        )
        drain_start = self.now()
        self.result.drained = self.drain(hard_deadline)
        self.result.drain_seconds = self.now() - drain_start
        self.say(("drained" if self.result.drained else "NOT drained") + " ; accounting")
        self.account()
        self.result.elapsed = self.now()
        return self.result

    def check_daemon(self, expected_down: bool) -> None:
        if expected_down or self.daemon.running():
            return
        current = self.daemon.current
        code = current.proc.returncode if current is not None else None
        self.result.daemon_unexpected_exits += 1
        log = current.log_path if current is not None else None
        self.say(f"daemon exited by itself (code {code}); see {log}; restarting")
        time.sleep(0.5)
        self.daemon.start()

    def produce(self, batches: dict[int, list[Entry]]) -> None:
        """The producer thread: paced batches, each retried until acknowledged."""
        interval = self.push_seconds / max(1, len(batches))
        start = time.monotonic()
        for number in sorted(batches):
            delay = start + number * interval - time.monotonic()
            if delay > 0 and self.stop_producer.wait(delay):
                return
            while not push_batch(self.redis, number, batches[number]):
                self.result.producer_retries += 1
                if self.stop_producer.wait(0.1):
                    return
            self.acknowledged += 1

    # ---- draining

    def redis_state(self) -> tuple[int, int]:
        """(entries in the queues or due later, entries in in-flight lists)."""
        queued = sum(self.command("LLEN", KEYS.queue(t)) for t in TYPES)
        queued += sum(self.command("ZCARD", KEYS.scheduled(t)) for t in TYPES)
        inflight = 0
        cursor = b"0"
        while True:
            cursor, keys = self.command(
                "SCAN", cursor, "MATCH", KEYS.inflight("*", "*"), "COUNT", 1000
            )
            for key in keys:
                inflight += self.command("LLEN", key)
            if cursor == b"0":
                break
        return queued, inflight

    def drain(self, deadline: float) -> bool:
        """
        Wait until the queues and in-flight lists are empty and no script runs.

        Gives up early when entries sit in in-flight lists with nothing running
        and nothing changing for C{stall_seconds}: no one will ever move them.
        """
        marker = str(self.scripts).encode()
        last_report = 0.0
        quiet_polls = 0
        state: tuple[int, int, int] | None = None
        changed = self.now()
        while self.now() < deadline:
            self.check_daemon(False)
            try:
                queued, inflight = self.redis_state()
            except (OSError, RedisReplyError):
                queued, inflight = -1, -1
            scripts = len(command_line_pids(marker))
            if (queued, inflight, scripts) != state:
                state, changed = (queued, inflight, scripts), self.now()
            if queued == 0 and inflight == 0 and scripts == 0:
                quiet_polls += 1
                if quiet_polls >= 3:
                    return True
            else:
                quiet_polls = 0
            if queued == 0 and scripts == 0 and self.now() - changed > self.opts.stall_seconds:
                self.say(
                    f"stalled: {inflight} entries in in-flight lists, nothing running, "
                    f"nothing moved for {self.opts.stall_seconds:g}s (live daemon pid "
                    f"{self.daemon.pid}); giving up"
                )
                return False
            if self.now() - last_report >= 10:
                last_report = self.now()
                self.say(f"draining: {queued} queued, {inflight} in flight, {scripts} scripts")
            time.sleep(0.25)
        return False

    # ---- accounting

    def account(self) -> None:
        """Read the records from Redis and the record files, and account for them."""
        res = self.result
        pushes_raw = self.command("HGETALL", PUSHES_KEY) or []
        pushes = {int(k): int(v) for k, v in zip(pushes_raw[::2], pushes_raw[1::2], strict=True)}
        runs: dict[str, collections.Counter[str]] = {}
        for t in TYPES:
            path = self.records / f"{t}.rec"
            text = path.read_text() if path.exists() else ""
            runs[t] = collections.Counter(line for line in text.split("\n") if line)
            res.runs[t] = sum(runs[t].values())
        failed_records = [
            raw for t in TYPES for raw in self.command("LRANGE", KEYS.failed(t), 0, -1)
        ]
        queued = {} if res.drained else self.undrained()
        account(self.entries, pushes, runs, failed_records, queued).copy_to(res)
        for lost in res.lost_detail:
            lost["log"] = self.log_mentions(lost["id"])
        res.daemon_log = scan_logs(self.daemon.log_lines())
        if res.lost_detail:
            self.say(f"{res.lost} entries lost; first: {json.dumps(res.lost_detail[:3])}")

    def undrained(self) -> dict[str, str]:
        """Entry id -> the queue, in-flight list or scheduled set holding it; said per key."""
        queued_ids: dict[str, str] = {}
        for t in TYPES:
            lists: list[bytes] = [KEYS.queue(t).encode()]
            lists += self.command("KEYS", KEYS.inflight(t, "*"))
            held = [(name, self.command("LRANGE", name, 0, -1)) for name in lists]
            scheduled = KEYS.scheduled(t)
            held.append((scheduled.encode(), self.command("ZRANGE", scheduled, 0, -1)))
            for name, raws in held:
                for raw in raws:
                    m = ID_RE.search(raw)
                    if m:
                        queued_ids[m.group().decode()] = name.decode()
        where: dict[str, list[str]] = collections.defaultdict(list)
        for ident, key in sorted(queued_ids.items()):
            where[key].append(ident)
        live = f":{self.daemon.pid}:"
        for key, idents in where.items():
            note = " (the live daemon's)" if live in key else ""
            self.result.undrained_detail[key + note] = idents[:20]
            self.say(f"undrained: {len(idents)} in {key}{note}: {' '.join(idents[:10])}")
        return queued_ids

    def log_mentions(self, ident: str) -> list[str]:
        """The first daemon log lines that name an entry."""
        lines = []
        needle = ident.encode()
        for name, line in self.daemon.log_lines():
            if needle in line:
                lines.append(f"{name}: {line.decode(errors='replace')[:300]}")
        return lines[:10]

    # ---- cleanup

    def close(self) -> None:
        try:
            self.daemon.terminate()
        finally:
            self.daemon.kill()
            for pid in command_line_pids(str(self.scripts).encode()):
                kill_quietly(pid)
            self.redis.kill()


def run_soak(opts: Options) -> Result:
    """Run, clean up, and keep the workdir only when something is wrong (or asked)."""
    soak = Soak(opts)
    try:
        res = soak.run()
    finally:
        soak.close()
    if res.ok and not opts.keep and not opts.workdir:
        shutil.rmtree(soak.workdir, ignore_errors=True)
        res.workdir = ""
    return res
