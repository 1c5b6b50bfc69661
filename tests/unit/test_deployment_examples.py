"""The systemd units and the logrotate file in examples/: parsed, their settings checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
UNITS = [EXAMPLES / "systemd" / "goophry.service", EXAMPLES / "systemd" / "goophry@.service"]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}:{number}: not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    for suffix, factor in units.items():
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return int(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_unit_runs_goophry_as_a_notify_service_stopped_gently(unit: Path) -> None:
    service = parse_unit(unit)["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify"
    # SIGTERM to the daemon only; the scripts finish under it.
    assert one["KillMode"] == "mixed"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure"
    assert one["User"] not in ("", "root") and one["Group"] not in ("", "root")
    assert "DynamicUser" not in one
    argv = one["ExecStart"].split()
    assert Path(argv[0]).name == "twistd"
    assert "--nodaemon" in argv and "--umask=022" in argv
    assert argv[argv.index("goophry") + 1 : argv.index("goophry") + 3][0] == "-c"
    assert one["ExecStartPre"].split()[1:3] == ["-t", "-c"]
    # Hardening that would stop scripts from working is left out.
    for breaking in ("PrivateTmp", "ProtectHome", "MemoryDenyWriteExecute", "SystemCallFilter"):
        assert breaking not in one, breaking
    assert one["NoNewPrivileges"] == "yes"
    assert parse_unit(unit)["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_the_stop_timeout_leaves_room_for_shutdown_timeout_and_kill_grace(unit: Path) -> None:
    service = parse_unit(unit)["Service"]
    config = json.loads((EXAMPLES / "systemd" / "goophry.config.json").read_text())
    assert config["ShutdownTimeout"] > 0
    assert seconds(service["TimeoutStopSec"][-1]) > config["ShutdownTimeout"] + config["KillGrace"]


def test_the_template_takes_its_config_from_the_instance_name() -> None:
    service = parse_unit(UNITS[1])["Service"]
    assert service["ExecStart"][-1].endswith("goophry -c /etc/goophry/%i.config.json")
    assert service["ExecStartPre"][-1].endswith("-c /etc/goophry/%i.config.json")


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    """The config beside the units loads once its scripts and folders exist."""
    from goophry_tx.config import load_config

    config = json.loads((EXAMPLES / "systemd" / "goophry.config.json").read_text())
    for task in config["Tasks"]:
        task["Script"] = "/bin/true"
    config["ErrorScript"] = "/bin/true"
    config["Logfile"] = str(tmp_path / "goophry.log")
    path = tmp_path / "goophry.config.json"
    path.write_text(json.dumps(config))
    assert load_config(str(path)).warnings == ()


def test_logrotate_signals_the_main_process_only() -> None:
    text = (EXAMPLES / "logrotate" / "goophry").read_text()
    body = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    [kill] = [line for line in body if line.startswith("systemctl kill")]
    assert "--kill-whom=main" in kill.split()
    assert "--signal=USR1" in kill.split()
    config = json.loads((EXAMPLES / "systemd" / "goophry.config.json").read_text())
    # The rotated files are the ones the example config logs to.
    pattern = next(line for line in body if line.endswith("{")).split()[0]
    assert Path(config["Logfile"]).match(pattern)


def _analyze_works() -> bool:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return False
    try:
        done = subprocess.run([analyze, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _analyze_works(), reason="systemd-analyze cannot run here")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_finds_nothing(unit: Path, tmp_path: Path) -> None:
    """
    systemd's own check, on a copy whose commands point at this checkout's
    virtualenv (verify insists that they exist).
    """
    bin_dir = Path(sys.executable).parent
    name = unit.name.replace("@.", "@example.")
    copy = tmp_path / name
    copy.write_text(unit.read_text().replace("/opt/goophry/bin", str(bin_dir)))
    if "@" in unit.name:
        (tmp_path / unit.name).write_text(copy.read_text())
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
