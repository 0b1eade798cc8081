# -*- test-case-name: tests.test_embed_e2e -*-
"""txgate: a Twisted TLS API gateway with a small C core."""
from __future__ import annotations

__version__ = "0.1.0"


def makeService(config, reactor=None, *, loader=None):
    """Build the gateway service (a MultiService) from a Config or a gw.ini path.

    ``loader`` (``lambda: txgate.config.load(path)``) re-reads the file on reload; given a path,
    it defaults to re-reading that path.
    """
    from txgate import config as _config
    from txgate.runtime.assemble import makeService as _make

    if isinstance(config, str):
        path = config
        config = _config.load(path)
        loader = loader or (lambda: _config.load(path))
    from txgate.runtime.workers import check_single_process

    check_single_process(config)  # worker processes are for `twistd txgate`, not an embedding application
    return _make(config, reactor, loader=loader)


def handle_signals(top, *, clean_exit: bool = True) -> None:
    """SIGHUP reloads, SIGUSR1 reopens log files, SIGTERM/SIGINT stop cleanly (``clean_exit``), as under twistd.

    ``top`` is what ``makeService`` returned; call this before starting it.
    """
    from txgate.runtime.signals import handle_signals as _handle

    _handle(top, clean_exit=clean_exit)


def reopen_logs(top) -> None:
    """Reopen the access log and txgate's log file now (what SIGUSR1 does)."""
    from txgate.runtime.signals import reopen_logs as _reopen

    _reopen(top)


__all__ = ["handle_signals", "makeService", "reopen_logs", "__version__"]
