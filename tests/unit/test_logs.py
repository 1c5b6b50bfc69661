"""goophry_tx.logs and goophry_tx.startup: log lines, the check's output, one-line start errors."""

from __future__ import annotations

import errno
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel

from goophry_tx.logs import FORMATTERS, ReopeningFileObserver, format_event_as_json
from goophry_tx.startup import check, report_listen_errors_in_one_line
from tests.helpers import write_config, write_script


def logged(formatter: str = "json", **fields: Any) -> str:
    stream = io.StringIO()
    observer = ReopeningFileObserver(None, stream, FORMATTERS[formatter])
    Logger(namespace="goophry_tx.test", observer=observer).warn(
        "task {type} failed: {args}: {error}", **fields
    )
    return stream.getvalue()


def test_a_json_line_has_time_level_message_and_the_fields() -> None:
    line = logged(type="t", args=["a", "b"], error="exit status 3", duration=1.5)
    assert line.endswith("}\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record.pop("time").endswith("Z")
    assert record == {
        "level": "warn",
        "message": "task t failed: ['a', 'b']: exit status 3",
        "type": "t",
        "args": ["a", "b"],
        "error": "exit status 3",
        "duration": 1.5,
    }


def test_bytes_are_text_and_what_is_not_plain_data_is_left_out() -> None:
    class Secretive:
        def __repr__(self) -> str:
            return "password=hunter2"

    record = json.loads(
        logged(
            type=b"t",
            args=[b"caf\xc3\xa9", b"\xff"],
            error="e",
            config=Secretive(),
            redis_password="hunter2",
        )
    )
    assert (record["type"], record["args"]) == ("t", ["café", "\\xff"])
    assert "config" not in record and "redis_password" not in record
    assert "hunter2" not in json.dumps(record)


def test_a_failure_adds_its_error_and_traceback() -> None:
    events: list[dict[str, Any]] = []
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        Logger(observer=events.append).failure("cannot go on")
    record = json.loads(format_event_as_json(events[0]) or "")
    assert (record["level"], record["message"]) == ("critical", "cannot go on")
    assert record["error"] == "division by zero"
    assert "ZeroDivisionError" in record["traceback"]


def test_an_old_style_event_is_its_message() -> None:
    event = {
        "log_format": "{log_text}",
        "log_text": "Main loop terminated.",
        "log_level": LogLevel.info,
        "log_time": 0.0,
        "log_namespace": "log_legacy",
        "message": ("Main loop terminated.",),
        "isError": 0,
        "system": "-",
        "time": 0.0,
    }
    record = json.loads(format_event_as_json(event) or "")
    assert record == {
        "time": "1970-01-01T00:00:00.000Z",
        "level": "info",
        "message": "Main loop terminated.",
    }


def test_text_stays_one_classic_line() -> None:
    line = logged("text", type="t", args=["a"], error="e")
    assert line.endswith("[goophry_tx.test#warn] task t failed: ['a']: e\n")


# The configuration check's output


def test_check_prints_one_ok_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = write_script(tmp_path, "t.sh", "true")
    write_config(tmp_path, RedisQueueKey="q", Tasks=[{"Type": "t", "Script": str(script)}])
    out, err = io.StringIO(), io.StringIO()
    assert check("goophry.config.json", out=out, err=err) == 0
    assert (out.getvalue(), err.getvalue()) == (
        "goophry: goophry.config.json: configuration OK\n",
        "",
    )


def test_check_prints_warnings_then_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = write_script(tmp_path, "t.sh", "true")
    write_config(
        tmp_path, RedisQueueKey="q", Tasks=[{"Type": "t", "Script": str(script), "Workers": 0}]
    )
    out, err = io.StringIO(), io.StringIO()
    assert check("goophry.config.json", out=out, err=err) == 0
    assert err.getvalue() == (
        "goophry: warning: goophry.config.json: Tasks[0].Workers: 0 is below 1; using 1\n"
    )
    assert out.getvalue() == "goophry: goophry.config.json: configuration OK\n"


def test_check_prints_the_error_and_returns_2(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check(str(tmp_path / "none.json"), out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"goophry: {tmp_path / 'none.json'}: cannot read the configuration: "
        "No such file or directory\n"
    )


# A port in use, raised out of twistd


def test_a_listen_error_reaching_the_top_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    others: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: others.append(value))
    err = io.StringIO()
    hook = report_listen_errors_in_one_line(err)
    assert sys.excepthook is hook
    error = CannotListenError(
        "127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use")
    )
    hook(CannotListenError, error, None)
    assert err.getvalue() == (
        "goophry: StatsInterface 127.0.0.1:8080: cannot listen: Address already in use\n"
    )
    # Anything else is Python's to report.
    other = ValueError("x")
    hook(ValueError, other, None)
    assert others == [other]
    assert err.getvalue().count("\n") == 1
