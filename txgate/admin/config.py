"""``AdminConfig``: what the admin API listener needs, built by ``txgate.config`` from ``[admin]``.

Contract (for ``txgate.config`` / ``txgate.plan`` / ``txgate.runtime``)::

    AdminConfig(bind_host="127.0.0.1", bind_port=9901, client_ca=None, token_file=None,
                state_dir="./txgate-state", allowed_hosts=())

- ``client_ca``: path of a PEM CA bundle; when set the admin listener speaks TLS (a server
  certificate from the local CA in ``state_dir``) and requires a client certificate issued under it.
- ``token_file``: path of a file holding the bearer token (surrounding whitespace ignored).
- Both set: a request needs both. Neither set: allowed on a loopback address only.
- ``allowed_hosts``: more host names (no ports, no wildcards) the API answers to in ``Host`` and
  ``Origin``, besides its bind address and the loopback names; stored lower case, without duplicates.

The constructor raises ``AdminConfigError`` (a ValueError with ``.key`` naming the ``[admin]``
key) for a non-loopback ``bind`` with neither protection, an out-of-range port, or an
``allowed_hosts`` entry that is not a host name (``txgate.config.host_name_problem``, the same check
and message as gw.ini's); config.py can turn it into its ConfigError. ``read_token(path)`` is the
one reader of the token file (the config check and the admin listener both use it), raising
``AdminConfigError('token_file', ...)``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from txgate.config import host_name_problem

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9901


class AdminConfigError(ValueError):
    """A bad ``[admin]`` setting; ``key`` is the gw.ini key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost`` (an empty host or a wildcard is not loopback)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AdminConfig:
    """The admin API listener: address, protection, and where the local CA lives (for its TLS certificate)."""

    bind_host: str = DEFAULT_HOST
    bind_port: int = DEFAULT_PORT
    client_ca: str | None = None
    token_file: str | None = None
    state_dir: str = "./txgate-state"
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        hosts: list[str] = []
        for name in self.allowed_hosts:
            problem = host_name_problem(name)
            if problem is not None:
                raise AdminConfigError("allowed_hosts", problem)
            if name.lower() not in hosts:
                hosts.append(name.lower())
        object.__setattr__(self, "allowed_hosts", tuple(hosts))
        if not 0 <= self.bind_port <= 65535:
            raise AdminConfigError("bind", f"port {self.bind_port} is out of range (0-65535)")
        if not self.client_ca and not self.token_file and not is_loopback(self.bind_host):
            raise AdminConfigError(
                "bind",
                f"the admin API on non-loopback address {self.bind_host!r} needs client_ca (mTLS) or "
                "token_file (bearer token)",
            )

    @property
    def tls(self) -> bool:
        """Whether the admin listener speaks TLS (it does when client certificates are required)."""
        return bool(self.client_ca)

    @property
    def auth(self) -> str:
        """A short description of the protection, for the startup line: mtls+token, mtls, token or none."""
        parts = [p for p, on in (("mtls", self.client_ca), ("token", self.token_file)) if on]
        return "+".join(parts) or "none"


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
