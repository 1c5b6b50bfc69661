"""
A short reliability soak: every entry is accounted for across kill -9s.

The same code as C{python -m bench.soak}, on 1500 entries with two kill -9s
of the daemon and one of Redis, bounded to about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import main


@pytest.mark.slow
@pytest.mark.integration
def test_no_entry_is_lost_across_kills(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    code = main(
        [
            "--entries=1500",
            "--seed=1",
            "--daemon-kills=2",
            "--redis-kills=1",
            "--batch=50",
            "--duration-limit=60",
            "--stall-seconds=15",
            f"--workdir={tmp_path / 'work'}",
            f"--json={out}",
            "--quiet",
        ]
    )
    result = json.loads(out.read_text())
    details = json.dumps(
        {k: result[k] for k in ("lost_detail", "undrained_detail", "events")}, indent=1
    )
    assert result["daemon_kills"] == 2 and result["redis_kills"] == 1, details
    assert result["lost"] == 0, details
    assert result["undrained"] == 0 and result["unpushed"] == 0, details
    assert code == 0, details
