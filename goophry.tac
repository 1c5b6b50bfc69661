"""
Run Goophry with C{twistd -n -y goophry.tac}; the configuration file is
named by C{GOOPHRY_CONFIG} (default C{goophry.config.json}), and
C{GOOPHRY_VERBOSE=1} logs every task.
"""

import os

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver

from goophry_tx.config import ConfigError, load_config
from goophry_tx.logs import ReopeningFileObserver, install_reopen_signal
from goophry_tx.service import build_service

try:
    config = load_config(os.environ.get("GOOPHRY_CONFIG", "goophry.config.json"))
except ConfigError as e:
    raise SystemExit(f"goophry: {e}") from None

application = service.Application("goophry")
if config.logfile:
    observer = ReopeningFileObserver(config.logfile)
    install_reopen_signal(observer, reactor.callFromThread)
    application.setComponent(ILogObserver, observer)
build_service(
    config, reactor, verbose=os.environ.get("GOOPHRY_VERBOSE", "") not in ("", "0")
).setServiceParent(application)
