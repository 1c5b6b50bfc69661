"""
What a dashboard tab costs an idle daemon: the daemon's CPU time (user and
system, from /proc) while one client asks for the overview every PERIOD
seconds, as the page's refresh does, against the same span with no client.

    python -m bench.dashboard_idle PID HOST:PORT [SECONDS] [PERIOD] [PATH]
"""

from __future__ import annotations

import http.client
import os
import sys
import time


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(pid: int, address: str, seconds: float, period: float, path: str) -> float:
    """The share of one core the daemon used; no requests when C{period} is 0."""
    host, _, port = address.rpartition(":")
    used, started = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - started < seconds:
        if period:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
        time.sleep(period or 1.0)
    return (cpu_seconds(pid) - used) / (time.monotonic() - started)


def main() -> None:
    pid, address = int(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    period = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    path = sys.argv[5] if len(sys.argv) > 5 else "/ui/"
    idle = measure(pid, address, seconds, 0, path)
    print(f"no client: {100 * idle:.2f} % of a core")
    busy = measure(pid, address, seconds, period, path)
    print(f"{path} every {period:g} s: {100 * busy:.2f} % of a core")


if __name__ == "__main__":
    main()
