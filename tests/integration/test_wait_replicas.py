"""RedisWaitReplicas: the daemon sends WAIT, and a replica answers it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import STARTED, DaemonProcess, RedisServer, wait_for, write_config, write_script

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTRIES = 20
ANNOUNCED = "waiting for 1 replicas (WAIT, at most 1000 ms) after each take and each outcome"
SHORT = "only 0 of 1 replicas acknowledged a write within 1000 ms"


def test_wait_is_sent_after_each_take_and_outcome_and_answered_by_the_replica(
    make_redis_server: Callable[..., RedisServer],
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    master = make_redis_server()
    replica = make_redis_server(replicaof=f"{master.host} {master.port}")
    wait_for(
        lambda: b"master_link_status:up" in bytes(replica.cli("INFO", "replication")),  # type: ignore[arg-type]
        20,
        message="the replica in sync",
    )
    ran = tmp_path / "ran"
    script = write_script(tmp_path, "record.sh", f'echo "$1" >> {ran}')
    config = write_config(
        tmp_path,
        RedisAddress=master.address,
        RedisQueueKey=queue_key,
        RedisWaitReplicas=1,
        Tasks=[{"Type": "record", "Script": str(script), "Workers": 1}],
    )
    daemon = run_daemon(config)
    daemon.wait_for_log(STARTED, 20)
    assert ANNOUNCED in daemon.log_text()
    master.cli("CONFIG", "RESETSTAT")

    master.cli(
        "RPUSH", f"{queue_key}:record", *[json.dumps({"Args": [f"e{i}"]}) for i in range(ENTRIES)]
    )

    def ran_all() -> bool:
        return ran.exists() and len(ran.read_text().split()) == ENTRIES

    wait_for(ran_all, 30, message=daemon.log_text)

    # One WAIT after each take (one at a time with one worker), and one
    # after each removal of finished entries (several may go in one): each
    # answered by the replica, so never short.
    def waits() -> int:
        with master.connect() as connection:
            return connection.commandstats().get("wait", 0)

    wait_for(lambda: waits() >= ENTRIES + 1, 10, message=lambda: f"{waits()} WAITs")
    assert waits() <= 2 * ENTRIES
    assert SHORT not in daemon.log_text()
    assert replica.cli("LLEN", f"{queue_key}:record") == 0

    # Without its replica the master answers WAIT with 0 after the timeout:
    # said once, and the entries still run.
    replica.kill()
    master.cli("RPUSH", f"{queue_key}:record", json.dumps({"Args": ["late"]}))
    wait_for(lambda: "late" in ran.read_text().split(), 30, message=daemon.log_text)
    daemon.wait_for_log(SHORT, 10)
    assert daemon.log_text().count(SHORT) == 1
