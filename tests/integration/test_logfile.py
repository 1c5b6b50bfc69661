"""Logging to a file (-l or Logfile) and reopening it on SIGUSR1 for rotation."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, wait_for
from tests.integration.conftest import STARTED, Goophry

pytestmark = pytest.mark.integration


def _contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


@pytest.mark.parametrize(
    ("how", "via"),
    [
        ("cli", "-l"),
        ("cli", "Logfile"),
        ("twistd", "-l"),
        ("twistd", "Logfile"),
        ("tac", "Logfile"),
    ],
)
def test_log_goes_to_the_file_and_is_reopened_on_sigusr1(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
    via: str,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    logfile = logs / "goophry.log"
    script = goophry.script("fail.sh", 'echo "failing $1"\nexit 2')
    settings: dict[str, object] = {"Tasks": [{"Type": "t", "Script": str(script)}]}
    args: list[str] = []
    if via == "-l":
        args = ["-l", str(logfile)]
    else:
        # Relative, so it is taken from the config's directory.
        settings["Logfile"] = "logs/goophry.log"
    cfg = write_config(**settings)
    daemon = run_daemon(cfg, *args, how=how)

    wait_for(
        lambda: _contains(logfile, STARTED) or not daemon.running(),
        timeout=15,
        message=lambda: f"the start logged to {logfile}:\n{daemon.log_text()}",
    )
    assert daemon.running(), daemon.log_text()
    assert STARTED not in daemon.log_text()
    goophry.push_args("t", "before-rotation")
    wait_for(lambda: _contains(logfile, "failing before-rotation"), message="failure logged")

    rotated = logs / "goophry.log.1"
    logfile.rename(rotated)
    daemon.signal(signal.SIGUSR1)
    wait_for(
        lambda: logfile.exists() or not daemon.running(),
        message=lambda: f"{logfile} reopened after SIGUSR1:\n{daemon.log_text()}",
    )
    assert daemon.running(), f"SIGUSR1 ended the daemon:\n{daemon.log_text()}"

    goophry.push_args("t", "after-rotation")
    wait_for(
        lambda: _contains(logfile, "failing after-rotation"),
        message=lambda: f"the new file to get the next line:\n{daemon.log_text()}",
    )
    old = rotated.read_text()
    assert "failing before-rotation" in old
    assert "failing after-rotation" not in old
    assert "failing before-rotation" not in logfile.read_text()
    # The file is appended to, one line per event, each with a timestamp.
    for line in logfile.read_text().splitlines():
        if line and not line[0].isspace():
            assert line[:4].isdigit() and line[4] == "-", line

    assert daemon.terminate() == 0, daemon.log_text()
    # The stop is logged to the file too, up to the reactor's last line.
    text = logfile.read_text()
    assert "stopping: no more entries taken" in text
    assert "Main loop terminated" in text


@pytest.mark.parametrize("how", ["cli", "twistd"])
def test_log_file_is_appended_to(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
) -> None:
    logfile = tmp_path / "goophry.log"
    logfile.write_text("an earlier line\n")
    script = goophry.script("t.sh", "true")
    cfg = write_config(Tasks=[{"Type": "t", "Script": str(script)}])
    daemon = run_daemon(cfg, "-l", str(logfile), how=how)
    wait_for(lambda: _contains(logfile, STARTED), timeout=15, message=daemon.log_text)
    assert logfile.read_text().startswith("an earlier line\n")
