"""Embed txgate in your own Twisted program: `python examples/embed.py [gw.ini]`.

Signals, as under twistd: SIGHUP reloads gw.ini and the store, SIGUSR1 reopens the log files,
SIGTERM/SIGINT stop gracefully. `txgate.handle_signals` installs them; a program that owns its
signals calls `gateway.facade.reload()` (and `txgate.reopen_logs(gateway)`) from its own handlers.
"""
import sys

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

import txgate
from txgate.config import ConfigError, load

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
path = sys.argv[1] if len(sys.argv) > 1 else "examples/quickstart.ini"
try:
    # The loader re-reads the file on reload (without it a reload reuses the startup Config).
    gateway = txgate.makeService(load(path), loader=lambda: load(path))
except ConfigError as e:
    sys.exit(f"configuration error: {e}")
txgate.handle_signals(gateway, clean_exit=False)  # the reactor already stops on SIGTERM/SIGINT
# Add it to your own MultiService / Application, or run it directly as here:
gateway.startService()
reactor.addSystemEventTrigger("before", "shutdown", gateway.stopService)
reactor.run()
