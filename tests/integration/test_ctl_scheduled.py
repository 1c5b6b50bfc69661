"""goophry-ctl and scheduled entries: push --in/--at, scheduled ls and rm, against real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Goophry
from tests.integration.test_ctl import as_json, config_with, ctl, ok, one_error_line, rows

pytestmark = pytest.mark.integration


def test_push_in_and_at_schedule_a_task_with_an_id_of_its_own(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config)
    before = time.time()
    first = as_json(cfg, "push", "--in", "30s", "t", "a b")
    second = as_json(cfg, "push", "--in", "30s", "t", "a b")
    assert first["entry"]["Args"] == second["entry"]["Args"] == ["a b"]
    assert first["entry"]["GoophryId"] != second["entry"]["GoophryId"]
    assert before + 30 <= first["due"] <= time.time() + 30
    ok(cfg, "push", "--at", "2100-01-01T00:00:00+00:00", "t", "later")
    assert "scheduled in" in ok(cfg, "push", "--at", "4102444801", "t", "latest")

    key = goophry.keys.scheduled("t")
    # The same arguments twice: two members, two tasks.
    assert goophry.redis.cli("ZCARD", key) == 4
    assert goophry.redis.cli("ZSCORE", key, json.dumps(first["entry"], separators=(",", ":")))
    assert goophry.llen(goophry.queue("t")) == 0
    listed = as_json(cfg, "scheduled", "ls", "t")["entries"]
    assert [e["args"] for e in listed] == [["a b"], ["a b"], ["later"], ["latest"]]
    assert listed[2]["due"] == 4102444800.0
    assert [row["ARGS"] for row in rows(ok(cfg, "scheduled", "ls", "t"))] == [
        '["a b"]',
        '["a b"]',
        '["later"]',
        '["latest"]',
    ]
    assert rows(ok(cfg, "stats"))[0]["SCHEDULED"] == "4"
    assert as_json(cfg, "stats")["types"]["t"]["scheduled"] == 4


def test_push_refuses_a_bad_duration_or_time(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config)
    for args in (("--in", "soon"), ("--in", "-5s"), ("--at", "tomorrow")):
        done = ctl(cfg, "push", *args, "t", "x")
        assert done.returncode == 2, done.stderr
    assert goophry.redis.cli("EXISTS", goophry.keys.scheduled("t")) == 0


def test_scheduled_rm_removes_the_entry_named_only_if_unchanged(
    goophry: Goophry, write_config: Callable[..., Path]
) -> None:
    cfg = config_with(goophry, write_config)
    for offset, name in enumerate(("a", "b", "c")):
        ok(cfg, "push", "--at", str(4102444800 + offset), "t", name)
    listed = as_json(cfg, "scheduled", "ls", "t")["entries"]
    removed = as_json(cfg, "scheduled", "rm", "t", f"1@{listed[1]['id']}")
    assert json.loads(removed["removed"])["Args"] == ["b"]
    one_error_line(
        ctl(cfg, "scheduled", "rm", "t", f"1@{listed[1]['id']}"), 1, "changed since it was listed"
    )
    one_error_line(ctl(cfg, "scheduled", "rm", "t", "5"), 1, "no entry at index 5")
    assert "removed from" in ok(cfg, "scheduled", "rm", "t", "0")
    assert [e["args"] for e in as_json(cfg, "scheduled", "ls", "t")["entries"]] == [["c"]]
