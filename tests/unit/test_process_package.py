"""goophry_tx.process: the process engine imports nothing of Redis, and nothing that imports it."""

from __future__ import annotations

import json
import subprocess
import sys

# What importing the process engine may load of ours: itself, and the value
# objects it reports in (goophry_tx.task, which imports nothing of ours).
ALLOWED = {"goophry_tx", "goophry_tx.task"}


def loaded_by(module: str) -> tuple[set[str], set[str]]:
    """Our modules, and the Redis client modules, that a fresh interpreter loads for C{module}."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    modules = set(json.loads(out))
    ours = {m for m in modules if m == "goophry_tx" or m.startswith("goophry_tx.")}
    redis = {m for m in modules if m.split(".")[0] in ("txredisapi", "hiredis")}
    return ours, redis


def test_the_process_engine_imports_nothing_of_redis_or_of_its_users() -> None:
    ours, redis = loaded_by("goophry_tx.process.runner")
    assert "goophry_tx.process.spawn" in ours
    outside = {m for m in ours if m not in ALLOWED and not m.startswith("goophry_tx.process")}
    assert outside == set()
    assert redis == set()


def test_what_the_process_engine_imports_does_not_import_it_back() -> None:
    for module in sorted(ALLOWED):
        ours, _ = loaded_by(module)
        assert not any(m.startswith("goophry_tx.process") for m in ours), module
