"""
A daemon imports what its configuration uses, and not the rest: the
dashboard, prometheus_client, the stats server and pyOpenSSL cost memory
(README, Performance) that a daemon without them does not carry.

Each case builds the service in a fresh interpreter and reads its
C{sys.modules}: the test process itself has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, write_config

#: Imported only when the dashboard is configured.
DASHBOARD = {"goophry_tx.dashboard.resource", "goophry_tx.dashboard.views"}
#: Imported at the first scrape of MetricsPattern.
METRICS = {"goophry_tx.metrics", "prometheus_client"}
#: Imported only when StatsInterface is set (the service is built, not started:
#: nothing listens on the port named).
STATS_SERVER = {"goophry_tx.web", "twisted.web.server"}

#: Builds the service from the config named by argv[1], prints sys.modules.
BUILD = """
import json, sys
from twisted.internet import reactor
from goophry_tx.config import load_config
from goophry_tx.service import build_service
build_service(load_config(sys.argv[1]), reactor)
print(json.dumps(sorted(sys.modules)))
"""

#: Reads and checks the config named by argv[1], prints sys.modules.
CHECK = """
import json, sys
from goophry_tx.config import check_config
check_config(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def imported(tmp_path: Path, program: str, **settings: Any) -> set[str]:
    """The modules a fresh interpreter holds after C{program} ran on a config of C{settings}."""
    defaults = {
        "RedisAddress": "127.0.0.1:1",
        "RedisQueueKey": "q",
        "Tasks": [{"Type": "mail", "Script": "/bin/true", "Workers": 256}],
    }
    config = write_config(tmp_path, **{**defaults, **settings})
    done = subprocess.run(
        [sys.executable, "-c", program, str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def test_stats_without_the_dashboard(tmp_path: Path) -> None:
    modules = imported(tmp_path, BUILD, StatsInterface="127.0.0.1:1")
    assert STATS_SERVER <= modules
    assert modules & (DASHBOARD | METRICS) == set()


def test_no_stats_server(tmp_path: Path) -> None:
    modules = imported(tmp_path, BUILD)
    assert "goophry_tx.service" in modules
    assert modules & (STATS_SERVER | DASHBOARD | METRICS) == set()


def test_the_dashboard_when_configured(tmp_path: Path) -> None:
    """The check above would see the dashboard's modules, were they imported."""
    modules = imported(tmp_path, BUILD, StatsInterface="127.0.0.1:1", DashboardPattern="/ui/")
    assert DASHBOARD | STATS_SERVER <= modules
    assert modules & METRICS == set()


@pytest.mark.parametrize("tls", [False, True])
def test_checking_a_config_imports_openssl_only_for_tls(tmp_path: Path, tls: bool) -> None:
    """
    The configuration's checks import pyOpenSSL only to read TLS files.
    (A daemon imports it all the same today: txredisapi and Twisted's TCP
    transport import it at their own import.)
    """
    settings: dict[str, Any] = {}
    if tls:
        settings = {"RedisTLS": True, "RedisAddress": "localhost:1"}
    modules = imported(tmp_path, CHECK, **settings)
    assert ("OpenSSL" in modules) is tls
