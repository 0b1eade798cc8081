# -*- test-case-name: tests.test_config,tests.test_store_config -*-
"""The plan's checks against the machine: access log, [admin] files, port probes, file stamps."""
from __future__ import annotations

import errno
import os
import socket

from txgate.config import Config, ConfigError, ListenerConfig
from txgate.config.hostnames import host_port
from txgate.plan.model import Plan


def check_access_log(config: Config) -> None:
    """An access_log file must be creatable (its directory exists and is writable) or writable."""
    target = config.gateway.access_log
    if target in ("-", "off"):
        return
    if os.path.isdir(target):
        raise ConfigError(config.path, "gateway", "access_log", f"{target}: is a directory, not a file")
    if os.path.exists(target):
        if not os.access(target, os.W_OK):
            raise ConfigError(config.path, "gateway", "access_log", f"{target}: permission denied")
        return
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise ConfigError(config.path, "gateway", "access_log", f"{target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(config.path, "gateway", "access_log", f"{target}: cannot create a file in {parent} (permission denied)")


def check_h2_engine(config: Config, plan: Plan) -> None:
    """`[gateway] h2_engine` resolves to an engine that is built here (native needs txgate._nghttp2)."""
    from txgate.http.h2engine import select_engine

    try:
        plan.h2_engine = select_engine(config.gateway.h2_engine)
    except RuntimeError as e:
        raise ConfigError(config.path, "gateway", "h2_engine", str(e)) from None


def check_admin(config: Config, plan: Plan) -> None:
    """`[admin]` files: the token file must hold a token, client_ca must be a PEM CA bundle."""
    adm = config.admin
    if not adm.enabled:
        return
    from txgate.admin.config import AdminConfigError, read_token
    from txgate.tls.certs import CertificateError, load_ca_bundle

    if adm.token_file:
        try:
            read_token(adm.token_file)
        except AdminConfigError as e:
            raise ConfigError(config.path, "admin", e.key, str(e)) from None
        if os.stat(adm.token_file).st_mode & 0o077:
            plan.warn("admin", "token_file", f"{adm.token_file} is readable by group or others; chmod 600 it")
    if adm.client_ca:
        try:
            for ca in load_ca_bundle(adm.client_ca):
                plan.held.append(("admin client_ca", "ca", ca))
        except CertificateError as e:
            raise ConfigError(config.path, "admin", "client_ca", str(e)) from None


def check_ports(config: Config, plan: Plan, gateway_binds=frozenset()) -> None:
    """Every listener's bind, and an explicit admin bind, can be bound (all at once: collisions count).

    ``gateway_binds``: (host, port) held by the running gateway of this config (``txgate check``
    before a reload): busy because of it, they count as free.
    """
    held: list[socket.socket] = []
    try:
        for ln in config.listeners:
            held.append(check_port(config, ln, gateway_binds))
        if config.admin.enabled and config.admin.bind_explicit:
            check_admin_port(config, plan, held, gateway_binds)
    finally:
        for s in held:
            if s is not None:
                s.close()


def check_default_admin_port(config: Config, plan: Plan) -> None:
    """The default admin address may be taken (e.g. a second gateway on this host): warn, don't fail."""
    held: list[socket.socket] = []
    try:
        check_admin_port(config, plan, held)
    finally:
        for sock in held:
            sock.close()


def check_admin_port(config: Config, plan: Plan, held: list, gateway_binds=frozenset()) -> None:
    """An explicit admin bind that cannot be bound is an error; the default one only turns the admin API off."""
    adm = config.admin
    probe = ListenerConfig(name="admin", host=adm.host, port=adm.port)
    try:
        held.append(check_port(config, probe, gateway_binds))
    except ConfigError as e:
        if adm.bind_explicit:
            raise ConfigError(config.path, "admin", "bind", e.message) from None
        plan.admin_available = False
        plan.warn("admin", "bind", f"{e.message}: the admin API is off "
                                   "(set [admin] bind to another address, or bind = off)")


def check_port(config: Config, ln: ListenerConfig, gateway_binds=frozenset()) -> socket.socket | None:
    """Fail early, with the section and key, if the address cannot be bound.

    The probe socket listens and is returned so the caller can hold it while checking the other
    listeners: two listeners that would collide (0.0.0.0:P and 127.0.0.1:P) are caught too.
    None when the address is busy because the running gateway (``gateway_binds``) holds it.
    """
    try:
        # The family Twisted's listenTCP uses: IPv6 for a v6 literal, else IPv4.
        family = socket.AF_INET6 if ":" in ln.host else socket.AF_INET
        infos = socket.getaddrinfo(ln.host or None, ln.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(config.path, f"listener:{ln.name}", "bind", f"{ln.host}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(sockaddr)
        if ln.port:
            s.listen(1)
    except OSError as e:
        s.close()
        where = host_port(ln.host, ln.port)
        if e.errno == errno.EADDRINUSE and (ln.host, ln.port) in gateway_binds:
            return None
        if e.errno == errno.EADDRINUSE:
            msg = f"{where}: address already in use"
        elif e.errno == errno.EACCES:
            msg = f"{where}: permission denied (ports below 1024 need privileges)"
        elif e.errno == errno.EADDRNOTAVAIL:
            msg = f"{where}: address not available on this machine"
        else:
            msg = f"{where}: {e.strerror or e}"
        raise ConfigError(config.path, f"listener:{ln.name}", "bind", msg) from None
    return s


def file_stamp(path: str | None):
    """(path, mtime_ns, size) of a file, (path, None) when it cannot be read, None without a path."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_mtime_ns, st.st_size)
