"""
Run Goophry with C{twistd -n -y goophry.tac}; the configuration file is
named by C{GOOPHRY_CONFIG} (default C{goophry.config.json}), and
C{GOOPHRY_VERBOSE=1} logs every task.
"""

import os

from twisted.application import service
from twisted.internet import reactor

from goophry_tx.config import load_config
from goophry_tx.service import build_service

config = load_config(os.environ.get("GOOPHRY_CONFIG", "goophry.config.json"))
application = service.Application("goophry")
build_service(
    config, reactor, verbose=os.environ.get("GOOPHRY_VERBOSE", "") not in ("", "0")
).setServiceParent(application)
