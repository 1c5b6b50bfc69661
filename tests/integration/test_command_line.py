"""Configuration and the three command lines, as an operator uses them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from goophry_tx import __version__
from tests.helpers import (
    TWISTD,
    DaemonProcess,
    daemon_env,
    shell_write,
    wait_for,
    write_config,
    write_script,
)
from tests.integration.conftest import STARTED, Goophry

pytestmark = pytest.mark.integration

HOWS = ["twistd", "tac", "cli"]


def _bad_configs(script: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Settings (beside RedisAddress/RedisQueueKey) and the message they give."""
    task = {"Type": "t", "Script": str(script)}
    return {
        "workers-not-integer": (
            {"Tasks": [task, {**task, "Type": "u", "Workers": "two"}]},
            'goophry.config.json: Tasks[1].Workers: expected an integer, got "two"',
        ),
        "no-tasks": ({"Tasks": []}, "goophry.config.json: Tasks: at least one task type"),
        "no-queue-key": (
            {"Tasks": [task], "RedisQueueKey": None},
            "goophry.config.json: RedisQueueKey: required, but missing",
        ),
        "missing-script": (
            {"Tasks": [{"Type": "t", "Script": "nowhere.sh"}]},
            "goophry.config.json: Tasks[0].Script: ",
        ),
        "bad-ttl": (
            {"Tasks": [task], "FailedTasksTTL": "1h"},
            'goophry.config.json: FailedTasksTTL: expected an integer, got "1h"',
        ),
        "bad-stats-interface": (
            {"Tasks": [task], "StatsInterface": "localhost"},
            'goophry.config.json: StatsInterface: expected host:port, got "localhost"',
        ),
    }


BAD = list(_bad_configs(Path("x")))


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("bad", BAD)
def test_bad_configuration_is_refused_with_its_message(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
    bad: str,
) -> None:
    script = goophry.script("t.sh", "true")
    settings, message = _bad_configs(script)[bad]
    cfg = write_config(**settings)
    daemon = run_daemon(cfg, how=how)
    code = daemon.wait(15)
    log = daemon.log_text()
    assert code != 0, log
    assert message in log
    assert STARTED not in log


@pytest.mark.parametrize("how", HOWS)
def test_not_json_and_a_missing_file_are_refused(
    tmp_path: Path, run_daemon: Callable[..., DaemonProcess], how: str
) -> None:
    broken = tmp_path / "goophry.config.json"
    broken.write_text('{"RedisQueueKey": "q",')
    daemon = run_daemon(broken, how=how)
    assert daemon.wait(15) != 0
    assert "goophry.config.json: not valid JSON" in daemon.log_text()

    missing = tmp_path / "absent" / "goophry.config.json"
    daemon = run_daemon(missing, how=how)
    assert daemon.wait(15) != 0
    assert f"{missing}: cannot read the configuration" in daemon.log_text()


@pytest.mark.parametrize("how", ["twistd", "cli"])
def test_unknown_keys_are_warned_about_with_the_nearest_name(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
) -> None:
    ran = tmp_path / "ran"
    script = goophry.script("t.sh", f"touch {ran}")
    cfg = write_config(
        Tasks=[{"Type": "t", "Script": str(script), "Worker": 2}],
        FailedTaskTTL=60,
    )
    daemon = goophry.started(run_daemon(cfg, how=how))
    log = daemon.wait_for_log("did you mean Workers?")
    assert "FailedTaskTTL: unknown setting; did you mean FailedTasksTTL?" in log
    assert "Tasks[0].Worker: unknown setting; did you mean Workers?" in log
    # A warning only: the daemon runs.
    goophry.push_args("t")
    wait_for(ran.exists, message=lambda: daemon.log_text())


def test_keys_are_matched_case_insensitively(
    goophry: Goophry,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    out = tmp_path / "out"
    script = goophry.script("t.sh", shell_write(out, 'printf "%s" "$1"'))
    cfg = write_config(
        tmp_path,
        redisaddress=goophry.redis.address,
        REDISQUEUEKEY=goophry.key,
        tasks=[{"type": "t", "script": str(script), "workers": 1}],
    )
    daemon = goophry.started(run_daemon(cfg))
    goophry.push("t", '{"args":["lower"]}')
    wait_for(out.exists, message=lambda: daemon.log_text())
    assert out.read_text() == "lower"
    assert "unknown setting" not in daemon.log_text()


@pytest.mark.parametrize("how", HOWS)
def test_relative_paths_resolve_against_the_config_directory(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
) -> None:
    conf = tmp_path / "conf"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    told = tmp_path / "told"
    write_script(conf / "scripts", "ok.sh", shell_write(out, 'printf "%s|%s" "$1" "$(pwd)"'))
    write_script(conf / "scripts", "fail.sh", "exit 4")
    write_script(conf, "error.sh", shell_write(told, 'printf "%s" "$1"'))
    write_config(
        conf,
        Tasks=[
            {"Type": "ok", "Script": "scripts/ok.sh"},
            {"Type": "fail", "Script": "./scripts/fail.sh"},
        ],
        ErrorScript="error.sh",
        FailedTasksTTL=60,
    )
    # The daemon runs elsewhere, and is even given the config by a relative path.
    daemon = run_daemon(Path("../conf/goophry.config.json"), how=how, cwd=elsewhere)
    goophry.started(daemon)
    goophry.push_args("ok", "rel")
    goophry.push_args("fail", "f")

    wait_for(out.exists, message=lambda: daemon.log_text())
    # The script runs in the daemon's working directory, not the config's.
    assert out.read_text() == f"rel|{elsewhere}"
    wait_for(told.exists, message=lambda: daemon.log_text())
    assert told.read_text() == f'{conf / "scripts" / "fail.sh"} "f"\n\nexit status 4'


@pytest.mark.parametrize("how", ["twistd", "cli"])
def test_dash_capital_v_prints_the_version(how: str, tmp_path: Path) -> None:
    if how == "twistd":
        argv = [*TWISTD, "goophry", "-V"]
    else:
        argv = [*TWISTD[:1], "-m", "goophry_tx.cli", "-V"]
    # No config file is needed (there is none in cwd).
    done = subprocess.run(
        argv, cwd=tmp_path, env=daemon_env(), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Goophry version {__version__}\n"


def test_the_config_is_json_the_original_accepts(
    goophry: Goophry,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    """A Goophry 1.1.0 config, every original setting spelled as its README does."""
    out = tmp_path / "out"
    write_script(tmp_path, "task.sh", shell_write(out, 'printf "%s" "$*"'))
    write_script(tmp_path, "error.sh", "true")
    config = {
        "RedisNetwork": "tcp",
        "RedisAddress": goophry.redis.address,
        "RedisQueueKey": goophry.key,
        "ErrorScript": "error.sh",
        "FailedTasksTTL": 86400,
        "StatsInterface": "",
        "StatsPattern": "/",
        "Tasks": [{"Type": "original", "Script": "task.sh", "Workers": 0}],
    }
    cfg = tmp_path / "goophry.config.json"
    cfg.write_text(json.dumps(config))
    daemon = goophry.started(run_daemon(cfg, how="cli"))
    assert "original (1 workers)" in daemon.log_text()
    goophry.push_args("original", "a", "b")
    wait_for(out.exists, message=lambda: daemon.log_text())
    assert out.read_text() == "a b"
    assert "unknown setting" not in daemon.log_text()
