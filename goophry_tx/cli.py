"""
The original's command line, C{goophry [-V] [-v] [-c cfg] [-l logfile]},
for a drop-in swap of the Go binary: the same service as the twistd plugin,
in the foreground.
"""

from __future__ import annotations

import argparse
import sys

from goophry_tx import __version__
from goophry_tx.config import ConfigError, load_config


def version_text() -> str:
    return f"Goophry version {__version__}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="goophry", description="Run scripts for tasks pushed onto Redis lists."
    )
    parser.add_argument("-V", action="store_true", help="print the version and exit")
    parser.add_argument("-v", action="store_true", help="log every task")
    parser.add_argument(
        "-c", default="goophry.config.json", metavar="cfg", help="the configuration file"
    )
    parser.add_argument("-l", default=None, metavar="logfile", help="log to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.V:
        print(version_text())
        return 0
    try:
        config = load_config(args.c)
    except ConfigError as e:
        print(f"goophry: {e}", file=sys.stderr)
        return 2

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from goophry_tx.logs import ReopeningFileObserver, install_reopen_signal
    from goophry_tx.service import build_service

    observer = ReopeningFileObserver(args.l or config.logfile)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    install_reopen_signal(observer, reactor.callFromThread)  # type: ignore[attr-defined]
    try:
        service = build_service(config, reactor, verbose=args.v)
        service.privilegedStartService()
    except (ConfigError, OSError, Exception) as e:
        print(f"goophry: {e}", file=sys.stderr)
        return 1
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
