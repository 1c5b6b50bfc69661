"""Test helpers shared by the whole suite: real Redis servers, real daemons.

Everything here is synchronous and talks to external processes, so it suits
integration tests; unit tests use fakes and the reactor's ``Clock`` instead.
The Redis client is a tiny RESP speaker written with ``socket`` so that the
tests do not depend on redis-py or on the daemon's own client.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import trustme

REPO_ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# `python -m twisted` is `twist`, not `twistd`; run the venv's twistd script
# with this interpreter, or the same entry point through `-c` when it is absent.
_TWISTD_SCRIPT = Path(sys.executable).with_name("twistd")
TWISTD = (
    [sys.executable, str(_TWISTD_SCRIPT)]
    if _TWISTD_SCRIPT.is_file()
    else [
        sys.executable,
        "-c",
        "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
    ]
)
TAC_FILE = REPO_ROOT / "goophry.tac"

RespValue = bytes | int | list["RespValue"] | None


# --------------------------------------------------------------------------
# Polling and ports


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition not met",
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Only for conditions outside the test process (a subprocess's log, a Redis
    key); the bound turns a hang into an AssertionError that says what was
    awaited. ``message`` may be a callable, evaluated only on failure (e.g. to
    attach a log).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s: {text}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------
# A minimal synchronous Redis (RESP2) client


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


def _encode_command(args: Sequence[object]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = str(arg).encode()
        else:
            raise TypeError(f"cannot send {arg!r} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Reader:
    """Reads RESP replies from a socket, buffering partial frames."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buf += chunk

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._fill()
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n + 2 :]
        return data

    def reply(self) -> RespValue:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ValueError(f"unexpected RESP reply {line!r}")


def redis_command(
    host: str,
    port: int,
    *args: object,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> RespValue:
    """Run one Redis command on a fresh connection and return its reply.

    Simple strings and bulk strings come back as bytes, integers as int,
    arrays as lists, nil as None; an error reply raises RedisReplyError.
    With ``context``, the connection is TLS.
    """
    [reply] = redis_pipeline(host, port, args, timeout=timeout, context=context)
    return reply


def redis_pipeline(
    host: str,
    port: int,
    *commands: Sequence[object],
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> list[RespValue]:
    """Run several commands on one connection (e.g. MULTI ... EXEC), in order.

    Every reply is read before the first error reply is raised, so the
    connection is never left half-read.  With ``context``, the connection is TLS.
    """
    plain = socket.create_connection((host, port), timeout=timeout)
    sock = plain if context is None else context.wrap_socket(plain, server_hostname=host)
    with sock:
        sock.sendall(b"".join(_encode_command(command) for command in commands))
        reader = _Reader(sock)
        replies: list[RespValue] = []
        errors: list[RedisReplyError] = []
        for _ in commands:
            try:
                replies.append(reader.reply())
            except RedisReplyError as error:
                errors.append(error)
                replies.append(None)
        if errors:
            raise errors[0]
        return replies


# --------------------------------------------------------------------------
# redis-server subprocesses


class RedisServer:
    """A real redis-server on 127.0.0.1, owned by the test suite.

    It keeps its port and directory across ``kill()`` / ``start()``, so tests
    can take Redis away and bring it back where the daemon expects it.
    """

    host = "127.0.0.1"
    #: How the suite's own client connects: plain TCP unless TLS.
    context: ssl.SSLContext | None = None

    def __init__(self, directory: Path, port: int | None = None, **config: str) -> None:
        self.dir = directory
        self.port = port if port is not None else free_port()
        self._fixed_port = port is not None
        self.config: dict[str, str] = {
            "save": "",
            "appendonly": "no",
            **{key.replace("_", "-"): value for key, value in config.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis-server.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir)]
        for key, value in self.config.items():
            argv += [f"--{key}", value]
        return argv

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """True when the server replies PONG (any failure counts as no)."""
        try:
            reply = redis_command(self.host, self.port, "PING", timeout=1.0, context=self.context)
            return reply == b"PONG"
        except (OSError, RedisReplyError):
            return False

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart) the server and wait until it answers PING.

        On the very first start of a server whose port was picked here, a lost
        race for that port is retried on a new one.
        """
        if self.running():
            raise RuntimeError(f"redis-server on {self.address} is already running")
        attempts = 1 if (self._fixed_port or self.proc is not None) else 3
        for attempt in range(attempts):
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                wait_for(
                    lambda: self.answers() or not self.running(),
                    timeout=timeout,
                    message=lambda: (
                        f"redis-server on {self.address} to answer PING\n" + self.log_text()
                    ),
                )
            except AssertionError:
                self.kill()
                raise
            if self.running():
                return self
            if attempt + 1 < attempts:
                self.port = free_port()
        raise RuntimeError(f"redis-server did not start on {self.address}:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down cleanly (SIGTERM: Redis saves nothing here)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the server, as a crash or a lost host would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cli(self, *args: object) -> RespValue:
        """Run one raw Redis command, e.g. ``server.cli("LRANGE", key, 0, -1)``."""
        return redis_command(self.host, self.port, *args, context=self.context)

    def pipeline(self, *commands: Sequence[object]) -> list[RespValue]:
        """Several commands on one connection: ``pipeline(["MULTI"], [...], ["EXEC"])``."""
        return redis_pipeline(self.host, self.port, *commands, context=self.context)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"<RedisServer {self.address} running={self.running()}>"


class TLSRedisServer(RedisServer):
    """A redis-server that speaks TLS only (``--port 0 --tls-port``).

    Its certificate, for 127.0.0.1 and localhost, is issued by ``ca``; so is a
    client certificate (``client_cert``, ``client_key``), which the server
    demands with ``auth_clients=True``.  The suite's own client presents it.
    """

    def __init__(
        self,
        directory: Path,
        ca: trustme.CA,
        auth_clients: bool = False,
        port: int | None = None,
        **config: str,
    ) -> None:
        self.ca_file = directory / "ca.pem"
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client.key"
        server_cert, server_key = directory / "server.pem", directory / "server.key"
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        server_cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(server_key))
        client = ca.issue_cert("goophry-client")
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        super().__init__(
            directory,
            port,
            tls_cert_file=str(server_cert),
            tls_key_file=str(server_key),
            tls_ca_cert_file=str(self.ca_file),
            tls_auth_clients="yes" if auth_clients else "no",
            **config,
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        self.context = context

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("--port")
        argv[at : at + 2] = ["--port", "0", "--tls-port", str(self.port)]
        return argv

    def __repr__(self) -> str:
        return f"<TLSRedisServer {self.address} running={self.running()}>"


class SentinelServer(RedisServer):
    """A redis-server in sentinel mode, watching ``master`` under ``name``.

    Failures are noticed after ``down_after_ms``; a failover gives up after
    ``failover_timeout_ms``.  Kept short, a failover takes a few seconds.
    When ``master`` speaks TLS only, so does the sentinel, with its certificates.
    """

    def __init__(
        self,
        directory: Path,
        master: RedisServer,
        name: str,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        super().__init__(directory)
        self.conf = directory / "sentinel.conf"
        self.conf.write_text(
            f"sentinel monitor {name} {master.host} {master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        self.name = name
        #: The master's certificates, when it speaks TLS only.
        self.tls: dict[str, str] = {}
        if isinstance(master, TLSRedisServer):
            self.context = master.context
            self.tls = {k: v for k, v in master.config.items() if k.startswith("tls-")}
            self.tls["tls-replication"] = "yes"

    def argv(self) -> list[str]:
        # Sentinel rewrites its file (what it learns of replicas and other sentinels).
        argv = [REDIS_SERVER, str(self.conf), "--sentinel", "--port", str(self.port)]
        argv += ["--bind", self.host, "--dir", str(self.dir)]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port)]
            for key, value in self.tls.items():
                argv += [f"--{key}", value]
        return argv

    def master_port(self) -> int | None:
        """The port of the master this sentinel names now (None if it names none)."""
        reply = self.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        return int(reply[1])  # type: ignore[arg-type]


class SentinelGroup:
    """A master, a replica and three sentinels on loopback ports: Redis's own failover.

    ``master`` and ``replica`` are the servers as started; after a failover,
    ``current_master()`` is the one the sentinels agree on.
    """

    name = "goophry"

    def __init__(self, make_server: Callable[..., RedisServer], directory: Callable[[], Path]):
        self.master = make_server()
        self.replica = make_server(replicaof=f"{self.master.host} {self.master.port}")
        self.sentinels = [SentinelServer(directory(), self.master, self.name) for _ in range(3)]
        try:
            for sentinel in self.sentinels:
                sentinel.start()
            wait_for(
                self.ready,
                20,
                message=lambda: "the replica in sync and the sentinels aware of each other",
            )
        except BaseException:
            self.kill()
            raise

    @property
    def addresses(self) -> list[str]:
        return [sentinel.address for sentinel in self.sentinels]

    def ready(self) -> bool:
        """The replica is in sync and every sentinel knows the replica and the others."""
        info = self.replica.cli("INFO", "replication")
        if not isinstance(info, bytes) or b"master_link_status:up" not in info:
            return False
        for sentinel in self.sentinels:
            state = sentinel.cli("SENTINEL", "MASTER", self.name)
            assert isinstance(state, list)
            fields = dict(zip(state[::2], state[1::2], strict=True))
            if fields[b"num-slaves"] != b"1" or fields[b"num-other-sentinels"] != b"2":
                return False
        return True

    def current_master(self) -> RedisServer | None:
        """The server every live sentinel names as the master, once they agree."""
        ports = {s.master_port() for s in self.sentinels if s.running()}
        if len(ports) != 1:
            return None
        [port] = ports
        return next((s for s in (self.master, self.replica) if s.port == port), None)

    def kill(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.kill()


# --------------------------------------------------------------------------
# Files a test needs: configs and scripts


def write_script(directory: Path, name: str, body: str) -> Path:
    """Write an executable shell script (``#!/bin/sh`` unless body has its own ``#!``)."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = body if body.startswith("#!") else "#!/bin/sh\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")
    path.chmod(0o755)
    return path


def write_config(
    directory: Path, *, filename: str = "goophry.config.json", **settings: Any
) -> Path:
    """Write a JSON config from keyword settings; a value of None leaves the key out.

    Paths are written as strings; the caller supplies everything, including
    Tasks (the ``write_config`` fixture fills in RedisAddress and RedisQueueKey).
    """
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in settings.items()
        if value is not None
    }
    path = directory / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, default=str) + "\n")
    return path


# --------------------------------------------------------------------------
# The daemon (or any long-running program) as a subprocess


class DaemonProcess:
    """A subprocess whose stdout and stderr go to a log file the test can read.

    It runs in a session of its own: signals sent to the test runner's group
    do not reach it, ``signal_group`` imitates Ctrl-C at a terminal, and
    ``kill_session`` can clean up every script it left behind.
    """

    def __init__(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path
    ) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.log_path = log_path
        log: IO[bytes]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log; fail early if the process exits."""

        def seen() -> bool:
            if text in self.log_text():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.proc.returncode}) before logging {text!r}:\n"
                    + self.log_text()
                )
            return False

        wait_for(seen, timeout, message=lambda: f"{text!r} in the log:\n{self.log_text()}")
        return self.log_text()

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """Signal the process group, as a terminal does on Ctrl-C."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the exit and return its code; a hang fails with the log."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"pid {self.pid} still running after {timeout:g}s:\n{self.log_text()}"
            ) from None

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (bounded); SIGKILL and fail if it does not exit."""
        if self.running():
            self.proc.terminate()
        try:
            return self.wait(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the process itself (its scripts survive, as after a crash)."""
        if self.running():
            self.proc.kill()
        self.proc.wait(10)

    def kill_session(self) -> None:
        """SIGKILL everything still in the process's session, scripts included."""
        self.kill()
        for pid in _session_members(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __repr__(self) -> str:
        return f"<DaemonProcess pid={self.pid} running={self.running()}>"


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid:
                members.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return members


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment: ours, with the checkout first on PYTHONPATH.

    The checkout's ``twisted/plugins/`` is how twistd finds the goophry plugin.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def daemon_argv(
    config_path: Path, extra_args: Sequence[str], how: str, twistd_args: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """The command line (and extra environment) for each way of starting Goophry.

    ``twistd``: the plugin, ``twistd -n goophry -c cfg ...``;
    ``tac``: ``twistd -n -y goophry.tac`` with GOOPHRY_CONFIG;
    ``cli``: the original's command line, ``goophry -c cfg ...``.
    """
    if how == "twistd":
        return [*TWISTD, "-n", *twistd_args, "goophry", "-c", str(config_path), *extra_args], {}
    if how == "tac":
        argv = [*TWISTD, "-n", *twistd_args, "-y", str(TAC_FILE), *extra_args]
        return argv, {"GOOPHRY_CONFIG": str(config_path)}
    if how == "cli":
        return [sys.executable, "-m", "goophry_tx.cli", "-c", str(config_path), *extra_args], {}
    raise ValueError(f"unknown way to start the daemon: {how!r}")
