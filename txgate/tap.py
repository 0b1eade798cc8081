"""twistd glue: `twistd txgate --config gw.ini`."""
from __future__ import annotations

import sys

from twisted.python import usage


class Options(usage.Options):
    optParameters = [["config", "c", None, "path to gw.ini (default: the embedded defaults)"]]

    def postOptions(self) -> None:
        pass


def makeService(options):
    """Validate the configuration (one line on stderr and exit 1 on a mistake) and build the service."""
    from txgate import config as _config
    from txgate.service import makeService as _make

    try:
        cfg = _config.load(options["config"]) if options["config"] else _config.default_config()
        return _make(cfg)
    except _config.ConfigError as e:
        sys.stderr.write(f"txgate: configuration error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
