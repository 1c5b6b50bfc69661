"""The stats server: JSON and Prometheus over HTTP and HTTPS, Go's mux rules."""

from __future__ import annotations

import re
import ssl
import time
import urllib.request
import warnings
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from goophry_tx import __version__
from goophry_tx.keys import Keys
from goophry_tx.redis import RedisHealth, RedisLink
from goophry_tx.stats import QueueFigures, queue_figures
from tests.conftest import TLSFiles
from tests.helpers import DaemonProcess, free_port, shell_wait_for, task_payload, wait_for
from tests.integration.conftest import Goophry, http_get, stats_when

pytestmark = pytest.mark.integration


def _stats_config(
    goophry: Goophry, write_config: Callable[..., Path], stats_address: str, **settings: object
) -> Path:
    ok = goophry.script("ok.sh", "true")
    bad = goophry.script("bad.sh", "exit 1")
    return write_config(
        Tasks=[
            {"Type": "ok", "Script": str(ok), "Workers": 2},
            {"Type": "bad", "Script": str(bad)},
            {"Type": "idle", "Script": str(ok)},
        ],
        FailedTasksTTL=60,
        StatsInterface=stats_address,
        **settings,
    )


def test_stats_json_counts_what_happened(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
) -> None:
    cfg = _stats_config(goophry, write_config, stats_address)
    goophry.started(run_daemon(cfg))

    # Every configured type is there from the start.
    first = stats_when(stats_address, lambda s: True)
    assert first["TaskCount"] == {"ok": 0, "bad": 0, "idle": 0}
    assert first["Version"] == __version__
    assert isinstance(first["Runtime"], int) and first["Runtime"] >= 0

    for n in range(3):
        goophry.push_args("ok", str(n))
    goophry.push_args("bad", "b")
    goophry.push("bad", "not json")

    stats = stats_when(
        stats_address,
        lambda s: s["Succeeded"]["ok"] == 3 and s["Failed"]["bad"] == 1 and s["Invalid"]["bad"],
    )
    assert stats["TaskCount"] == {"ok": 3, "bad": 1, "idle": 0}
    assert stats["Running"] == {"ok": 0, "bad": 0, "idle": 0}
    assert stats["Succeeded"] == {"ok": 3, "bad": 0, "idle": 0}
    assert stats["Failed"] == {"ok": 0, "bad": 1, "idle": 0}
    assert stats["Invalid"] == {"ok": 0, "bad": 1, "idle": 0}
    assert stats["Paused"] == {"ok": False, "bad": False, "idle": False}
    assert stats["Version"] == __version__
    # The original's fields come first, in its order.
    assert list(stats)[:3] == ["Runtime", "TaskCount", "Version"]

    reply = http_get(stats_address, "/")
    assert reply.status == 200
    assert reply.content_type.split(";")[0] == "application/json"


def test_stats_shows_a_running_task(goophry: Goophry, tmp_path: Path, stats_address: str) -> None:
    release = tmp_path / "release"
    goophry.launch(
        f"i=0\nwhile [ ! -e {release} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
        task_payload("x"),
        task_type="w",
        StatsInterface=stats_address,
    )
    stats = stats_when(stats_address, lambda s: s["Running"]["w"] == 1)
    assert stats["TaskCount"] == {"w": 1}
    release.touch()
    stats = stats_when(stats_address, lambda s: s["Running"]["w"] == 0)
    assert stats["Succeeded"] == {"w": 1}


@pytest.mark.parametrize(
    ("pattern", "served", "not_found"),
    [
        ("/", ["/", "/anything", "/a/b"], []),
        ("/stats/", ["/stats/", "/stats/x", "/stats/x/y"], ["/", "/statsx", "/other/"]),
        ("/stats", ["/stats"], ["/", "/stats/", "/stats/x", "/statsx"]),
    ],
)
def test_stats_pattern_follows_go_mux_rules(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
    pattern: str,
    served: list[str],
    not_found: list[str],
) -> None:
    cfg = _stats_config(goophry, write_config, stats_address, StatsPattern=pattern)
    goophry.started(run_daemon(cfg))
    stats_when(stats_address, lambda s: True, path=served[0])
    for path in served:
        reply = http_get(stats_address, path)
        assert reply.status == 200, path
        assert reply.content_type.split(";")[0] == "application/json", path
        assert reply.json()["Version"] == __version__
    for path in not_found:
        reply = http_get(stats_address, path)
        assert reply.status == 404, path
        assert b"Runtime" not in reply.body
    if pattern == "/stats/":
        # Go's mux redirects the subtree's name without its slash.
        reply = http_get(stats_address, "/stats")
        assert reply.status == 301
        assert reply.headers["Location"].endswith("/stats/")


def _families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _by_type(family: Metric, sample: str) -> dict[str, float]:
    return {s.labels["type"]: s.value for s in family.samples if s.name == sample}


def test_metrics_are_prometheus_text(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
) -> None:
    cfg = _stats_config(goophry, write_config, stats_address, StatsPattern="/stats")
    goophry.started(run_daemon(cfg))
    goophry.push_args("ok", "1")
    goophry.push_args("ok", "2")
    goophry.push_args("bad", "3")
    stats_when(stats_address, lambda s: s["Succeeded"]["ok"] == 2 and s["Failed"]["bad"], "/stats")

    reply = http_get(stats_address, "/metrics")
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain")
    assert "version=0.0.4" in reply.content_type
    text = reply.body.decode()
    assert text.endswith("\n")
    found = _families(text)

    kinds = {name: family.type for name, family in found.items()}
    for name, kind in {
        "goophry_tasks_started": "counter",
        "goophry_tasks_succeeded": "counter",
        "goophry_tasks_failed": "counter",
        "goophry_entries_invalid": "counter",
        "goophry_entries_requeued": "counter",
        "goophry_tasks_running": "gauge",
        "goophry_task_duration_seconds": "histogram",
        "goophry_failures": "counter",
        "goophry_recoveries": "counter",
        "goophry_redis_reconnects": "counter",
        "goophry_redis_connected": "gauge",
        "goophry_build_info": "gauge",
        "process_start_time_seconds": "gauge",
        "process_cpu_seconds": "counter",
    }.items():
        assert kinds.get(name) == kind, name
    assert "goophry_uptime_seconds" not in found
    for name in found:
        assert name.startswith(("goophry_", "process_")), name

    assert _by_type(found["goophry_tasks_started"], "goophry_tasks_started_total") == {
        "ok": 2,
        "bad": 1,
        "idle": 0,
    }
    assert _by_type(found["goophry_tasks_succeeded"], "goophry_tasks_succeeded_total")["ok"] == 2
    assert _by_type(found["goophry_tasks_failed"], "goophry_tasks_failed_total")["bad"] == 1
    assert found["goophry_redis_connected"].samples[0].value == 1
    [build] = found["goophry_build_info"].samples
    assert build.labels == {"version": __version__}
    # The daemon's own process, not the test's.
    [started] = found["process_start_time_seconds"].samples
    assert started.value > time.time() - 600
    # Each type has the whole histogram and every failure reason.  The
    # counts come from the recorder's observe() and failed_with() calls.
    histogram = found["goophry_task_duration_seconds"]
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    assert len(buckets) == 3 * 19
    assert set(_by_type(histogram, "goophry_task_duration_seconds_count")) == {"ok", "bad", "idle"}
    reasons = {(s.labels["type"], s.labels["reason"]) for s in found["goophry_failures"].samples}
    assert len(reasons) == 3 * 7


def test_metrics_in_openmetrics_when_asked(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
) -> None:
    cfg = _stats_config(goophry, write_config, stats_address)
    goophry.started(run_daemon(cfg))
    goophry.push_args("ok", "1")
    stats_when(stats_address, lambda s: s["Succeeded"]["ok"] == 1)

    request = urllib.request.Request(
        f"http://{stats_address}/metrics",
        # What Prometheus sends.
        headers={
            "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        },
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        content_type = reply.headers["Content-Type"]
        text = reply.read().decode()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    found = {f.name: f for f in openmetrics_families(text)}
    assert found["goophry_build"].type == "info"
    assert _by_type(found["goophry_tasks_succeeded"], "goophry_tasks_succeeded_total")["ok"] == 1


@pytest_twisted.inlineCallbacks
def test_queue_figures_read_what_running_daemons_hold(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
) -> Generator[Deferred[Any], Any, None]:
    release = tmp_path / "release"
    wait = goophry.script(
        "wait.sh",
        f"i=0\nwhile [ ! -e {release} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
    )
    bad = goophry.script("bad.sh", "exit 1")
    tasks = [{"Type": "w", "Script": str(wait)}, {"Type": "bad", "Script": str(bad)}]
    # Two instances, one entry in flight in each.
    cfg = write_config(Tasks=tasks, FailedTasksTTL=60)
    for _ in range(2):
        goophry.started(run_daemon(cfg))
    for n in range(5):
        goophry.push_args("w", str(n))
    goophry.push_args("bad", "x")
    goophry.wait_failed("bad")
    wait_for(lambda: goophry.llen(goophry.queue("w")) == 3, 10, message="two entries taken")

    health = RedisHealth(reactor, goophry.redis.address)
    endpoint = TCP4ClientEndpoint(reactor, goophry.redis.host, goophry.redis.port, timeout=5)
    link = RedisLink(reactor, endpoint, health, name="test")
    link.startService()
    try:
        yield link.when_connected().addTimeout(10, reactor)
        figures = yield queue_figures(link, Keys(goophry.key), ["w", "bad", "idle"]).addTimeout(
            10, reactor
        )
    finally:
        release.touch()
        yield link.stopService()
    assert figures == {
        "w": QueueFigures(queued=3, inflight=2, failed=0),
        "bad": QueueFigures(queued=0, inflight=0, failed=1),
        "idle": QueueFigures(queued=0, inflight=0, failed=0),
    }


def test_stats_over_https_with_a_chain(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
    tls_files: TLSFiles,
) -> None:
    cfg = _stats_config(
        goophry,
        write_config,
        stats_address,
        StatsTLSCertFile=str(tls_files.cert),
        StatsTLSKeyFile=str(tls_files.key),
    )
    goophry.started(run_daemon(cfg))
    # Verified against the test CA only: the server must send the intermediate.
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    stats = stats_when(stats_address, lambda s: True, context=context)
    assert stats["Version"] == __version__
    reply = http_get(stats_address, "/", context)
    assert reply.content_type.split(";")[0] == "application/json"
    assert http_get(stats_address, "/metrics", context).status == 200

    # TLS 1.2 is accepted, TLS 1.1 is refused by the server.
    tls12 = ssl.create_default_context(cafile=str(tls_files.ca))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert http_get(stats_address, "/", tls12).status == 200

    tls11 = ssl.create_default_context(cafile=str(tls_files.ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11.minimum_version = ssl.TLSVersion.TLSv1
        tls11.maximum_version = ssl.TLSVersion.TLSv1_1
    tls11.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as refused:
        http_get(stats_address, "/", tls11)
    # The client did offer TLS 1.1 (not "no protocols available"): the server said no.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)
    assert re.search(r"PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|VERSION", str(refused.value))

    # Plain HTTP on the HTTPS port gets no stats.
    with pytest.raises(Exception):  # noqa: B017 (any failure will do, no JSON)
        http_get(stats_address, "/").json()


def _refused(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    how: str,
    setting: str,
    cert: Path,
    key: Path,
) -> str:
    """Start with these certificate files: the daemon exits non-zero naming C{setting}; its log."""
    cfg = _stats_config(
        goophry,
        write_config,
        f"127.0.0.1:{free_port()}",
        StatsTLSCertFile=str(cert),
        StatsTLSKeyFile=str(key),
    )
    daemon = run_daemon(cfg, how=how)
    code = daemon.wait(15)
    log = daemon.log_text()
    assert code != 0, log
    assert setting in log, log
    return log


@pytest.mark.parametrize("how", ["twistd", "cli"])
def test_a_key_that_does_not_match_the_certificate_stops_the_start(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tls_files: TLSFiles,
    tls_ca: trustme.CA,
    how: str,
) -> None:
    other = tmp_path / "other.key"
    tls_ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    log = _refused(goophry, write_config, run_daemon, how, "StatsTLSKeyFile", tls_files.cert, other)
    assert "does not match" in log


@pytest.mark.parametrize("how", ["twistd", "cli"])
@pytest.mark.parametrize("problem", ["garbage", "directory", "missing"])
def test_an_unreadable_certificate_stops_the_start(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tls_files: TLSFiles,
    how: str,
    problem: str,
) -> None:
    cert = tmp_path / "bad.crt"
    if problem == "garbage":
        cert.write_text("this is not a certificate\n")
    elif problem == "directory":
        cert.mkdir()
    log = _refused(goophry, write_config, run_daemon, how, "StatsTLSCertFile", cert, tls_files.key)
    assert str(cert) in log


@pytest.mark.parametrize("how", ["twistd", "tac"])
def test_twistd_refuses_a_bad_certificate_without_a_traceback(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    tls_files: TLSFiles,
    how: str,
) -> None:
    cert = tmp_path / "bad.crt"
    cert.write_text("this is not a certificate\n")
    log = _refused(goophry, write_config, run_daemon, how, "StatsTLSCertFile", cert, tls_files.key)
    assert "Traceback" not in log


def _metrics(address: str) -> dict[str, Metric]:
    reply = http_get(address, "/metrics")
    assert reply.status == 200
    return _families(reply.body.decode())


def _by_labels(family: Metric, sample: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels[name] for name in labels): s.value
        for s in family.samples
        if s.name == sample
    }


def test_metrics_count_runs_by_type_failures_by_reason_and_read_the_queues(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
) -> None:
    ok = goophry.script("ok.sh", "true")
    bad = goophry.script("bad.sh", "exit 1")
    noisy = goophry.script("noisy.sh", "echo talkative")
    cfg = write_config(
        Tasks=[
            {"Type": "ok", "Script": str(ok), "Workers": 2},
            {"Type": "bad", "Script": str(bad)},
            {"Type": "noisy", "Script": str(noisy)},
            {"Type": "idle", "Script": str(ok)},
        ],
        FailedTasksTTL=60,
        StatsInterface=stats_address,
    )
    # Paused before the start: its entries stay queued, for the queue gauge.
    goophry.redis.cli("SADD", goophry.keys.paused, "idle")
    goophry.started(run_daemon(cfg))
    for n in range(3):
        goophry.push_args("ok", str(n))
    goophry.push_args("bad", "1")
    goophry.push_args("bad", "2")
    goophry.push("bad", "not json")
    goophry.push_args("noisy", "n")
    goophry.push_args("idle", "i1")
    goophry.push_args("idle", "i2")
    stats_when(
        stats_address,
        lambda s: (
            s["Succeeded"]["ok"] == 3
            and s["Failed"] == {"ok": 0, "bad": 2, "noisy": 1, "idle": 0}
            and s["Invalid"]["bad"] == 1
        ),
    )
    goophry.wait_settled()

    # Asking for the stats (as above) or the metrics reads the queues from
    # Redis, at most every 5 s; the gauges show what was read last, so they
    # come right within one such period after the outcomes are written.
    def gauges_read_after_settling() -> bool:
        found = _metrics(stats_address)
        return "goophry_queue_length" in found and _by_type(
            found["goophry_failed_entries"], "goophry_failed_entries"
        ) == {"ok": 0, "bad": 3, "noisy": 1, "idle": 0}

    wait_for(gauges_read_after_settling, 15, message="the queue gauges, after a scrape")
    found = _metrics(stats_address)
    histogram = found["goophry_task_duration_seconds"]
    # One observation per task run; invalid entries never ran.
    assert _by_type(histogram, "goophry_task_duration_seconds_count") == {
        "ok": 3,
        "bad": 2,
        "noisy": 1,
        "idle": 0,
    }
    failures = {
        key: value
        for key, value in _by_labels(
            found["goophry_failures"], "goophry_failures_total", "type", "reason"
        ).items()
        if value
    }
    assert failures == {("bad", "exit"): 2, ("bad", "invalid"): 1, ("noisy", "output"): 1}
    queued = _by_type(found["goophry_queue_length"], "goophry_queue_length")
    assert queued == {"ok": 0, "bad": 0, "noisy": 0, "idle": 2}
    failed = _by_type(found["goophry_failed_entries"], "goophry_failed_entries")
    assert failed == {"ok": 0, "bad": 3, "noisy": 1, "idle": 0}
    inflight = _by_type(found["goophry_inflight_entries"], "goophry_inflight_entries")
    assert inflight == {"ok": 0, "bad": 0, "noisy": 0, "idle": 0}
    paused = _by_type(found["goophry_type_paused"], "goophry_type_paused")
    assert paused == {"ok": 0, "bad": 0, "noisy": 0, "idle": 1}


def test_the_recovery_of_a_killed_instance_is_counted(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    stats_address: str,
) -> None:
    release = tmp_path / "release"
    wait = goophry.script("wait.sh", shell_wait_for(release))
    tasks = [{"Type": "w", "Script": str(wait)}]
    killed = goophry.started(run_daemon(write_config(Tasks=tasks, InstanceTimeout=3)))
    goophry.push_args("w", "x")
    wait_for(lambda: goophry.inflight_keys(), 10, message=killed.log_text)
    survivor = goophry.started(
        run_daemon(
            write_config(
                Tasks=tasks,
                InstanceTimeout=3,
                StatsInterface=stats_address,
                filename="survivor.config.json",
            )
        )
    )
    recoveries = _metrics(stats_address)["goophry_recoveries"]
    assert recoveries.samples[0].value == 0
    killed.kill()
    gone = survivor.wait_for_log("is gone", timeout=15)
    assert f":{killed.pid}:" in gone
    recoveries = _metrics(stats_address)["goophry_recoveries"]
    assert recoveries.samples[0].value == 1
    release.touch()
