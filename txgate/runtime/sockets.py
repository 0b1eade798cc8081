# -*- test-case-name: tests.test_workers_unit -*-
"""The listening sockets of a supervised gateway: made once by the supervisor, adopted by workers.

Two layouts (``mode``):

- ``reuseport`` (the default): one ``SO_REUSEPORT`` socket per worker slot on the same address;
  the kernel picks a socket per new connection (hash of the 4-tuple, or the steering program of
  ``txgate.runtime.steering``), and each worker accepts on its own socket only.
- ``shared``: one socket adopted by every worker (they race for each connection).

The supervisor keeps every socket open for the life of the listener, so a worker that dies loses
nothing queued on its socket: the replacement adopts the same file descriptor and accepts what
waited there.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

BACKLOG = 1024
MODES = ("reuseport", "shared")


@dataclass
class ListenGroup:
    """The sockets of one listener: ``sockets[slot]`` is what worker ``slot`` adopts."""

    name: str
    host: str
    port: int
    family: int
    sockets: list[socket.socket] = field(default_factory=list)
    requested: int = 0  # the port as configured (0: the kernel picked ``port``)

    def fd_for(self, slot: int) -> int:
        """The file descriptor worker ``slot`` adopts (the one socket in ``shared`` mode)."""
        return self.sockets[slot % len(self.sockets)].fileno()

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """(family, sockaddr) for a listener bind, as Twisted's listenTCP picks it (IPv6 for a v6 literal)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _listening_socket(family: int, sockaddr: tuple, reuseport: bool) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(sockaddr)
        s.listen(BACKLOG)
        # Workers adopt it with reactor.adoptStreamPort, which wants a non-blocking socket.
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def open_group(name: str, host: str, port: int, slots: int, mode: str = "reuseport") -> ListenGroup:
    """Bind and listen: ``slots`` SO_REUSEPORT sockets on one port (port 0: the first one picks it), or one
    shared socket. Raises OSError (with the address in ``filename``) when the address cannot be bound."""
    if mode not in MODES:
        raise ValueError(f"unknown socket mode {mode!r}")
    family, sockaddr = resolve(host, port)
    group = ListenGroup(name, host, port, family, requested=port)
    count = slots if mode == "reuseport" else 1
    try:
        for _ in range(count):
            s = _listening_socket(family, sockaddr, reuseport=mode == "reuseport")
            group.sockets.append(s)
            if not port:
                # The others join the port the kernel picked for the first.
                sockaddr = (sockaddr[0], s.getsockname()[1], *sockaddr[2:])
    except OSError:
        group.close()
        raise
    group.port = group.sockets[0].getsockname()[1]
    return group


def adopt(reactor, fd: int, family: int, factory):
    """Listen with ``factory`` on an inherited listening socket; the returned port never shuts the
    socket down for the other processes holding it (Twisted's adopted ports only close their copy)."""
    return reactor.adoptStreamPort(fd, family, factory)


def family_of(fd: int) -> int:
    """The address family of an inherited socket."""
    s = socket.socket(fileno=fd)
    try:
        return s.family
    finally:
        s.detach()
