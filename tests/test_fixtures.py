"""The shared fixtures do what the rest of the suite relies on."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from OpenSSL import SSL, crypto

from tests.conftest import TLSFiles
from tests.helpers import (
    DaemonProcess,
    Harness,
    RedisReplyError,
    RedisServer,
    TLSRedisServer,
    daemon_env,
    free_port,
    process_gone,
    redis_command,
    task_payload,
    wait_for,
    write_script,
)

pytestmark = pytest.mark.integration


def test_redis_answers_ping(redis: RedisServer) -> None:
    assert redis.cli("PING") == b"PONG"
    assert redis.address == f"127.0.0.1:{redis.port}"
    assert redis.port != 6379


def test_redis_is_empty_for_each_test(redis: RedisServer) -> None:
    assert redis.cli("DBSIZE") == 0
    redis.cli("SET", "left-behind", "x")


def test_resp_reply_types(redis: RedisServer) -> None:
    assert redis.cli("RPUSH", "q", '{"Args":["a b"]}', b"\xff\x00raw") == 2
    assert redis.cli("LRANGE", "q", 0, -1) == [b'{"Args":["a b"]}', b"\xff\x00raw"]
    assert redis.cli("GET", "missing") is None
    assert redis.cli("LPOP", "missing") is None
    assert redis.cli("SET", "k", "") == b"OK"
    assert redis.cli("GET", "k") == b""
    assert redis.pipeline(["MULTI"], ["RPUSH", "f", "x"], ["EXPIRE", "f", 60], ["EXEC"]) == [
        b"OK",
        b"QUEUED",
        b"QUEUED",
        [1, 1],
    ]
    assert 0 < redis.cli("TTL", "f") <= 60  # type: ignore[operator]
    with pytest.raises(RedisReplyError, match="WRONGTYPE"):
        redis.cli("LPUSH", "k", "x")


def test_kill_and_start_on_the_same_port(redis: RedisServer) -> None:
    port = redis.port
    redis.kill()
    assert not redis.answers()
    redis.start()
    assert redis.port == port
    assert redis.cli("PING") == b"PONG"


def test_own_server_with_aof(make_redis_server: Callable[..., RedisServer]) -> None:
    server = make_redis_server(appendonly="yes", appendfsync="always")
    assert server.cli("CONFIG", "GET", "appendfsync") == [b"appendfsync", b"always"]
    server.cli("RPUSH", "kept", "1")
    server.kill()
    server.start()
    assert server.cli("LRANGE", "kept", 0, -1) == [b"1"]


def test_tls_files_load_with_pyopenssl(tls_files: TLSFiles) -> None:
    cert, key, ca = tls_files
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(cert))
    context.use_privatekey_file(str(key))
    context.check_privatekey()

    leaf, intermediate = (
        crypto.load_certificate(crypto.FILETYPE_PEM, b"-----BEGIN" + pem)
        for pem in cert.read_bytes().split(b"-----BEGIN")[1:]
    )
    store = crypto.X509Store()
    store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, ca.read_bytes()))
    crypto.X509StoreContext(store, leaf, chain=[intermediate]).verify_certificate()


def test_wait_for_is_bounded() -> None:
    assert wait_for(lambda: 42, timeout=1) == 42
    with pytest.raises(AssertionError, match="never true"):
        wait_for(lambda: False, timeout=0.1, message="never true")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        assert s.getsockname() == ("127.0.0.1", port)


def test_write_config(
    write_config: Callable[..., Path], redis: RedisServer, queue_key: str
) -> None:
    path = write_config(Tasks=[{"Type": "t", "Script": "t.sh"}], ErrorScript=None)
    assert json.loads(path.read_text()) == {
        "Tasks": [{"Type": "t", "Script": "t.sh"}],
        "RedisAddress": redis.address,
        "RedisQueueKey": queue_key,
    }


def test_write_script(tmp_path: Path) -> None:
    script = write_script(tmp_path, "echo.sh", 'printf "%s|" "$@"')
    out = subprocess.run([script, "a b", "$(x)"], capture_output=True, check=True)
    assert out.stdout == b"a b|$(x)|"


def test_daemon_process_handle(tmp_path: Path) -> None:
    """The handle behind C{run_daemon}, on a stand-in long-running program."""
    program = "import time; print('up', flush=True); time.sleep(60)"
    proc = DaemonProcess(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=daemon_env(),
        log_path=tmp_path / "stand-in.log",
    )
    proc.wait_for_log("up")
    assert proc.terminate() == -signal.SIGTERM
    assert not proc.running()


def test_an_error_inside_exec_is_raised_with_the_stream_left_whole(redis: RedisServer) -> None:
    redis.cli("SET", "k", "v")
    with redis.connect() as connection:
        with pytest.raises(RedisReplyError, match="WRONGTYPE"):
            connection.pipeline([["MULTI"], ["LPUSH", "k", "x"], ["EXEC"], ["PING"]])
        assert connection.call("ECHO", "next") == b"next"
        assert connection.sent == {"multi": 1, "lpush": 1, "exec": 1, "ping": 1, "echo": 1}


def test_a_zombie_counts_as_gone(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not process_gone(child.pid)
        child.kill()
        # Not reaped yet: a zombie, which runs nothing.
        wait_for(lambda: process_gone(child.pid), message="the killed child to be a zombie")
        assert Path(f"/proc/{child.pid}").exists()
    finally:
        child.wait()


def test_launch_writes_the_script_and_config_starts_and_pushes(
    redis: RedisServer,
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    out = tmp_path / "out"
    harness = Harness(redis, queue_key, tmp_path, run_daemon)
    daemon, script, config = harness.launch(
        f'printf "%s" "$1" > {out}', task_payload("pushed"), task={"Workers": 2}, BlockTimeout=1
    )
    wait_for(out.exists, message=daemon.log_text)
    assert out.read_text() == "pushed"
    assert json.loads(config.read_text()) == {
        "RedisAddress": redis.address,
        "RedisQueueKey": queue_key,
        "Tasks": [{"Type": "t", "Script": str(script), "Workers": 2}],
        "BlockTimeout": 1,
    }
    harness.wait_settled(message=daemon.log_text)
    assert harness.failed("t") == []
    assert daemon.terminate() == 0


def test_a_tls_server_speaks_tls_only_and_asks_for_a_certificate(
    make_tls_redis_server: Callable[..., TLSRedisServer],
) -> None:
    server = make_tls_redis_server(auth_clients=True)
    assert server.cli("PING") == b"PONG"
    with pytest.raises((OSError, RedisReplyError)):
        redis_command(server.host, server.port, "PING", timeout=2.0)
    bare = ssl.create_default_context(cafile=str(server.ca_file))
    with pytest.raises(OSError):
        redis_command(server.host, server.port, "PING", timeout=2.0, context=bare)
