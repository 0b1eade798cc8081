"""txgate.handle_signals: handlers are in place as soon as it returns (no sockets)."""
from __future__ import annotations

import signal

import txgate
from txgate.config import load


def test_handlers_are_installed_before_the_service_starts(tmp_path):
    """An embedding program's gateway announces its listeners while its parent starts; a SIGHUP or
    SIGUSR1 sent on seeing that line must reach txgate, not kill the process (their default)."""
    ini = tmp_path / "gw.ini"
    ini.write_text(f"[gateway]\nstate_dir = {tmp_path}\n[admin]\nbind = 127.0.0.1:0\n[listener:main]\n"
                   "bind = 127.0.0.1:0\n[api:echo]\npath = /echo\nupstream = builtin:echo\n")
    config = load(str(ini))
    before = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        top = txgate.makeService(config)
        txgate.handle_signals(top, clean_exit=False)
        for s in (signal.SIGHUP, signal.SIGUSR1):
            assert callable(signal.getsignal(s)), signal.Signals(s).name
            assert signal.getsignal(s) is not before[s]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
