"""Any bytes at all as an entry: the daemon never crashes and never drops one.

One real daemon serves every example (starting one per example would take
most of a second each); each example is pushed, then followed until its
outcome is recorded: the script ran with the entry's Args, or the failed list
holds the entry.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.conftest import Rig
from tests.helpers import DaemonProcess, outcomes, shell_write, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
tasks = st.lists(st.text(max_size=12), max_size=4).map(lambda args: {"Args": args})
entries = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=24).map(str.encode),
    # Valid tasks (text may hold NUL, which no argv can), in both JSON spellings.
    tasks.map(lambda task: json.dumps(task).encode()),
    tasks.map(lambda task: json.dumps(task, ensure_ascii=False).encode()),
    # Any JSON, alone or as Args.
    json_values.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps({"Args": value}).encode()),
    st.sampled_from(
        [
            b"",
            b"\xff\xfe",
            b'{"Args":["\\ud800"]}',
            b'{"args":["lower-case key"]}',
            b'{"Args":["a\\u0000b"]}',
            b'{"Args":["x"]',
            b"[]",
            b"null",
        ]
    ),
)


def _args_of(payload: bytes) -> Any:
    """The Args a run of this payload must have had (the key matched as Go does)."""
    data = json.loads(payload)
    if "Args" in data:
        return data["Args"]
    return next(value for key, value in data.items() if key.lower() == "args")


def _is_this_entry(record: dict[str, Any], payload: bytes) -> bool:
    if record.get("Args") is None:
        if "PayloadBase64" in record:
            return bool(base64.b64decode(record["PayloadBase64"]) == payload)
        return bool(record.get("Payload") == payload.decode("utf-8", "backslashreplace"))
    # A valid task that failed (e.g. NUL in an argument: it cannot start).
    return bool(record["Args"] == _args_of(payload))


def test_arbitrary_entries_are_run_or_stored_as_failed(
    rig: Rig,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
) -> None:
    run = tmp_path / "run"
    # The argument count, then the arguments, NUL-separated, written whole
    # (and nothing on stdout: a run succeeds).
    script = rig.script("record.sh", shell_write(run, 'printf \'%s\\0\' "$#" "$@"'))
    cfg = rig.config(
        [{"Type": "any", "Script": str(script)}], StatsInterface=stats_address, BlockTimeout=30
    )
    daemon = run_daemon(cfg)
    wait_for(lambda: outcomes(stats_address) is not None, 20, message=daemon.log_text)
    rig.wait_consuming()
    failed_key = rig.failed_key("any")

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(payload=entries)
    def check(payload: bytes) -> None:
        run.unlink(missing_ok=True)
        before = outcomes(stats_address)
        assert before is not None
        rig.redis.cli("RPUSH", rig.queue("any"), payload)
        wait_for(
            lambda: (outcomes(stats_address) or 0) > before,
            10,
            message=lambda: f"an outcome for {payload!r}:\n{daemon.log_text()[-3000:]}",
        )
        wait_for(
            lambda: not rig.inflight_keys() and (run.exists() or rig.lrange(failed_key)),
            5,
            message=lambda: f"the outcome of {payload!r} written:\n{daemon.log_text()[-3000:]}",
        )
        stored = [json.loads(item) for item in rig.lrange(failed_key)]
        rig.redis.cli("DEL", failed_key)
        if run.exists():
            assert stored == [], (payload, stored)
            count, *recorded = run.read_bytes().split(b"\0")[:-1]
            assert int(count) == len(recorded)
            assert [arg.decode() for arg in recorded] == _args_of(payload)
        else:
            [record] = stored
            assert _is_this_entry(record, payload), (payload, record)
        assert rig.lrange(rig.queue("any")) == []
        assert daemon.running(), daemon.log_text()

    check()
    assert daemon.running()
    assert "Traceback" not in daemon.log_text()
