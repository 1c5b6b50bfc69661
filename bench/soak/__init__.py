"""
The reliability soak (C{python -m bench.soak}): every entry pushed is
accounted for, across kill -9s of the daemon and of Redis.

C{workload}: the entries, scripts and config; C{chaos}: when the kills come;
C{run}: the processes, the producer and the drain; C{accounting}: the
verdict, a pure function; C{cli}: the command line and the report.
"""

from bench.soak.cli import main

__all__ = ["main"]
