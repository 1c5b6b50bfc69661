"""LogFormat "json": one JSON object per line under every command, and no password in it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DaemonProcess, RedisServer, wait_for
from tests.integration.conftest import STARTED, Goophry

pytestmark = pytest.mark.integration

PASSWORD = "pw-7c1e-never-logged"


@pytest.fixture
def acl_user(redis: RedisServer) -> Iterator[str]:
    """A Redis user whose password is L{PASSWORD}: the daemon must AUTH with it."""
    redis.cli("ACL", "SETUSER", "goophry-json", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    yield "goophry-json"
    redis.cli("ACL", "DELUSER", "goophry-json")


def records(text: str) -> list[dict[str, Any]]:
    """Every line parsed back; a line that is not one JSON object fails the test."""
    parsed = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


@pytest.mark.parametrize(
    ("how", "via"),
    [
        ("cli", "--log-format"),
        ("cli", "LogFormat"),
        ("twistd", "--log-format"),
        ("tac", "LogFormat"),
    ],
)
def test_json_lines_carry_the_events_fields_and_never_the_password(
    goophry: Goophry,
    acl_user: str,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    how: str,
    via: str,
) -> None:
    script = goophry.script("t.sh", 'if [ "$1" = bad ]; then echo "no good"; exit 3; fi')
    settings: dict[str, object] = {
        "RedisUsername": acl_user,
        "RedisPassword": PASSWORD,
        "Tasks": [{"Type": "t", "Script": str(script)}],
    }
    args = ["-v"]
    if via == "LogFormat":
        settings["LogFormat"] = "json"
    else:
        args += ["--log-format", "json"]
    cfg = write_config(**settings)
    env = {"GOOPHRY_VERBOSE": "1"} if how == "tac" else None
    daemon = run_daemon(cfg, *(args if how != "tac" else []), how=how, env=env)
    wait_for(
        lambda: STARTED in daemon.log_text() or not daemon.running(),
        timeout=15,
        message=daemon.log_text,
    )
    goophry.push("t", '{"Args":["fine", "caf\\u00e9"]}', '{"Args":["bad"]}')
    wait_for(
        lambda: "task t failed" in daemon.log_text() and "task t done" in daemon.log_text(),
        timeout=15,
        message=daemon.log_text,
    )
    assert daemon.terminate() == 0
    text = daemon.log_text()
    assert PASSWORD not in text
    lines = records(text)
    for record in lines:
        assert record["time"].endswith("Z") and record["time"][10] == "T", record
        assert record["level"] in ("debug", "info", "warn", "error", "critical"), record
        assert isinstance(record["message"], str), record
    [start] = [r for r in lines if r["message"].startswith(STARTED)]
    assert start["instance"] and start["instance"] in start["message"]
    [done] = [r for r in lines if r["message"].startswith("task t done")]
    assert (done["type"], done["args"], done["level"]) == ("t", ["fine", "café"], "info")
    assert isinstance(done["duration"], float)
    [failed] = [r for r in lines if r["message"].startswith("task t failed")]
    assert (failed["type"], failed["args"], failed["level"]) == ("t", ["bad"], "warn")
    assert failed["error"] == "exit status 3\nno good\n"
    taken = [r for r in lines if r["message"].startswith("task t taken")]
    # Payloads are text in a field, never a bytes repr.
    assert sorted(r["payload"] for r in taken) == sorted(
        ['{"Args":["fine", "caf\\u00e9"]}', '{"Args":["bad"]}']
    )


@pytest.mark.parametrize("how", ["cli", "twistd"])
def test_text_stays_the_default(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
) -> None:
    script = goophry.script("t.sh", "true")
    daemon = goophry.started(
        run_daemon(write_config(Tasks=[{"Type": "t", "Script": str(script)}]), how=how)
    )
    line = next(line for line in daemon.log_text().splitlines() if STARTED in line)
    assert line[:4].isdigit() and not line.startswith("{"), line
