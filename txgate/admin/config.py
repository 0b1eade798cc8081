# -*- test-case-name: tests.test_admin -*-
"""The admin API's settings: ``AdminConfig`` (one class, in ``txgate.config.model``) and the token-file reader.

``AdminConfig(bind_host="127.0.0.1", bind_port=9901, client_ca=None, token_file=None,
state_dir="./txgate-state", allowed_hosts=())`` validates itself on construction and raises
``AdminConfigError`` (a ValueError with ``.key`` naming the ``[admin]`` key); gw.ini parsing builds it
from ``[admin]`` and turns that error into its ConfigError. ``read_token(path)`` is the one reader of the
token file (the config check and the admin listener both use it), raising
``AdminConfigError('token_file', ...)``.
"""
# -*- test-case-name: tests.test_admin -*-
from __future__ import annotations

from txgate.config.hostnames import is_loopback
from txgate.config.model import ADMIN_DEFAULT_BIND, AdminConfig, AdminConfigError

DEFAULT_HOST, DEFAULT_PORT = ADMIN_DEFAULT_BIND

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "AdminConfig", "AdminConfigError", "is_loopback", "read_token"]


def read_token(path: str) -> bytes:
    """The bearer token in ``path`` (stripped); AdminConfigError('token_file') if unreadable, empty or not ASCII."""
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise AdminConfigError("token_file", f"{path}: {e.strerror or e}") from None
    if not token:
        raise AdminConfigError("token_file", f"{path}: the file is empty")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise AdminConfigError("token_file", f"{path}: the token must be one line of printable ASCII")
    return token
