"""The C{goophry} twistd plugin: C{twistd -n goophry -c cfg.json [-v] [-l logfile]}."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optFlags = [["verbose", "v", "Log every task."]]
    optParameters = [
        ["config", "c", "goophry.config.json", "The configuration file."],
        ["logfile", "l", None, "Log to this file (reopened on SIGUSR1)."],
    ]

    def opt_V(self) -> None:  # noqa: N802 (twisted.python.usage's name)
        """Print the version and exit."""
        from goophry_tx.cli import version_text

        print(version_text())
        sys.exit(0)

    def postOptions(self) -> None:  # noqa: N802
        from goophry_tx.config import ConfigError, load_config

        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        logfile = self["logfile"] or self["loaded"].logfile
        if logfile and self.parent is not None:
            # Have twistd log through our observer, to the file instead.
            from goophry_tx import logs

            logs.plugin_logfile = logfile
            self.parent["logger"] = "goophry_tx.logs.plugin_observer"


@implementer(IServiceMaker, IPlugin)
class GoophryServiceMaker:
    tapname = "goophry"
    description = "Run scripts for tasks pushed onto Redis lists (Goophry on Twisted)."
    options = Options

    def makeService(self, options: Options) -> Any:  # noqa: N802
        from twisted.internet import reactor

        from goophry_tx.service import build_service

        return build_service(options["loaded"], reactor, verbose=bool(options["verbose"]))


serviceMaker = GoophryServiceMaker()
