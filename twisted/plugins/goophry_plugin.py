"""
The C{goophry} twistd plugin:
C{twistd -n goophry -c cfg.json [-v] [-l logfile] [--log-format json] [--check]}.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


def _log_format(value: str) -> str:
    from goophry_tx.config import LOG_FORMATS

    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value


class Options(usage.Options):
    optFlags = [
        ["verbose", "v", "Log every task."],
        ["check", "t", "Check the configuration (scripts, TLS files, addresses) and exit."],
    ]
    optParameters = [
        ["config", "c", "goophry.config.json", "The configuration file."],
        ["logfile", "l", None, "Log to this file (reopened on SIGUSR1)."],
        [
            "log-format",
            None,
            None,
            "text or json (default: the config's LogFormat, or text).",
            _log_format,
        ],
    ]

    def opt_version(self) -> None:
        """Print Goophry's version and exit."""
        from goophry_tx.startup import version_text

        print(version_text())
        sys.exit(0)

    opt_V = opt_version

    def postOptions(self) -> None:
        from goophry_tx.config import ConfigError, check_config
        from goophry_tx.startup import (
            check,
            config_error_text,
            log_warnings,
            report_listen_errors_in_one_line,
        )

        if self["check"]:
            sys.exit(check(self["config"], self["logfile"]))
        try:
            config = check_config(self["config"], self["logfile"])
        except ConfigError as e:
            # Not a UsageError: twistd would print its whole usage text first.
            print(config_error_text(e), file=sys.stderr)
            sys.exit(2)
        self["loaded"] = config
        report_listen_errors_in_one_line()
        # Logged now, they wait in twistd's buffer and come before the start-up line.
        log_warnings(config)
        logfile = self["logfile"] or config.logfile
        log_format = self["log-format"] or config.log_format
        if (logfile or log_format != "text") and self.parent is not None:
            # Have twistd log through our observer: to the file, in that format.
            from goophry_tx import logs

            logs.plugin_logfile = logfile
            logs.plugin_log_format = log_format
            self.parent["logger"] = "goophry_tx.logs.plugin_observer"


@implementer(IServiceMaker, IPlugin)
class GoophryServiceMaker:
    tapname = "goophry"
    description = "Run scripts for tasks pushed onto Redis lists (Goophry on Twisted)."
    options = Options

    def makeService(self, options: Options) -> Any:
        from twisted.internet import reactor

        from goophry_tx.service import build_service
        from goophry_tx.startup import when_running

        when_running(reactor)
        return build_service(options["loaded"], reactor, verbose=bool(options["verbose"]))


serviceMaker = GoophryServiceMaker()
