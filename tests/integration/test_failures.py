"""Failed tasks land in the failed list, with their TTL, and ErrorScript hears of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import shell_write, task_payload, wait_for
from tests.integration.conftest import Goophry

pytestmark = pytest.mark.integration

TTL = 120


class Case(NamedTuple):
    body: str
    payload: str
    args: list[str]
    #: Done to the script once the daemon has started (the config refuses it before).
    after_start: Callable[[Path], None] | None
    #: The ErrorMessage, given the script's path.
    message: Callable[[Path], str]


def _delete(script: Path) -> None:
    script.unlink()


def _not_executable(script: Path) -> None:
    script.chmod(0o644)


def _args(*args: str) -> str:
    return json.dumps({"Args": list(args)}, ensure_ascii=False)


CASES = {
    "exit-3-with-output": Case(
        'echo "out $1"\necho err >&2\nexit 3',
        _args("one arg"),
        ["one arg"],
        None,
        lambda s: "exit status 3\nout one arg\nerr\n",
    ),
    "exit-3-silent": Case("exit 3", _args("x"), ["x"], None, lambda s: "exit status 3"),
    "exit-0-stdout": Case(
        'printf "hello %s" "$1"', _args("wörld"), ["wörld"], None, lambda s: "hello wörld"
    ),
    "exit-0-stderr": Case("echo oops >&2", _args("e"), ["e"], None, lambda s: "oops\n"),
    "killed": Case("kill -9 $$", _args("k"), ["k"], None, lambda s: "signal: killed"),
    "missing-script": Case(
        "true",
        _args("m"),
        ["m"],
        _delete,
        lambda s: f"fork/exec {s}: no such file or directory",
    ),
    "not-executable": Case(
        "true",
        _args("n"),
        ["n"],
        _not_executable,
        lambda s: f"fork/exec {s}: permission denied",
    ),
}


def _error_script(goophry: Goophry, out: Path) -> Path:
    """ErrorScript: writes how many arguments it got, and its first, to C{out}."""
    return goophry.script(
        "error.sh",
        shell_write(out, '{ printf "%s\\n" "$#"; printf "%s" "$1"; }'),
    )


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_failure_is_stored_with_its_message_and_ttl_and_told_to_error_script(
    goophry: Goophry, tmp_path: Path, case: Case
) -> None:
    told = tmp_path / "told"
    daemon, script, _ = goophry.launch(
        case.body,
        task_type="job",
        FailedTasksTTL=TTL,
        ErrorScript=str(_error_script(goophry, told)),
    )
    if case.after_start is not None:
        case.after_start(script)
    goophry.push("job", case.payload)

    [entry] = goophry.wait_failed("job")
    message = case.message(script)
    assert goophry.stamped(entry, daemon) == {"Args": case.args, "ErrorMessage": message}
    ttl = goophry.redis.cli("TTL", goophry.failed_key("job"))
    assert isinstance(ttl, int) and 0 < ttl <= TTL

    wait_for(told.exists, message=lambda: f"ErrorScript to run:\n{daemon.log_text()}")
    count, _, first = told.read_text().partition("\n")
    assert count == "1"
    quoted = "".join(f' "{arg}"' for arg in case.args)
    assert first == f"{script}{quoted}\n\n{message}"

    # Logged at the default level (no -v), and the entry left the in-flight list.
    log = daemon.log_text()
    assert "task job failed" in log
    assert message.splitlines()[0] in log
    assert goophry.inflight_keys() == []
    assert goophry.llen(goophry.queue("job")) == 0


def test_nul_byte_in_an_argument_is_a_failure_that_keeps_its_args(
    goophry: Goophry, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    daemon, script, _ = goophry.launch(
        f"touch {ran}", '{"Args":["a\\u0000b","c"]}', task_type="job", FailedTasksTTL=TTL
    )

    [entry] = goophry.wait_failed("job")
    assert goophry.stamped(entry, daemon) == {
        "Args": ["a\0b", "c"],
        "ErrorMessage": f"fork/exec {script}: argument contains a NUL byte",
    }
    ttl = goophry.redis.cli("TTL", goophry.failed_key("job"))
    assert isinstance(ttl, int) and 0 < ttl <= TTL
    assert not ran.exists()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"Args":["a\\u0000b"]}', "fork/exec {script}: argument contains a NUL byte"),
        (b"\xff\x00raw", "invalid task entry: not valid UTF-8 (byte 0)"),
    ],
    ids=["task-arg", "invalid-entry"],
)
def test_error_script_is_told_of_an_entry_with_a_nul_byte(
    goophry: Goophry, tmp_path: Path, payload: bytes, error: str
) -> None:
    told = tmp_path / "told"
    daemon, script, _ = goophry.launch(
        "true",
        payload,
        task_type="job",
        FailedTasksTTL=TTL,
        ErrorScript=str(_error_script(goophry, told)),
    )
    goophry.wait_failed("job")
    wait_for(
        lambda: told.exists() or "ErrorScript" in daemon.log_text(),
        message=lambda: f"ErrorScript to run or fail:\n{daemon.log_text()}",
    )
    assert told.exists(), daemon.log_text()
    count, _, first = told.read_text().partition("\n")
    assert count == "1"
    assert first.startswith(str(script))
    assert error.format(script=script) in first


def test_failed_tasks_ttl_zero_stores_nothing_but_logs_in_full(goophry: Goophry) -> None:
    daemon = goophry.launch(
        'echo "boom $1"\nexit 3',
        task_payload("x y", "z"),
        "not json",
        task_type="job",
        FailedTasksTTL=0,
    ).daemon

    expected = json.dumps(
        {"Args": ["x y", "z"], "ErrorMessage": "exit status 3\nboom x y\n"},
        separators=(",", ":"),
    )
    # In full: the daemon's FailedAt and Instance follow.
    daemon.wait_for_log(expected.removesuffix("}") + ',"FailedAt":')
    log = daemon.wait_for_log('"Payload":"not json"')
    assert "invalid task entry" in log
    assert goophry.redis.cli("EXISTS", goophry.failed_key("job")) == 0
    wait_for(lambda: goophry.inflight_keys() == [], message="in-flight list emptied")
    assert goophry.llen(goophry.queue("job")) == 0


def test_ttl_is_renewed_on_every_push(goophry: Goophry) -> None:
    goophry.launch("exit 1", task_payload("first"), task_type="job", FailedTasksTTL=TTL)
    goophry.wait_failed("job")
    # Shorten the list's TTL as if time had passed; the next failure renews it.
    goophry.redis.cli("EXPIRE", goophry.failed_key("job"), 5)
    goophry.push_args("job", "second")
    entries = goophry.wait_failed("job", 2)
    assert [e["Args"] for e in entries] == [["first"], ["second"]]
    ttl = goophry.redis.cli("TTL", goophry.failed_key("job"))
    assert isinstance(ttl, int) and 5 < ttl <= TTL
