"""The stats server: JSON and Prometheus over HTTP and HTTPS, Go's mux rules."""

from __future__ import annotations

import re
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from goophry_tx import __version__
from tests.conftest import TLSFiles
from tests.helpers import DaemonProcess, free_port, task_payload
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


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{type="[^"]*"\})? (-?[0-9.e+]+)$')


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

    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            match = METRIC_LINE.match(line)
            assert match, f"not a sample line: {line!r}"
            name = match.group(1)
            assert name in types, f"{name} has no # TYPE before it"
            samples[name + (match.group(2) or "")] = float(match.group(3))
    for name, kind in types.items():
        assert name.startswith("goophry_")
        assert kind in ("counter", "gauge")
        assert (kind == "counter") == name.endswith("_total"), name
    assert samples['goophry_tasks_started_total{type="ok"}'] == 2
    assert samples['goophry_tasks_succeeded_total{type="ok"}'] == 2
    assert samples['goophry_tasks_failed_total{type="bad"}'] == 1
    assert samples['goophry_tasks_started_total{type="idle"}'] == 0


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
