"""
What an operator sees: the configuration check, and each start error as the
whole of stderr (one line, no usage text, no traceback), under every command.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import TWISTD, DaemonProcess, daemon_argv, daemon_env, free_port
from tests.integration.conftest import STARTED, Goophry

pytestmark = pytest.mark.integration

HOWS = ["twistd", "tac", "cli"]


def run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=daemon_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start(config: Path | str, how: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Start the daemon one way, given the config path as written (relative or not)."""
    argv, env = daemon_argv(Path(config), args, how, ["--pidfile="] if how != "cli" else [])
    if how == "tac":
        env = {"GOOPHRY_CONFIG": str(config)}
    return run(argv, cwd, env)


def check_argv(how: str, config: str) -> list[str]:
    return {
        "goophry -t": [str(Path(sys.executable).with_name("goophry")), "-t", "-c", config],
        "python -m goophry_tx -t": [sys.executable, "-m", "goophry_tx", "-t", "-c", config],
        "twistd goophry --check": [*TWISTD, "goophry", "--check", "-c", config],
    }[how]


CHECKS = ["goophry -t", "python -m goophry_tx -t", "twistd goophry --check"]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# The check


@pytest.mark.parametrize("how", CHECKS)
def test_the_check_of_a_good_config_says_ok_without_redis(
    goophry: Goophry, tmp_path: Path, how: str
) -> None:
    script = goophry.script("t.sh", "true")
    # Nothing listens there: the check does not talk to Redis.
    helpers.write_config(
        tmp_path,
        RedisAddress=f"127.0.0.1:{free_port()}",
        RedisQueueKey="q",
        Tasks=[{"Type": "t", "Script": str(script)}],
    )
    done = run(check_argv(how, "goophry.config.json"), tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "goophry: goophry.config.json: configuration OK\n",
        "",
    )


@pytest.mark.parametrize("how", CHECKS)
@pytest.mark.parametrize(
    "settings, problem",
    [
        (
            {"Tasks": [{"Type": "t", "Script": "gone.sh"}]},
            "Tasks[0].Script: {dir}/gone.sh: no such file",
        ),
        (
            {"StatsTLSCertFile": "c.pem", "StatsTLSKeyFile": "k.pem"},
            "StatsTLSCertFile: {dir}/c.pem: cannot read: No such file or directory",
        ),
        (
            {"RedisAddress": "redis://127.0.0.1:6379"},
            'RedisAddress: expected host:port without a scheme (no "redis://"), '
            'got "redis://127.0.0.1:6379"',
        ),
        (
            {"Logfile": "no/such/dir/g.log"},
            "Logfile: {dir}/no/such/dir/g.log: no such directory: {dir}/no/such/dir",
        ),
    ],
    ids=["script", "tls", "scheme", "logfile"],
)
def test_the_check_of_a_bad_config_says_what_a_start_says(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    how: str,
    settings: dict[str, object],
    problem: str,
) -> None:
    script = goophry.script("t.sh", "true")
    conf = tmp_path / "conf"
    write_config(conf, **{"Tasks": [{"Type": "t", "Script": str(script)}], **settings})
    expected = f"goophry: conf/goophry.config.json: {problem.format(dir=conf)}\n"
    done = run(check_argv(how, "conf/goophry.config.json"), tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected)
    started = start("conf/goophry.config.json", "cli", tmp_path)
    assert (started.returncode, started.stderr) == (2, expected)


# Start errors, each as the whole of stderr


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("given", ["relative", "absolute"])
def test_a_config_error_is_one_line_naming_the_file_as_given(
    goophry: Goophry, tmp_path: Path, write_config: Callable[..., Path], how: str, given: str
) -> None:
    cfg = write_config(tmp_path / "etc", Tasks=[], Workers=2)
    name = "etc/goophry.config.json" if given == "relative" else str(cfg)
    done = start(name, how, tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        f"goophry: {name}: Tasks: at least one task type is needed\n",
    )
    assert "Usage" not in done.stdout and STARTED not in done.stdout


@pytest.mark.parametrize("how", HOWS)
def test_a_stats_port_in_use_is_one_line(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    held_port: int,
    how: str,
) -> None:
    script = goophry.script("t.sh", "true")
    cfg = write_config(
        Tasks=[{"Type": "t", "Script": str(script)}], StatsInterface=f"127.0.0.1:{held_port}"
    )
    done = start(cfg, how, tmp_path)
    assert (done.returncode, done.stderr) == (
        1,
        f"goophry: StatsInterface 127.0.0.1:{held_port}: cannot listen: Address already in use\n",
    )
    assert "Traceback" not in done.stdout


@pytest.mark.parametrize("how", HOWS)
def test_an_out_of_range_port_says_so(
    goophry: Goophry, tmp_path: Path, write_config: Callable[..., Path], how: str
) -> None:
    script = goophry.script("t.sh", "true")
    cfg = write_config(Tasks=[{"Type": "t", "Script": str(script)}], RedisAddress="localhost:99999")
    done = start(cfg, how, tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        f"goophry: {cfg}: RedisAddress: port 99999 is out of range (1 to 65535), "
        f'got "localhost:99999"\n',
    )


def test_twistd_goophry_help_shows_dash_capital_v(tmp_path: Path) -> None:
    done = run([*TWISTD, "goophry", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "  -V, --version " in done.stdout
    assert "Twisted version" not in done.stdout


@pytest.mark.parametrize("how", HOWS)
def test_warnings_come_before_the_start_up_line(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
) -> None:
    script = goophry.script("t.sh", "true")
    cfg = write_config(Tasks=[{"Type": "t", "Script": str(script), "Workers": 0}], Colour="blue")
    daemon = goophry.started(run_daemon(cfg, how=how))
    log = daemon.log_text()
    workers = log.index("Tasks[0].Workers: 0 is below 1; using 1")
    colour = log.index("Colour: unknown setting")
    assert max(workers, colour) < log.index(STARTED), log
