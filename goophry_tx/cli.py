"""
The original's command line, C{goophry [-V] [-v] [-t] [-c cfg] [-l logfile]},
for a drop-in swap of the Go binary: the same service as the twistd plugin,
in the foreground.  C{python -m goophry_tx} is the same command.
"""

from __future__ import annotations

import argparse
import sys

from goophry_tx.config import LOG_FORMATS, ConfigError, check_config
from goophry_tx.startup import check, config_error_text, listen_error_text, version_text


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="goophry", description="Run scripts for tasks pushed onto Redis lists."
    )
    parser.add_argument("-V", action="store_true", help="print the version and exit")
    parser.add_argument("-v", action="store_true", help="log every task")
    parser.add_argument(
        "-t",
        action="store_true",
        help="check the configuration (scripts, TLS files, addresses) and exit",
    )
    parser.add_argument(
        "-c", default="goophry.config.json", metavar="cfg", help="the configuration file"
    )
    parser.add_argument("-l", default=None, metavar="logfile", help="log to this file")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="one line of text per event, or one JSON object (default: LogFormat, or text)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.V:
        print(version_text())
        return 0
    if args.t:
        return check(args.c, args.l)
    try:
        config = check_config(args.c, args.l)
    except ConfigError as e:
        print(config_error_text(e), file=sys.stderr)
        return 2

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import globalLogBeginner

    from goophry_tx.logs import make_observer
    from goophry_tx.service import build_service
    from goophry_tx.startup import log_warnings, when_running

    observer = make_observer(
        args.l or config.logfile,
        args.log_format or config.log_format,
        reactor.callFromThread,  # type: ignore[attr-defined]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log_warnings(config)
    service = build_service(config, reactor, verbose=args.v)
    try:
        service.privilegedStartService()
    except CannotListenError as e:
        print(listen_error_text(e), file=sys.stderr)
        return 1
    reactor.callWhenRunning(service.startService)
    when_running(reactor)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
