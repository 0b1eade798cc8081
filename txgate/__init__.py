# -*- test-case-name: tests.test_embed_e2e -*-
"""txgate: a Twisted TLS API gateway with a small C core."""
from __future__ import annotations

__version__ = "0.1.0"


def makeService(config, reactor=None):
    """Build the gateway service (a MultiService) from a Config or a gw.ini path."""
    from txgate import config as _config
    from txgate.runtime.assemble import makeService as _make

    if isinstance(config, str):
        config = _config.load(config)
    from txgate.runtime.workers import check_single_process

    check_single_process(config)  # worker processes are for `twistd txgate`, not an embedding application
    return _make(config, reactor)


__all__ = ["makeService", "__version__"]
