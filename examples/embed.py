"""Embed txgate in your own Twisted program: `python examples/embed.py [gw.ini]`."""
import sys

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

import txgate
from txgate.config import ConfigError, load

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
try:
    gateway = txgate.makeService(load(sys.argv[1] if len(sys.argv) > 1 else "examples/quickstart.ini"))
except ConfigError as e:
    sys.exit(f"configuration error: {e}")
# Add it to your own MultiService / Application, or run it directly as here:
gateway.startService()
reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
reactor.run()
