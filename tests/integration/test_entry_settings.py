"""Env per entry and FailedTasksTTL per type, with the real daemon, real scripts and Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, wait_for
from tests.integration.conftest import Goophry

pytestmark = pytest.mark.integration


def _entry(name: str, env: dict[str, str]) -> bytes:
    return json.dumps({"Args": [name], "Env": env}).encode()


def test_env_is_applied_for_allowed_names_and_refused_otherwise(
    goophry: Goophry, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    daemon = goophry.launch(
        f'echo "$1 [$GREETING] [${{HOME:-}}]" >> {seen}',
        _entry("allowed", {"GREETING": "hello world"}),
        _entry("refused", {"GREETING": "x", "SECRET": "y"}),
        _entry("loader", {"LD_PRELOAD": "/tmp/evil.so"}),
        _entry("nul", {"GREETING": "a\0b"}),
        _entry("plain", {}),
        task={"AllowedEnv": ["GREETING"]},
        FailedTasksTTL=60,
    ).daemon
    failed = goophry.wait_failed("t", 3)
    goophry.wait_settled(message=daemon.log_text)
    lines = seen.read_text().splitlines()
    home = json.dumps(str(Path.home()))[1:-1]
    assert lines == [f"allowed [hello world] [{home}]", f"plain [] [{home}]"]
    reasons = [(json.loads(f["Payload"])["Args"], f["ErrorMessage"]) for f in failed]
    assert reasons == [
        (["refused"], "invalid task entry: Env: SECRET is not in the AllowedEnv of type t"),
        (
            ["loader"],
            "invalid task entry: Env: LD_PRELOAD is not in the AllowedEnv of type t "
            "(a dynamic-loader variable)",
        ),
        (["nul"], "invalid task entry: Env: GREETING: expected a string without NUL bytes"),
    ]


def test_a_type_without_allowed_env_ignores_env_and_says_so_once(
    goophry: Goophry, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    daemon = goophry.launch(
        f'echo "$1 [${{GREETING:-}}]" >> {seen}',
        _entry("a", {"GREETING": "x"}),
        _entry("b", {"LD_PRELOAD": "/tmp/evil.so"}),
    ).daemon
    wait_for(
        lambda: seen.exists() and len(seen.read_text().splitlines()) == 2,
        message=daemon.log_text,
    )
    assert seen.read_text().splitlines() == ["a []", "b []"]
    assert daemon.log_text().count("which is ignored: the type has no AllowedEnv") == 1


def test_a_config_allowing_ld_preload_is_refused(
    goophry: Goophry, run_daemon: Callable[..., DaemonProcess]
) -> None:
    script = goophry.script("t.sh", "true")
    config = goophry.config([{"Type": "t", "Script": str(script), "AllowedEnv": ["LD_PRELOAD"]}])
    daemon = run_daemon(config)
    assert daemon.wait(20) != 0
    assert "Tasks[0].AllowedEnv: LD_PRELOAD is a dynamic-loader variable" in daemon.log_text()


def test_each_type_keeps_its_failures_for_its_own_ttl(goophry: Goophry) -> None:
    script = goophry.script("t.sh", "exit 1")
    config = goophry.config(
        [
            {"Type": "own", "Script": str(script), "FailedTasksTTL": 30},
            {"Type": "off", "Script": str(script), "FailedTasksTTL": 0},
            {"Type": "global", "Script": str(script)},
        ],
        FailedTasksTTL=600,
    )
    daemon = goophry.start(config)
    for task_type in ("off", "own", "global"):
        goophry.push_args(task_type, task_type)
    goophry.wait_failed("own")
    goophry.wait_failed("global")
    daemon.wait_for_log('failed off entry not stored (FailedTasksTTL is 0): {"Args":["off"]')
    goophry.wait_settled()
    own = goophry.redis.cli("TTL", goophry.failed_key("own"))
    default = goophry.redis.cli("TTL", goophry.failed_key("global"))
    assert isinstance(own, int) and 0 < own <= 30
    assert isinstance(default, int) and 30 < default <= 600
    assert goophry.redis.cli("EXISTS", goophry.failed_key("off")) == 0
