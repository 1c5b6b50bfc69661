"""Unit tests: fakes, a Clock, no Redis; only test_spawn.py starts real processes."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_process: starts real (short-lived) child processes; no Redis"
    )
