"""
Run Goophry with C{twistd -n -y goophry.tac}; the configuration file is
named by C{GOOPHRY_CONFIG} (default C{goophry.config.json}), and
C{GOOPHRY_VERBOSE=1} logs every task.  The log goes to the config's
C{Logfile} (or stdout) in its C{LogFormat}.
"""

import os
import sys

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver

from goophry_tx.config import ConfigError, check_config
from goophry_tx.logs import make_observer
from goophry_tx.service import build_service
from goophry_tx.startup import (
    config_error_text,
    log_warnings,
    report_listen_errors_in_one_line,
    when_running,
)

try:
    config = check_config(os.environ.get("GOOPHRY_CONFIG", "goophry.config.json"))
except ConfigError as e:
    print(config_error_text(e), file=sys.stderr)
    sys.exit(2)
report_listen_errors_in_one_line()

application = service.Application("goophry")
if config.logfile or config.log_format != "text":
    observer = make_observer(config.logfile, config.log_format, reactor.callFromThread)
    application.setComponent(ILogObserver, observer)
log_warnings(config)
when_running(reactor)
build_service(
    config, reactor, verbose=os.environ.get("GOOPHRY_VERBOSE", "") not in ("", "0")
).setServiceParent(application)
