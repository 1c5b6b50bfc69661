"""Sentinel: the daemons find the master through the sentinels and follow a failover.

A master, a replica and three sentinels run on loopback ports; two daemons
drain a queue; in the middle the master is SIGKILLed, or the sentinels are
told to fail over while it runs; they promote the replica, and the daemons
go on against it.  Every entry was on the replica before (``WAIT``), so none
may be lost; some may run twice (at least once).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import BACK, UNREACHABLE
from tests.helpers import (
    STARTED,
    DaemonProcess,
    RedisReplyError,
    RedisServer,
    SentinelGroup,
    SentinelServer,
    TLSRedisServer,
    free_port,
    wait_for,
    write_config,
    write_script,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTRIES = 600
DAEMONS = 2
WORKERS = 4
#: How long each task's script runs, in seconds.
RUN_SECONDS = 0.05


@pytest.mark.parametrize("how", ["SIGKILL", "SENTINEL FAILOVER"])
def test_daemons_follow_a_failover_and_lose_nothing(
    how: str,
    sentinel_group: SentinelGroup,
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
    record_property: Callable[[str, object], None],
) -> None:
    group = sentinel_group
    ran = tmp_path / "ran"
    # Each run takes a while, so that the drain (about 4 s) is still going
    # when the failover comes, however fast the daemons take and spawn.
    script = write_script(tmp_path, "record.sh", f'echo "$1" >> {ran}; sleep {RUN_SECONDS}')
    config = write_config(
        tmp_path,
        RedisSentinels=group.addresses,
        RedisSentinelMaster=group.name,
        RedisQueueKey=queue_key,
        Tasks=[{"Type": "record", "Script": str(script), "Workers": WORKERS}],
        InstanceTimeout=3,
    )

    def runs() -> Counter[str]:
        return Counter(ran.read_text().split() if ran.exists() else [])

    names = [f"e{i}" for i in range(ENTRIES)]
    group.master.cli("RPUSH", f"{queue_key}:record", *[json.dumps({"Args": [n]}) for n in names])
    # On the replica too before anything is taken: what may be lost is then ours alone.
    assert group.master.cli("WAIT", 1, 5000) == 1

    daemons = [run_daemon(config) for _ in range(DAEMONS)]
    for daemon in daemons:
        daemon.wait_for_log(STARTED, 20)

    def logs() -> str:
        return "\n".join(daemon.log_text() for daemon in daemons)

    wait_for(lambda: sum(runs().values()) >= ENTRIES // 3, 30, message=logs)

    if how == "SIGKILL":
        group.master.kill()
    else:
        # The master is demoted while it runs: the sentinels close its clients.
        group.sentinels[0].cli("SENTINEL", "FAILOVER", group.name)
    at_failover = sum(runs().values())
    assert at_failover < ENTRIES, "the queue drained before the failover"
    wait_for(
        lambda: group.current_master() is group.replica,
        30,
        message="the sentinels to agree on the replica as the new master",
    )

    def drained() -> bool:
        try:
            queue = group.replica.cli("LLEN", f"{queue_key}:record")
            inflight = group.replica.cli("KEYS", f"{queue_key}:record:inflight:*")
        except (OSError, RedisReplyError):
            # Promoting the replica closes its clients, this one included.
            return False
        return len(runs()) == ENTRIES and queue == 0 and inflight == []

    wait_for(
        drained,
        40,
        message=lambda: (
            f"{len(runs())} of {ENTRIES} ran:\n"
            + "\n".join(daemon.log_text() for daemon in daemons)
        ),
    )
    counts = runs()
    lost = [n for n in names if not counts[n]]
    repeated = sum(count - 1 for count in counts.values())
    record_property("failover_lost", len(lost))
    record_property("failover_repeated", repeated)
    print(f"{how}: ran before={at_failover} lost={len(lost)} repeated={repeated}")
    assert lost == []
    for daemon in daemons:
        assert daemon.running()
        # "Back" is logged once every link is back: the one that only
        # listens for pause messages may come back seconds after the drain,
        # at its reconnect backoff (5 s at most).
        daemon.wait_for_log(BACK, timeout=15)
        log = daemon.log_text()
        assert log.count(UNREACHABLE) == 1, log
        assert log.count(BACK) == 1, log
        # It was told the new master by the sentinels, and says so.
        assert f"names 127.0.0.1:{group.replica.port} as master {group.name}" in log, log


def test_a_replica_named_as_master_is_refused_and_the_next_sentinel_asked(
    sentinel_group: SentinelGroup,
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
    make_redis_server: Callable[..., RedisServer],
) -> None:
    """ROLE is checked on every connection: a sentinel that names a replica is not obeyed."""
    group = sentinel_group
    # A stray replica (of nothing that answers), and a sentinel of its own
    # that watches it under the group's name: it names a replica as master.
    stray = make_redis_server(replicaof=f"127.0.0.1 {free_port()}")
    (tmp_path / "liar").mkdir()
    liar = SentinelServer(tmp_path / "liar", stray, group.name, quorum=1)
    liar.start()
    try:
        ran = tmp_path / "ran"
        script = write_script(tmp_path, "record.sh", f'echo "$1" >> {ran}')
        config = write_config(
            tmp_path,
            RedisSentinels=[liar.address, *group.addresses],
            RedisSentinelMaster=group.name,
            RedisQueueKey=queue_key,
            Tasks=[{"Type": "record", "Script": str(script)}],
        )
        daemon = run_daemon(config)
        daemon.wait_for_log("ROLE is slave, not master", 20)
        group.master.cli("RPUSH", f"{queue_key}:record", json.dumps({"Args": ["one"]}))
        wait_for(
            lambda: ran.exists() and ran.read_text().split() == ["one"],
            20,
            message=daemon.log_text,
        )
        assert f"names 127.0.0.1:{group.master.port} as master" in daemon.log_text()
    finally:
        liar.kill()


def test_tls_to_the_sentinels_and_the_master(
    tls_sentinel_group: SentinelGroup,
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    """RedisTLS applies to the sentinels and to the master they name, both verified."""
    group = tls_sentinel_group
    master = group.master
    assert isinstance(master, TLSRedisServer)
    ran = tmp_path / "ran"
    script = write_script(tmp_path, "record.sh", f'echo "$1" >> {ran}')
    config = write_config(
        tmp_path,
        RedisSentinels=group.addresses,
        RedisSentinelMaster=group.name,
        RedisQueueKey=queue_key,
        Tasks=[{"Type": "record", "Script": str(script)}],
        RedisTLS=True,
        RedisTLSCAFile=master.ca_file,
        RedisTLSCertFile=master.client_cert,
        RedisTLSKeyFile=master.client_key,
    )
    daemon = run_daemon(config)
    daemon.wait_for_log(f"names 127.0.0.1:{master.port} as master", 20)
    master.cli("RPUSH", f"{queue_key}:record", json.dumps({"Args": ["secret"]}))
    wait_for(
        lambda: ran.exists() and ran.read_text().split() == ["secret"],
        20,
        message=daemon.log_text,
    )
    assert "unreachable" not in daemon.log_text()
