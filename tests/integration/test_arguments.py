"""Arguments reach the script verbatim: no shell ever sees them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import shell_write, wait_for
from tests.integration.conftest import Goophry

pytestmark = pytest.mark.integration

TRICKY = [
    "two words",
    "  leading and trailing  ",
    "'single'",
    '"double"',
    "semi;colon; echo pwned",
    "$(id)",
    "`id`",
    "*",
    "/*",
    "$HOME",
    "a\\b",
    "new\nline",
    "tab\there",
    "héllo ✓",
    "",
    "-n",
    "--",
    "|",
    "&& true",
    "> redirected",
]


def _argv_recorder(out: Path) -> str:
    """A script that writes its arguments, NUL-separated, to C{out}."""
    # (A bare printf '%s\0' "$@" would print one empty argument for none.)
    return shell_write(out, 'for a in "$@"; do printf \'%s\\0\' "$a"; done')


def _read_argv(out: Path) -> list[str]:
    data = out.read_bytes()
    assert data == b"" or data.endswith(b"\0")
    return [part.decode("utf-8") for part in data.split(b"\0")[:-1]]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(TRICKY, id="tricky"),
        pytest.param([f"arg {i} ;$(x)" for i in range(50)], id="fifty"),
        pytest.param([""], id="one-empty"),
        pytest.param([], id="none"),
    ],
)
def test_arguments_reach_the_script_verbatim(
    goophry: Goophry, tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "argv"
    daemon = goophry.launch(
        _argv_recorder(out),
        json.dumps({"Args": args}, ensure_ascii=False),
        task_type="rec",
        FailedTasksTTL=60,
    ).daemon

    wait_for(out.exists, message=lambda: f"{out} written:\n{daemon.log_text()}")
    assert _read_argv(out) == args
    # Nothing was run by a shell: no file named after a redirection appeared.
    assert not (daemon.cwd / "redirected").exists()
    # The outcome is written after the script has left its file: wait for it.
    goophry.wait_settled(message=daemon.log_text)
    assert goophry.failed("rec") == []
