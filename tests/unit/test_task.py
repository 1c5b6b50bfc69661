"""goophry_tx.task: entries in, error messages out, in the original's formats."""

from __future__ import annotations

import base64
import errno
import json
import signal

import pytest

from goophry_tx.task import (
    InvalidEntry,
    Outcome,
    Task,
    error_script_message,
    failed_entry,
    parse_entry,
    start_error,
)

# parse_entry


@pytest.mark.parametrize(
    "payload, args",
    [
        (b'{"Args":["p1","p2"]}', ("p1", "p2")),
        (b'{"Args":[]}', ()),
        (b'{"args":["lower"]}', ("lower",)),
        (b'{"ARGS":["upper"]}', ("upper",)),
        (b'{"Args":["x"],"Extra":1}', ("x",)),
        (
            b'{"Args":["; rm -rf /", "$(id)", "a b", "*", "\\"q\\""]}',
            ("; rm -rf /", "$(id)", "a b", "*", '"q"'),
        ),
        ('{"Args":["ünï","日本"]}'.encode(), ("ünï", "日本")),
        (b'{"Args":["\\u00e9"]}', ("é",)),
        (b'  {"Args":["ws"]}\n', ("ws",)),
    ],
)
def test_valid_entries(payload: bytes, args: tuple[str, ...]) -> None:
    assert parse_entry("t", payload) == Task("t", args, payload)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"Args":[1]}', "Args must be an array of strings"),
        (b'{"Args":"x"}', "Args must be an array of strings"),
        (b'{"Args":null}', "Args must be an array of strings"),
        (b'{"Args":["a",null]}', "Args must be an array of strings"),
        (b'{"Args":[["a"]]}', "Args must be an array of strings"),
        (b'{"args":{"a":"b"}}', "Args must be an array of strings"),
        (b"{}", "Args is missing"),
        (b'{"Arg":["a"]}', "Args is missing"),
        (b"[]", "expected a JSON object, got list"),
        (b'"Args"', "expected a JSON object, got str"),
        (b"42", "expected a JSON object, got int"),
        (b'{"Args":["\\ud800"]}', "Args[0] is not valid Unicode"),
        (b'{"Args":["ok","\\udfff x"]}', "Args[1] is not valid Unicode"),
        (b'{"Args":["\xff"]}', "not valid UTF-8 (byte 10)"),
        (b"\xc3(", "not valid UTF-8 (byte 0)"),
    ],
)
def test_invalid_entries_say_why(payload: bytes, reason: str) -> None:
    assert parse_entry("t", payload) == InvalidEntry("t", payload, f"invalid task entry: {reason}")


@pytest.mark.parametrize("payload", [b"", b"not json", b'{"Args":["a"]', b'{"Args":[]} x'])
def test_not_json(payload: bytes) -> None:
    entry = parse_entry("t", payload)
    assert isinstance(entry, InvalidEntry)
    assert entry.payload == payload
    assert entry.reason.startswith("invalid task entry: not JSON: ")


# Outcome


def test_only_a_silent_exit_0_succeeds() -> None:
    assert Outcome(exit_code=0).succeeded
    assert not Outcome(exit_code=0, output=b"hi").succeeded
    assert not Outcome(exit_code=0, truncated=1).succeeded
    assert not Outcome(exit_code=1).succeeded
    assert not Outcome(signal=signal.SIGKILL).succeeded
    assert not Outcome(start_error="fork/exec /x: permission denied").succeeded


def test_a_timed_out_script_fails_even_when_it_exits_0() -> None:
    # A script that catches SIGTERM after its timeout and exits quietly
    # still ran too long: it must not count as done.
    outcome = Outcome(exit_code=0, timed_out=30.0)
    assert not outcome.succeeded
    assert outcome.error_message() == "timed out after 30s (exit status 0)"


@pytest.mark.parametrize(
    "outcome, message",
    [
        (Outcome(exit_code=2), "exit status 2"),
        (Outcome(exit_code=1, output=b"boom\n"), "exit status 1\nboom\n"),
        (Outcome(exit_code=255, output=b"a\nb"), "exit status 255\na\nb"),
        (Outcome(signal=signal.SIGKILL), "signal: killed"),
        (Outcome(signal=signal.SIGTERM), "signal: terminated"),
        (Outcome(signal=signal.SIGINT), "signal: interrupt"),
        (Outcome(signal=signal.SIGSEGV, output=b"core"), "signal: segmentation fault\ncore"),
        (Outcome(signal=signal.SIGKILL, timed_out=30.0), "timed out after 30s (signal: killed)"),
        (
            Outcome(signal=signal.SIGTERM, timed_out=1.5, output=b"partial"),
            "timed out after 1.5s (signal: terminated)\npartial",
        ),
        (Outcome(exit_code=143, timed_out=2.0), "timed out after 2s (exit status 143)"),
        (Outcome(exit_code=0, output=b"warning: x\n"), "warning: x\n"),
        (Outcome(exit_code=0, output=b"\xffbad"), "\ufffdbad"),
        (
            Outcome(exit_code=0, output=b"x" * 4, truncated=1048576),
            "xxxx\n... [truncated 1048576 bytes]",
        ),
        (
            Outcome(exit_code=3, output=b"yy", truncated=5),
            "exit status 3\nyy\n... [truncated 5 bytes]",
        ),
        (
            Outcome(start_error="fork/exec /x: no such file or directory"),
            "fork/exec /x: no such file or directory",
        ),
    ],
)
def test_error_messages(outcome: Outcome, message: str) -> None:
    assert outcome.error_message() == message


@pytest.mark.parametrize(
    "error, reason",
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "no such file or directory"),
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.ENOEXEC, "Exec format error"), "exec format error"),
        (ValueError("embedded null byte"), "argument contains a NUL byte"),
    ],
)
def test_start_errors(error: BaseException, reason: str) -> None:
    assert start_error("/x", error) == f"fork/exec /x: {reason}"


# What ErrorScript and the failed list get


def test_error_script_message_quotes_each_arg() -> None:
    message = error_script_message("/s/task.sh", ("a1", "a 2"), "exit status 1\nboom")
    assert message == '/s/task.sh "a1" "a 2"\n\nexit status 1\nboom'


def test_error_script_message_without_args() -> None:
    assert error_script_message("/s/task.sh", (), "signal: killed") == (
        "/s/task.sh\n\nsignal: killed"
    )


def test_failed_entry_of_a_task_keeps_its_args() -> None:
    task = Task("t", ("p1", "ü"), b'{"Args":["p1","\\u00fc"]}')
    record = failed_entry(task, "exit status 1", 1764669185, "web1:42:9f3a1c2e")
    assert (
        record
        == (
            '{"Args":["p1","ü"],"ErrorMessage":"exit status 1",'
            '"FailedAt":1764669185,"Instance":"web1:42:9f3a1c2e"}'
        ).encode()
    )


def test_failed_entry_of_an_invalid_entry_keeps_the_raw_payload() -> None:
    entry = parse_entry("t", b'{"Args":"x"}')
    assert isinstance(entry, InvalidEntry)
    assert json.loads(failed_entry(entry, entry.reason, 1764669185, "i1")) == {
        "Args": None,
        "ErrorMessage": "invalid task entry: Args must be an array of strings",
        "Payload": '{"Args":"x"}',
        "FailedAt": 1764669185,
        "Instance": "i1",
    }


def test_failed_entry_of_non_utf8_adds_base64() -> None:
    payload = b'{"Args":["\xff"]}'
    entry = parse_entry("t", payload)
    assert isinstance(entry, InvalidEntry)
    record = json.loads(failed_entry(entry, entry.reason, 1764669185, "i1"))
    assert record["Args"] is None
    assert record["Payload"] == '{"Args":["\\xff"]}'
    assert base64.b64decode(record["PayloadBase64"]) == payload


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (9, "killed"),
        (15, "terminated"),
        (6, "aborted"),
        (11, "segmentation fault"),
        (24, "CPU time limit exceeded"),
        (29, "I/O possible"),
        (40, "signal 40"),
    ],
)
def test_signal_names_are_gos(number: int, name: str) -> None:
    from goophry_tx.task import signal_name

    assert signal_name(number) == name
