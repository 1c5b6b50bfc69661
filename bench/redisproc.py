"""A private redis-server for the benchmark, and a tiny RESP client for it."""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import IO

Arg = str | bytes | int | float
Reply = bytes | int | str | list["Reply"] | None


class RedisError(Exception):
    """An error reply from Redis."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def encode(*args: Arg) -> bytes:
    """One command in RESP, ready to send."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int | float):
            arg = str(arg)
        if isinstance(arg, str):
            arg = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _read_reply(f: IO[bytes]) -> Reply:
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [_read_reply(f) for _ in range(count)]
    raise RedisError(f"unexpected reply line {line!r}")


class RespClient:
    """A blocking Redis connection that counts the commands it sends by name.

    The counts let the harness subtract its own traffic from INFO commandstats.
    """

    def __init__(self, host: str, port: int, timeout: float | None = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.sent: collections.Counter[str] = collections.Counter()

    def close(self) -> None:
        """Close the connection."""
        self.reader.close()
        self.sock.close()

    def send(self, commands: Sequence[Sequence[Arg]]) -> None:
        """Send commands without reading their replies (see `read`)."""
        for cmd in commands:
            name = cmd[0]
            self.sent[(name.decode() if isinstance(name, bytes) else str(name)).lower()] += 1
        self.sock.sendall(b"".join(encode(*cmd) for cmd in commands))

    def read(self) -> Reply:
        """Read one reply."""
        return _read_reply(self.reader)

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Send commands in one write and return their replies."""
        self.send(commands)
        return [self.read() for _ in commands]

    def call(self, *args: Arg) -> Reply:
        """One command, one reply."""
        return self.pipeline([args])[0]

    def info(self, section: str) -> dict[str, str]:
        """INFO <section> as a flat dict of strings."""
        raw = self.call("INFO", section)
        assert isinstance(raw, bytes)
        out: dict[str, str] = {}
        for line in raw.decode().splitlines():
            if line and not line.startswith("#") and ":" in line:
                key, _, value = line.partition(":")
                out[key] = value
        return out

    def commandstats(self) -> dict[str, int]:
        """Calls per command since start (or CONFIG RESETSTAT)."""
        calls: dict[str, int] = {}
        for key, value in self.info("commandstats").items():
            fields = dict(kv.split("=", 1) for kv in value.split(","))
            calls[key.removeprefix("cmdstat_")] = int(fields["calls"])
        return calls

    def push_many(self, key: str, payloads: Iterable[bytes], per_command: int = 1000) -> int:
        """RPUSH payloads onto key, many per command, all commands in one write."""
        items = list(payloads)
        cmds: list[list[Arg]] = [
            ["RPUSH", key, *items[i : i + per_command]] for i in range(0, len(items), per_command)
        ]
        replies = self.pipeline(cmds)
        return int(replies[-1]) if replies and isinstance(replies[-1], int) else 0


class CommandMeter:
    """Commands other clients sent between `start` and `stop` (ours subtracted)."""

    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.before: dict[str, int] = {}
        self.sent_before: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        """Take the first snapshot."""
        self.sent_before = collections.Counter(self.client.sent)
        self.before = self.client.commandstats()

    def stop(self) -> dict[str, int]:
        """Per-command calls by others since `start` (zero counts dropped)."""
        mine = collections.Counter(self.client.sent)
        mine.subtract(self.sent_before)
        after = self.client.commandstats()
        delta = {k: v - self.before.get(k, 0) - mine.get(k, 0) for k, v in after.items()}
        return {k: v for k, v in sorted(delta.items()) if v}


class RedisServer:
    """A redis-server on a free port of 127.0.0.1, no persistence, in a temp dir."""

    def __init__(self, workdir: str, binary: str | None = None) -> None:
        self.workdir = workdir
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.port = free_port()
        log = open(os.path.join(self.workdir, "redis.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
                "--maxclients",
                "2000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                c = RespClient("127.0.0.1", self.port, timeout=1.0)
                c.call("PING")
                c.close()
                return
            except (OSError, RedisError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (see {log.name})") from None
                time.sleep(0.02)

    def client(self) -> RespClient:
        """A new connection to this server."""
        return RespClient("127.0.0.1", self.port)

    def stop(self) -> None:
        """Stop the server."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
