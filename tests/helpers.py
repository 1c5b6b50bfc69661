"""
The one harness of the test suite, the benchmark and the soak.

Real Redis servers, real daemons, and what they are asked from outside: a tiny
RESP speaker written with C{socket} (so that nothing here depends on redis-py
or on the daemon's own client), a redis-server launcher, a daemon launcher,
the stats getter and a look at C{/proc}.  Everything is synchronous and talks
to external processes: it suits integration tests, C{bench/} and the soak;
unit tests use fakes and a C{Clock} instead.  Key names come from
L{goophry_tx.keys.Keys}, as the daemon builds them.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import trustme

from goophry_tx import __version__
from goophry_tx.keys import Keys

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
    """
    Poll C{predicate} until it returns something truthy, and return that.

    Only for conditions outside the test process (a subprocess's log, a Redis
    key); the bound turns a hang into an C{AssertionError} that says what was
    awaited.  C{message} may be a callable, evaluated only on failure (e.g. to
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


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """
    A port on 127.0.0.1 that refuses every connection while the block lasts:
    bound but not listening, so that no other server (another test's, on a
    shared machine) can take it meanwhile, as it can a L{free_port}.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


# --------------------------------------------------------------------------
# A minimal synchronous Redis (RESP2) client


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (C{-ERR ...})."""


def encode_command(args: Sequence[object]) -> bytes:
    """One command in RESP, ready to send: str, bytes, int and float arguments."""
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


def _parse_reply(f: IO[bytes]) -> RespValue | RedisReplyError:
    """One reply; an error reply (or an array holding one, as EXEC's) as a value."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("Redis closed the connection")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        # Every item is read, so that an error inside leaves the stream whole.
        items = [_parse_reply(f) for _ in range(count)]
        errors = [item for item in items if isinstance(item, RedisReplyError)]
        return errors[0] if errors else items  # type: ignore[return-value]
    raise ConnectionError(f"unexpected RESP reply {line!r}")


class RedisConnection:
    """
    A blocking connection to Redis that counts the commands it sends by name.

    Simple strings and bulk strings come back as bytes, integers as int,
    arrays as lists, nil as None; an error reply raises L{RedisReplyError}.
    The counts let the benchmark subtract its own traffic from INFO
    commandstats.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float | None = 10.0,
        context: ssl.SSLContext | None = None,
    ) -> None:
        plain = socket.create_connection((host, port), timeout=timeout)
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # With a context, the connection is TLS.
        self.sock = plain if context is None else context.wrap_socket(plain, server_hostname=host)
        self._reader = self.sock.makefile("rb")
        self.sent: collections.Counter[str] = collections.Counter()

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> RedisConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, commands: Sequence[Sequence[object]]) -> None:
        """Send commands in one write, without reading their replies (see L{read})."""
        for command in commands:
            name = command[0]
            self.sent[(name.decode() if isinstance(name, bytes) else str(name)).lower()] += 1
        self.sock.sendall(b"".join(encode_command(command) for command in commands))

    def read(self) -> RespValue:
        """Read one reply."""
        reply = _parse_reply(self._reader)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: Sequence[Sequence[object]]) -> list[RespValue]:
        """
        Send commands in one write and return their replies, in order.

        Every reply is read before the first error reply is raised, so the
        connection is never left half-read.
        """
        self.send(commands)
        replies = [_parse_reply(self._reader) for _ in commands]
        for reply in replies:
            if isinstance(reply, RedisReplyError):
                raise reply
        return replies  # type: ignore[return-value]

    def call(self, *args: object) -> RespValue:
        """One command, one reply."""
        [reply] = self.pipeline([args])
        return reply

    def info(self, section: str) -> dict[str, str]:
        """C{INFO <section>} as a flat dict of strings."""
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


def redis_command(
    host: str,
    port: int,
    *args: object,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> RespValue:
    """Run one Redis command on a fresh connection and return its reply (TLS with C{context})."""
    [reply] = redis_pipeline(host, port, args, timeout=timeout, context=context)
    return reply


def redis_pipeline(
    host: str,
    port: int,
    *commands: Sequence[object],
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> list[RespValue]:
    """Run several commands on one fresh connection (e.g. MULTI ... EXEC), in order."""
    with RedisConnection(host, port, timeout, context) as connection:
        return connection.pipeline(commands)


# --------------------------------------------------------------------------
# redis-server subprocesses


class RedisServer:
    """
    A real redis-server on 127.0.0.1, with no persistence unless asked.

    It keeps its port and directory across C{kill()} / C{start()}, so a test
    or the soak can take Redis away and bring it back where the daemon
    expects it.  Keyword arguments become redis-server options (C{_} is
    written C{-}), e.g. C{RedisServer(d, appendonly="yes")}.
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
        """
        Start (or restart) the server and wait until it answers PING.

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

    def connect(self, timeout: float | None = 10.0) -> RedisConnection:
        """A new connection that stays open (the caller closes it)."""
        return RedisConnection(self.host, self.port, timeout, self.context)

    def cli(self, *args: object, timeout: float = 10.0) -> RespValue:
        """Run one raw Redis command, e.g. C{server.cli("LRANGE", key, 0, -1)}."""
        return redis_command(self.host, self.port, *args, timeout=timeout, context=self.context)

    def pipeline(self, *commands: Sequence[object], timeout: float = 10.0) -> list[RespValue]:
        """Several commands on one connection: C{pipeline(["MULTI"], [...], ["EXEC"])}."""
        return redis_pipeline(
            self.host, self.port, *commands, timeout=timeout, context=self.context
        )

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
    """Write an executable shell script (C{#!/bin/sh} unless body has its own C{#!})."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = body if body.startswith("#!") else "#!/bin/sh\n" + body
    path.write_text(text if text.endswith("\n") else text + "\n")
    path.chmod(0o755)
    return path


def shell_wait_for(path: Path, seconds: int = 30) -> str:
    """
    A shell line that waits until C{path} exists: a script that holds its
    worker until the test releases it, rather than for a time that a loaded
    machine may outlast.  Bounded, so that an orphan ends by itself.
    """
    polls = seconds * 20
    return f"i=0; while [ ! -e {path} ] && [ $i -lt {polls} ]; do sleep 0.05; i=$((i+1)); done"


def shell_write(path: Path, command: str) -> str:
    """
    A shell line that writes C{command}'s output to C{path} whole: to a
    temporary file first, then renamed, so that a test that sees C{path}
    never reads it half written.
    """
    return f"{command} > {path}.tmp && mv {path}.tmp {path}"


def write_config(
    directory: Path, *, filename: str = "goophry.config.json", **settings: Any
) -> Path:
    """
    Write a JSON config from keyword settings; a value of None leaves the key out.

    Paths are written as strings; the caller supplies everything, including
    Tasks (the C{write_config} fixture fills in RedisAddress and RedisQueueKey).
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


#: Logged once the configuration is loaded and the service has started.
STARTED = f"Goophry {__version__} instance "


def wait_started(daemon: DaemonProcess, timeout: float = 20.0) -> DaemonProcess:
    """Wait until the daemon has loaded its config and started its service."""
    daemon.wait_for_log(STARTED, timeout)
    return daemon


class Launched(NamedTuple):
    """What L{Harness.launch} made."""

    daemon: DaemonProcess
    script: Path
    config: Path


def task_payload(*args: str) -> bytes:
    """An entry as producers push it: C{{"Args": [...]}}."""
    return json.dumps({"Args": list(args)}).encode()


class Harness:
    """
    One test's C{RedisQueueKey} on one Redis, its scripts and configs, and the
    daemons it starts.

    Key names come from L{Keys}, so they are the daemon's own.  Scripts go to
    C{<directory>/scripts}, the config to C{<directory>/goophry.config.json}.
    """

    def __init__(
        self,
        redis: RedisServer,
        queue_key: str,
        directory: Path,
        run_daemon: Callable[..., DaemonProcess] | None = None,
    ) -> None:
        self.redis = redis
        self.key = queue_key
        self.keys = Keys(queue_key)
        self.tmp_path = directory
        self._run_daemon = run_daemon

    def queue(self, task_type: str) -> str:
        return self.keys.queue(task_type)

    def failed_key(self, task_type: str) -> str:
        return self.keys.failed(task_type)

    def push_payloads(self, task_type: str, *payloads: str | bytes) -> None:
        """RPUSH raw entries, in order."""
        self.redis.cli("RPUSH", self.queue(task_type), *payloads)

    def push_args(self, task_type: str, *args: str) -> bytes:
        """Push one task with these Args; return the entry."""
        payload = task_payload(*args)
        self.push_payloads(task_type, payload)
        return payload

    def lrange(self, key: str | bytes) -> list[bytes]:
        items = self.redis.cli("LRANGE", key, 0, -1)
        assert isinstance(items, list)
        return items  # type: ignore[return-value]

    def llen(self, key: str | bytes) -> int:
        length = self.redis.cli("LLEN", key)
        assert isinstance(length, int)
        return length

    def failed(self, task_type: str) -> list[dict[str, Any]]:
        """The failed list of a type, decoded."""
        return [json.loads(item) for item in self.lrange(self.failed_key(task_type))]

    def inflight_keys(self) -> list[bytes]:
        """Every in-flight list under the prefix, sorted."""
        keys = self.redis.cli("KEYS", self.keys.inflight("*", "*"))
        assert isinstance(keys, list)
        return sorted(keys)  # type: ignore[arg-type]

    def instances(self) -> list[bytes]:
        """The names of the registered daemon instances."""
        names = self.redis.cli("HKEYS", self.keys.instances)
        assert isinstance(names, list)
        return names  # type: ignore[return-value]

    def stamped(self, entry: Mapping[str, Any], daemon: DaemonProcess) -> dict[str, Any]:
        """
        A failed entry without the fields a daemon stamps it with, once they
        are checked: C{FailedAt}, a recent whole number of unix seconds, and
        C{Instance}, the registered name of the instance C{daemon} runs.
        """
        fields = dict(entry)
        failed_at = fields.pop("FailedAt", None)
        instance = fields.pop("Instance", None)
        now = time.time()
        assert isinstance(failed_at, int) and now - 300 < failed_at <= now, entry
        names = [name.decode() for name in self.instances()]
        assert instance in names and f":{daemon.pid}:" in instance, (entry, names)
        return fields

    def wait_failed(self, task_type: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        """Wait until the failed list holds C{count} entries; return them decoded."""
        wait_for(
            lambda: self.llen(self.failed_key(task_type)) >= count,
            timeout,
            message=f"{count} entries in {self.failed_key(task_type)}",
        )
        return self.failed(task_type)

    def script(self, name: str, body: str) -> Path:
        """An executable script in the scripts directory (see L{write_script})."""
        return write_script(self.tmp_path / "scripts", name, body)

    def config(self, tasks: list[dict[str, Any]], **settings: Any) -> Path:
        """The config file, pointing at this Redis and queue key unless told otherwise."""
        settings.setdefault("RedisAddress", self.redis.address)
        settings.setdefault("RedisQueueKey", self.key)
        return write_config(self.tmp_path, Tasks=tasks, **settings)

    def start(
        self, config_path: Path, *args: str, timeout: float = 20.0, **options: Any
    ) -> DaemonProcess:
        """Start a daemon (C{options} as C{run_daemon} takes them); wait until it started."""
        if self._run_daemon is None:
            raise RuntimeError("this harness was made without a way to start daemons")
        return wait_started(self._run_daemon(config_path, *args, **options), timeout)

    def launch(
        self,
        body: str,
        *payloads: str | bytes,
        task_type: str = "t",
        task: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        how: str = "twistd",
        **settings: Any,
    ) -> Launched:
        """
        What most tests begin with: write the script and a config with one task
        type, start the daemon, wait until it started, and push C{payloads}.

        @param body: the script of C{task_type} (see L{write_script}).
        @param task: more of the task's settings, e.g. C{{"Workers": 2}}.
        @param args: the daemon's command-line options, e.g. C{["-v"]}.
        @param settings: more config settings, e.g. C{FailedTasksTTL=60}.
        """
        script = self.script(f"{task_type}.sh", body)
        config = self.config(
            [{"Type": task_type, "Script": str(script), **(task or {})}], **settings
        )
        daemon = self.start(config, *args, how=how)
        if payloads:
            self.push_payloads(task_type, *payloads)
        return Launched(daemon, script, config)

    def wait_settled(self, timeout: float = 10.0, message: str | Callable[[], str] = "") -> None:
        """
        Wait until no entry is in flight: every outcome taken so far is written.

        Check the failed list after this, not before: a failure is stored when
        the outcome is written, after the script has left its marks.
        """
        wait_for(
            lambda: not self.inflight_keys(),
            timeout,
            message=message or "every in-flight list emptied (outcomes written)",
        )


# --------------------------------------------------------------------------
# The daemon (or any long-running program) as a subprocess


class DaemonProcess:
    """
    A subprocess whose stdout and stderr go to a log file the caller can read.

    It runs in a session of its own: signals sent to the runner's group do
    not reach it, C{signal_group} imitates Ctrl-C at a terminal, and
    C{kill_session} can clean up every script it left behind.
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
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until C{text} appears in the log; fail early if the process exits."""

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

    def wait(self, timeout: float = 10.0, expected: str = "") -> int:
        """
        Wait for the exit and return its code; a hang fails with the log.

        @param expected: what the bound stands for, said when it is exceeded.
        """
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            why = f" ({expected})" if expected else ""
            raise AssertionError(
                f"pid {self.pid} still running after {timeout:g}s{why}:\n{self.log_text()}"
            ) from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then wait (bounded); SIGKILL and return None if it does not exit."""
        if self.running():
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (bounded); SIGKILL and fail if it does not exit."""
        code = self.stop(timeout)
        if code is None:
            raise AssertionError(
                f"pid {self.pid} still running {timeout:g}s after SIGTERM:\n{self.log_text()}"
            )
        return code

    def kill(self) -> None:
        """SIGKILL the process itself (its scripts survive, as after a crash)."""
        if self.running():
            self.proc.kill()
        self.proc.wait(10)

    def kill_session(self) -> None:
        """SIGKILL everything still in the process's session, scripts included."""
        self.kill()
        for pid in session_pids(self.pid):
            kill_quietly(pid)

    def __repr__(self) -> str:
        return f"<DaemonProcess pid={self.pid} running={self.running()}>"


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The daemon's environment: ours, with the checkout first on PYTHONPATH.

    The checkout's C{twisted/plugins/} is how twistd finds the goophry plugin.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def daemon_argv(
    config_path: Path, extra_args: Sequence[str], how: str, twistd_args: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """
    The command line (and extra environment) for each way of starting Goophry.

    C{twistd}: the plugin, C{twistd -n goophry -c cfg ...};
    C{tac}: C{twistd -n -y goophry.tac} with GOOPHRY_CONFIG;
    C{cli}: the original's command line, C{goophry -c cfg ...}.
    """
    if how == "twistd":
        return [*TWISTD, "-n", *twistd_args, "goophry", "-c", str(config_path), *extra_args], {}
    if how == "tac":
        argv = [*TWISTD, "-n", *twistd_args, "-y", str(TAC_FILE), *extra_args]
        return argv, {"GOOPHRY_CONFIG": str(config_path)}
    if how == "cli":
        return [sys.executable, "-m", "goophry_tx.cli", "-c", str(config_path), *extra_args], {}
    raise ValueError(f"unknown way to start the daemon: {how!r}")


def start_daemon_process(
    config_path: Path,
    *extra_args: str,
    log_path: Path,
    cwd: Path,
    how: str = "twistd",
    env: Mapping[str, str] | None = None,
    twistd_args: Sequence[str] = (),
) -> DaemonProcess:
    """Start Goophry one of the ways L{daemon_argv} knows, logging to C{log_path}."""
    argv, how_env = daemon_argv(config_path, extra_args, how, twistd_args)
    return DaemonProcess(
        argv, cwd=cwd, env=daemon_env({**how_env, **(env or {})}), log_path=log_path
    )


# --------------------------------------------------------------------------
# Processes seen through /proc


def process_gone(pid: int) -> bool:
    """
    True once C{pid} has ended.

    A killed orphan is reparented to PID 1, which here (a container whose init
    does not reap) may leave it a zombie: a zombie runs nothing, so it counts.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    # The state follows the command name, which may itself hold ") ".
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def live_pids(belongs: Callable[[int], bool]) -> list[int]:
    """Live (not zombie) processes for which C{belongs(pid)} holds."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if belongs(pid) and not process_gone(pid):
                pids.append(pid)
        except OSError:  # it ended while we looked, or is not ours to read
            continue
    return pids


def session_pids(sid: int) -> list[int]:
    """Live processes of a session: what a killed daemon left running."""
    return live_pids(lambda pid: os.getsid(pid) == sid)


def command_line_pids(marker: bytes) -> list[int]:
    """Live processes whose command line holds C{marker} (e.g. a scripts directory)."""
    return live_pids(lambda pid: marker in Path(f"/proc/{pid}/cmdline").read_bytes())


def kill_quietly(pid: int, signum: int = signal.SIGKILL) -> None:
    """Signal C{pid}, which may have ended already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """
    A datagram socket of the test's own, as systemd makes for
    C{NOTIFY_SOCKET}, and its path: a short one (an C{AF_UNIX} path is at
    most 107 bytes).
    """
    with tempfile.TemporaryDirectory(prefix="gn-") as folder:
        path = os.path.join(folder, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield sock, path


def proc_status_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from C{/proc/<pid>/status}, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


# --------------------------------------------------------------------------
# The stats server


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: http.client.HTTPMessage

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(
    address: str, path: str = "/", context: ssl.SSLContext | None = None, timeout: float = 5.0
) -> Response:
    """One GET to C{host:port}, without following redirects (HTTPS with a context)."""
    host, _, port = address.rpartition(":")
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        return Response(reply.status, reply.getheader("Content-Type", ""), body, reply.msg)
    finally:
        conn.close()


def get_stats(address: str, path: str = "/", timeout: float = 2.0) -> dict[str, Any] | None:
    """The stats JSON at C{host:port}, or None while the server does not serve it."""
    try:
        reply = http_get(address, path, timeout=timeout)
        stats = reply.json() if reply.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return stats if isinstance(stats, dict) else None


def stats_total(stats: Mapping[str, Any], field: str) -> int:
    """One per-type counter of the stats (e.g. C{Succeeded}), summed over the types."""
    value = stats.get(field)
    return sum(int(n) for n in value.values()) if isinstance(value, dict) else 0


def outcomes(address: str) -> int | None:
    """Succeeded + Failed + Invalid over every type: entries dealt with (None: no stats)."""
    stats = get_stats(address)
    if stats is None:
        return None
    return sum(stats_total(stats, field) for field in ("Succeeded", "Failed", "Invalid"))
