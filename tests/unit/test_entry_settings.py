"""Per-type settings of entries: Env against AllowedEnv, and FailedTasksTTL per type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from goophry_tx.config import TaskType, loader_variable
from goophry_tx.environment import EntryEnvironment
from goophry_tx.keys import Keys
from goophry_tx.store import OutcomeStore
from goophry_tx.task import InvalidEntry, Task, parse_entry
from tests.helpers import write_script
from tests.unit.fakes import FakeRedisLink
from tests.unit.test_config import refused, task

ALLOWING = TaskType("t", "/s/t.sh", allowed_env=("GREETING", "LANG"))


def entry(env: object) -> Task:
    parsed = parse_entry("t", json.dumps({"Args": [], "Env": env}).encode())
    assert isinstance(parsed, Task)
    return parsed


def test_allowed_names_are_applied() -> None:
    assert EntryEnvironment(ALLOWING).of(entry({"GREETING": "hi", "LANG": "C"})) == {
        "GREETING": "hi",
        "LANG": "C",
    }
    assert EntryEnvironment(ALLOWING).of(entry({})) is None
    assert EntryEnvironment(ALLOWING).of(Task("t", (), b'{"Args":[]}')) is None
    # Go's decoder: the field's name matches whatever its case.
    parsed = parse_entry("t", b'{"args":[],"env":{"LANG":"C"}}')
    assert isinstance(parsed, Task)
    assert EntryEnvironment(ALLOWING).of(parsed) == {"LANG": "C"}


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"HOME": "/"}, "HOME is not in the AllowedEnv of type t"),
        ({"LD_PRELOAD": "/x.so"}, "LD_PRELOAD is not in the AllowedEnv of type t (a dynamic"),
        ({"GREETING": "a\0b"}, "GREETING: expected a string without NUL bytes"),
        ({"GREETING": 3}, "GREETING: expected a string without NUL bytes"),
        ({"A=B": "x"}, "'A=B' is not a valid environment variable name"),
        (["GREETING"], "expected an object of strings"),
    ],
)
def test_anything_else_is_an_invalid_entry_with_its_reason(env: object, reason: str) -> None:
    checked = EntryEnvironment(ALLOWING).of(entry(env))
    assert isinstance(checked, InvalidEntry)
    assert checked.reason.startswith("invalid task entry: Env: ")
    assert reason in checked.reason


def test_a_type_without_allowed_env_ignores_env_and_says_so_once() -> None:
    environment = EntryEnvironment(TaskType("t", "/s/t.sh"))
    with capturedLogs() as events:
        assert environment.of(entry({"LD_PRELOAD": "/x.so"})) is None
        assert environment.of(entry({"A": "b"})) is None
    [event] = events
    assert event["log_level"] is LogLevel.warn
    assert "ignored" in event["log_format"]


def test_dynamic_loader_variables_are_known_by_name() -> None:
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG", "DYLD_INSERT_LIBRARIES"):
        assert loader_variable(name)
    assert not loader_variable("LANG")


def test_the_config_refuses_loader_variables_and_bad_names(tmp_path: Path) -> None:
    script = write_script(tmp_path, "task.sh", "exit 0")
    message = refused(tmp_path, Tasks=[task(script, AllowedEnv=["LANG", "LD_PRELOAD"])])
    assert "Tasks[0].AllowedEnv: LD_PRELOAD is a dynamic-loader variable" in message
    assert "not a valid environment name" in refused(
        tmp_path, Tasks=[task(script, AllowedEnv=["A B"])]
    )
    assert "expected an array of names" in refused(tmp_path, Tasks=[task(script, AllowedEnv="A")])


def test_a_types_own_failed_tasks_ttl_wins_over_the_global_one() -> None:
    link = FakeRedisLink()
    store = OutcomeStore(link, Keys("q"), "me", 60, Clock(), failed_ttls={"own": 5, "off": 0})
    for name in ("own", "off", "global"):
        store.failed(Task(name, (), b'{"Args":[]}'), "exit status 1")
    own, off, default = (sent.command for sent in link.pending)
    assert own[1:3] == (
        (
            "RPUSH",
            "q:own:failed",
            b'{"Args":[],"ErrorMessage":"exit status 1","FailedAt":0,"Instance":"me"}',
        ),
        ("EXPIRE", "q:own:failed", 5),
    )
    assert off == ("LREM", "q:off:inflight:me", -1, b'{"Args":[]}')
    assert default[2] == ("EXPIRE", "q:global:failed", 60)
