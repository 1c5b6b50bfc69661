"""
Reliability soak: every entry pushed is accounted for, across kill -9s.

``python -m bench.soak [--entries 20000] [--seed 1] [--duration-limit 600] [--json out.json]``

It starts its own redis-server (AOF, ``appendfsync always``) on a free port,
writes a config with three task types (``ok``, ``fail``, ``slow``) whose
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
Everything here is self-contained: bench/ does not import from tests/.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
QUEUE_KEY = "gsoak"
PUSHES_KEY = "soakmeta:pushes"
TYPES = ("ok", "fail", "slow")
ID_RE = re.compile(rb"e\d{6}")

Reply = bytes | int | list["Reply"] | None


# --------------------------------------------------------------------------
# A tiny RESP client (one connection per call)


class RedisError(Exception):
    """Redis answered with an error reply."""


def _encode(args: Sequence[object]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            arg = str(arg)
        data = arg.encode() if isinstance(arg, str) else arg
        assert isinstance(data, bytes)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _reply(f: IO[bytes]) -> Reply | RedisError:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("redis closed the connection")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        items: list[Reply] = []
        for _ in range(count):
            item = _reply(f)
            if isinstance(item, RedisError):
                raise item
            items.append(item)
        return items
    raise ConnectionError(f"unexpected reply {line!r}")


def pipeline(port: int, commands: Sequence[Sequence[object]], timeout: float = 5.0) -> list[Any]:
    """Send commands on one connection; error replies come back as RedisError values."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(_encode(c) for c in commands))
        with sock.makefile("rb") as f:
            return [_reply(f) for _ in commands]


def command(port: int, *args: object, timeout: float = 5.0) -> Any:
    """One command; an error reply raises."""
    [reply] = pipeline(port, [args], timeout)
    if isinstance(reply, RedisError):
        raise reply
    return reply


# --------------------------------------------------------------------------
# Processes: redis-server and the daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Redis:
    """A redis-server that keeps its port and directory across kill -9s."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis-server.log"
        self.starts = 0

    def argv(self) -> list[str]:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            server,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        try:
            return command(self.port, "PING", timeout=1.0) == b"PONG"
        except (OSError, RedisError):
            return False

    def start(self, timeout: float = 30.0) -> None:
        for attempt in range(3):
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.running() and not self.answers():
                time.sleep(0.02)
            if self.answers():
                self.starts += 1
                return
            self.kill()
            if self.starts == 0 and attempt < 2:
                self.port = free_port()  # lost a race for the port: only at first start
                continue
            break
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def twistd_argv() -> list[str]:
    script = Path(sys.executable).with_name("twistd")
    if script.is_file():
        return [sys.executable, str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
    ]


class Daemon:
    """``twistd -n goophry -c cfg``, one log file per incarnation."""

    def __init__(self, workdir: Path, config: Path, verbose: bool) -> None:
        self.workdir = workdir
        self.config = config
        self.verbose = verbose
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.unexpected_exits = 0

    def start(self) -> None:
        n = len(self.logs) + 1
        log_path = self.workdir / f"daemon-{n}.log"
        self.logs.append(log_path)
        argv = [*twistd_argv(), "-n", "--pidfile=", "goophry", "-c", str(self.config)]
        if self.verbose:
            argv.append("-v")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon alone: its scripts run on, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_lines(self) -> Iterable[tuple[str, bytes]]:
        for path in self.logs:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for line in data.splitlines():
                yield path.name, line


def script_pids(marker: bytes) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if marker not in cmdline:
                continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


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


# --------------------------------------------------------------------------
# Entries, the config and the scripts


@dataclass
class Entry:
    id: str
    kind: str  # ok, fail, slow, invalid
    queue: str  # the task type whose queue it goes to
    payload: bytes
    batch: int


def make_entries(count: int, batch_size: int, rng: random.Random) -> list[Entry]:
    entries = []
    invalid_forms = (
        lambda i: b"not json " + i,
        lambda i: b'{"Note":"' + i + b'"}',
        lambda i: b'{"Args":[1,"' + i + b'"]}',
        lambda i: b"\xff\xfe" + i + b"\xc3",
    )
    invalid_n = 0
    for n in range(count):
        ident = f"e{n:06d}"
        roll = rng.random()
        if roll < 0.80:
            kind, queue, payload = "ok", "ok", json.dumps({"Args": [ident]}).encode()
        elif roll < 0.88:
            kind, queue, payload = "fail", "fail", json.dumps({"Args": [ident]}).encode()
        elif roll < 0.91:
            pause = f"{rng.uniform(0.2, 1.0):.2f}"
            kind, queue, payload = "slow", "slow", json.dumps({"Args": [ident, pause]}).encode()
        else:
            kind, queue = "invalid", "ok"
            payload = invalid_forms[invalid_n % len(invalid_forms)](ident.encode())
            invalid_n += 1
        entries.append(Entry(ident, kind, queue, payload, n // batch_size))
    return entries


def write_files(workdir: Path, opts: Options) -> tuple[Path, Path]:
    scripts = workdir / "scripts"
    records = workdir / "records"
    scripts.mkdir()
    records.mkdir()
    bodies = {
        "ok": f"printf '%s\\n' \"$1\" >> '{records}/ok.rec'\n",
        "fail": (
            f"printf '%s\\n' \"$1\" >> '{records}/fail.rec'\necho \"soak failure $1\"\nexit 1\n"
        ),
        "slow": f"sleep \"$2\"\nprintf '%s\\n' \"$1\" >> '{records}/slow.rec'\n",
    }
    for name, body in bodies.items():
        path = scripts / f"{name}.sh"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    workers = {"ok": opts.workers_ok, "fail": opts.workers_fail, "slow": opts.workers_slow}
    config = {
        "RedisAddress": "127.0.0.1:0",  # filled in by run_soak
        "RedisQueueKey": QUEUE_KEY,
        "Tasks": [
            {"Type": t, "Script": str(scripts / f"{t}.sh"), "Workers": workers[t]} for t in TYPES
        ],
        "FailedTasksTTL": 86400,
        "InstanceTimeout": 3,
        "BlockTimeout": 1,
    }
    path = workdir / "goophry.config.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path, scripts


# --------------------------------------------------------------------------
# The run


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
class Result:
    entries: int = 0
    batches: int = 0
    daemon_kills: int = 0
    redis_kills: int = 0
    lost: int = 0
    undrained: int = 0
    unpushed: int = 0
    duplicates: int = 0
    duplicate_runs: int = 0
    producer_duplicates: int = 0
    producer_retries: int = 0
    batches_pushed_twice: int = 0
    failed_list_duplicates: int = 0
    abandoned: int = 0
    unknown_records: int = 0
    daemon_unexpected_exits: int = 0
    drained: bool = False
    elapsed: float = 0.0
    drain_seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    lost_detail: list[dict[str, Any]] = field(default_factory=list)
    duplicate_detail: list[dict[str, Any]] = field(default_factory=list)
    undrained_detail: dict[str, list[str]] = field(default_factory=dict)
    daemon_log: dict[str, int] = field(default_factory=dict)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.undrained == 0 and self.unpushed == 0


class Soak:
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
        self.redis = Redis(self.workdir / "redis")
        self.config, self.scripts = write_files(self.workdir, opts)
        self.daemon = Daemon(self.workdir, self.config, opts.verbose)
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

    def schedule(self) -> list[tuple[float, str]]:
        """(time, what): the kill -9s, spread over the chaos window, 2 s apart at least."""
        opts = self.opts
        window = self.chaos_seconds
        kinds = ["daemon"] * opts.daemon_kills + ["redis"] * opts.redis_kills
        self.rng.shuffle(kinds)
        n = len(kinds)
        if n == 0:
            return []
        # One kill in each of n equal slots, at a random moment inside it.
        slot = (window - 1.0) / n
        times = [1.0 + i * slot + self.rng.uniform(0.1, max(0.2, slot - 2.0)) for i in range(n)]
        return list(zip(times, kinds, strict=True))

    # ---- the main loop

    def run(self) -> Result:
        opts = self.opts
        entries = make_entries(opts.entries, opts.batch, self.rng)
        self.entries = entries
        batches: dict[int, list[Entry]] = collections.defaultdict(list)
        for e in entries:
            batches[e.batch].append(e)
        self.result.entries = len(entries)
        self.result.batches = len(batches)
        self.result.kinds = dict(collections.Counter(e.kind for e in entries))
        # About 200 entries a second get through on two cores (with the kills);
        # push a little slower than that, so that the kills meet entries in
        # flight rather than a long queue, and cause them while entries flow.
        self.push_seconds = opts.push_seconds or max(5.0, opts.entries / 150.0)
        self.chaos_seconds = opts.chaos_seconds or self.push_seconds
        hard_deadline = opts.duration_limit

        self.redis.start()
        cfg = json.loads(self.config.read_text())
        cfg["RedisAddress"] = f"127.0.0.1:{self.redis.port}"
        self.config.write_text(json.dumps(cfg, indent=2) + "\n")
        self.say(f"redis-server on port {self.redis.port}, workdir {self.workdir}")
        self.daemon.start()

        events = self.schedule()
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
                    pause = self.rng.uniform(0.1, 1.5)
                    self.say(f"kill -9 daemon (pid {self.daemon.pid}); back in {pause:.2f}s")
                    pending.append((now + pause, "daemon-start"))
                elif what == "redis":
                    self.redis.kill()
                    self.result.redis_kills += 1
                    pause = self.rng.uniform(0.2, 2.0)
                    self.say(f"kill -9 redis-server; back in {pause:.2f}s")
                    pending.append((now + pause, "redis-start"))
                elif what == "daemon-start":
                    self.daemon.start()
                    daemon_down = False
                    self.say(f"daemon started again (pid {self.daemon.pid})")
                elif what == "redis-start":
                    self.redis.start()
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
        code = self.daemon.proc.returncode if self.daemon.proc else None
        self.result.daemon_unexpected_exits += 1
        self.say(f"daemon exited by itself (code {code}); see {self.daemon.logs[-1]}; restarting")
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
            while not self.push(number, batches[number]):
                self.result.producer_retries += 1
                if self.stop_producer.wait(0.1):
                    return
            self.acknowledged += 1

    def push(self, number: int, batch: list[Entry]) -> bool:
        """One MULTI/EXEC: the batch's RPUSHes and its landing counter. True if acknowledged."""
        by_queue: dict[str, list[bytes]] = collections.defaultdict(list)
        for e in batch:
            by_queue[e.queue].append(e.payload)
        commands: list[list[object]] = [["MULTI"]]
        for queue, payloads in by_queue.items():
            commands.append(["RPUSH", f"{QUEUE_KEY}:{queue}", *payloads])
        commands.append(["HINCRBY", PUSHES_KEY, str(number), 1])
        commands.append(["EXEC"])
        try:
            replies = pipeline(self.redis.port, commands, timeout=5.0)
        except OSError:
            return False
        return isinstance(replies[-1], list)

    # ---- draining

    def redis_state(self) -> tuple[int, int]:
        """(entries in the queues, entries in in-flight lists)."""
        queued = sum(command(self.redis.port, "LLEN", f"{QUEUE_KEY}:{t}") for t in TYPES)
        inflight = 0
        cursor = b"0"
        while True:
            cursor, keys = command(
                self.redis.port, "SCAN", cursor, "MATCH", f"{QUEUE_KEY}:*:inflight:*", "COUNT", 1000
            )
            for key in keys:
                inflight += command(self.redis.port, "LLEN", key)
            if cursor == b"0":
                break
        return queued, inflight

    def drain(self, deadline: float) -> bool:
        """
        Wait until the queues and in-flight lists are empty and no script runs.

        Gives up early when entries sit in in-flight lists with nothing running
        and nothing changing for ``stall_seconds``: no one will ever move them.
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
            except (OSError, RedisError):
                queued, inflight = -1, -1
            scripts = len(script_pids(marker))
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
        res = self.result
        port = self.redis.port
        pushes_raw = command(port, "HGETALL", PUSHES_KEY) or []
        pushes = {int(k): int(v) for k, v in zip(pushes_raw[::2], pushes_raw[1::2], strict=True)}
        res.batches_pushed_twice = sum(1 for v in pushes.values() if v > 1)

        runs: dict[str, collections.Counter[str]] = {}
        for t in TYPES:
            path = self.workdir / "records" / f"{t}.rec"
            text = path.read_text() if path.exists() else ""
            runs[t] = collections.Counter(line for line in text.split("\n") if line)
            res.runs[t] = sum(runs[t].values())

        failed: collections.Counter[str] = collections.Counter()
        failed_messages: dict[str, list[str]] = collections.defaultdict(list)
        for t in TYPES:
            for raw in command(port, "LRANGE", f"{QUEUE_KEY}:{t}:failed", 0, -1):
                record = json.loads(raw)
                args = record.get("Args")
                ident: str | None = None
                if isinstance(args, list) and args and isinstance(args[0], str):
                    ident = args[0]
                elif isinstance(record.get("Payload"), str):
                    match = ID_RE.search(record["Payload"].encode("utf-8", "surrogateescape"))
                    ident = match.group().decode() if match else None
                if ident is None:
                    res.unknown_records += 1
                    continue
                failed[ident] += 1
                failed_messages[ident].append(str(record.get("ErrorMessage", ""))[:200])

        queued_ids: dict[str, str] = {}
        if not res.drained:
            for t in TYPES:
                keys = [f"{QUEUE_KEY}:{t}".encode()]
                keys += command(port, "KEYS", f"{QUEUE_KEY}:{t}:inflight:*")
                for key in keys:
                    for raw in command(port, "LRANGE", key, 0, -1):
                        m = ID_RE.search(raw)
                        if m:
                            queued_ids[m.group().decode()] = key.decode()
            where: dict[str, list[str]] = collections.defaultdict(list)
            for ident, key in sorted(queued_ids.items()):
                where[key].append(ident)
            live = f":{self.daemon.pid}:"
            for key, idents in where.items():
                note = " (the live daemon's)" if live in key else ""
                res.undrained_detail[key + note] = idents[:20]
                self.say(f"undrained: {len(idents)} in {key}{note}: {' '.join(idents[:10])}")

        known = {e.id for e in self.entries}
        for t in TYPES:
            res.unknown_records += sum(n for i, n in runs[t].items() if i not in known)
        res.unknown_records += sum(n for i, n in failed.items() if i not in known)

        for e in self.entries:
            landed = pushes.get(e.batch, 0)
            ran = runs["ok"][e.id] + runs["slow"][e.id] if e.kind in ("ok", "slow") else 0
            if e.kind == "fail":
                ran = runs["fail"][e.id]
            stored = failed[e.id]
            if e.kind in ("ok", "slow"):
                accounted = ran + stored
                if stored:
                    res.abandoned += 1
            else:
                accounted = stored  # a failure counts only once it is stored
            if e.id in queued_ids:
                res.undrained += 1
                continue
            if landed == 0 and accounted == 0:
                res.unpushed += 1  # the producer never got its batch in (time limit)
                continue
            if accounted == 0 or accounted < landed:
                res.lost += 1
                if len(res.lost_detail) < 50:
                    res.lost_detail.append(self.lost_info(e, landed, ran, stored))
                continue
            # Duplicate runs beyond the copies the producer pushed are the daemon's.
            daemon_dup = False
            if ran > 1:
                if ran > landed:
                    res.duplicates += 1
                    res.duplicate_runs += ran - max(1, landed)
                    daemon_dup = True
                else:
                    res.producer_duplicates += 1
            if stored > max(1, landed):
                res.failed_list_duplicates += 1
                daemon_dup = True
            if daemon_dup and len(res.duplicate_detail) < 50:
                res.duplicate_detail.append(
                    {"id": e.id, "kind": e.kind, "pushes": landed, "ran": ran, "stored": stored}
                )
        res.daemon_log = scan_logs(self.daemon.log_lines())
        if res.lost_detail:
            self.say(f"{res.lost} entries lost; first: {json.dumps(res.lost_detail[:3])}")

    def lost_info(self, e: Entry, landed: int, ran: int, stored: int) -> dict[str, Any]:
        lines = []
        needle = e.id.encode()
        for name, line in self.daemon.log_lines():
            if needle in line:
                lines.append(f"{name}: {line.decode(errors='replace')[:300]}")
        return {
            "id": e.id,
            "kind": e.kind,
            "batch": e.batch,
            "pushes": landed,
            "ran": ran,
            "stored": stored,
            "log": lines[:10],
        }

    # ---- cleanup

    def close(self) -> None:
        try:
            self.daemon.terminate()
        finally:
            self.daemon.kill()
            for pid in script_pids(str(self.scripts).encode()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.redis.kill()


# --------------------------------------------------------------------------
# Reporting and the command line


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
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[1])
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


def run_soak(opts: Options) -> Result:
    soak = Soak(opts)
    try:
        res = soak.run()
    finally:
        soak.close()
    if res.ok and not opts.keep and not opts.workdir:
        shutil.rmtree(soak.workdir, ignore_errors=True)
        res.workdir = ""
    return res


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


if __name__ == "__main__":
    sys.exit(main())
