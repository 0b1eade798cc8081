# -*- test-case-name: tests.test_cli -*-
"""The `txgate` command: check, pin, version, store (list, rollback); ca, cert, csr, selfsigned in cli_certs."""
from __future__ import annotations

import argparse
import sys


def cmd_check(args) -> int:
    """Validate a gw.ini exactly as startup does, without binding or writing anything."""
    from txgate import config as _config
    from txgate.plan import prepare
    from txgate.plan.files import check_files
    from txgate.plan.store import open_gateway_store

    store = None
    try:
        cfg = _config.load(args.config) if args.config else _config.default_config()
        check_files(cfg)
        if cfg.store_refs():
            store = open_gateway_store(cfg, create=False)
        prepared = prepare(cfg, create_state=False, store=store)
    except _config.ConfigError as e:
        print(f"txgate: configuration error: {e}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    for w in prepared.warnings:
        print(f"txgate: warning: {w}", file=sys.stderr)
    print(f"{cfg.path}: OK ({len(cfg.listeners)} listeners, {len(cfg.apis)} APIs)")
    return 0


def cmd_version(args) -> int:
    """Print txgate's version and the versions of the libraries it runs on."""
    import cryptography
    import h2
    import OpenSSL
    import twisted

    import txgate

    print(f"txgate {txgate.__version__}")
    print(f"twisted {twisted.__version__}, pyOpenSSL {OpenSSL.__version__}, cryptography {cryptography.__version__}, h2 {h2.__version__}")
    print(f"OpenSSL (pyOpenSSL): {OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()}")
    from txgate import pins as _pins

    print(f"SPKI pin backend: {_pins.describe_backend()}")
    from txgate.http.h2engine import describe_engine

    print(f"HTTP/2 engine: {describe_engine()}")
    return 0


def _subject(cert) -> str:
    from txgate.tls.certs import subject_label

    return subject_label(cert)


def _presented_chain(hostport: str, servername: str | None, timeout: float = 10.0) -> list:
    """The certificates a TLS server presents (no verification: this is for discovering pins)."""
    import socket

    from OpenSSL import SSL

    from txgate.config.hostnames import is_ip

    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--connect expects HOST:PORT, got '{hostport}'")
    host = host.strip("[]")
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        conn = SSL.Connection(ctx, sock)
        name = servername or host
        if not is_ip(name):
            conn.set_tlsext_host_name(name.encode("idna"))
        conn.set_connect_state()
        conn.setblocking(True)
        conn.do_handshake()
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        try:
            conn.shutdown()
        except SSL.Error:
            pass
        return chain
    finally:
        sock.close()


def cmd_pin(args) -> int:
    """Print the sha256/ SPKI pin of certificates, public keys and CSRs, or of a server's chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from txgate import pins as _pins

    if args.connect:
        try:
            chain = _presented_chain(args.connect, args.servername)
        except Exception as e:  # network and TLS errors: one line, exit 1
            print(f"txgate pin: {args.connect}: {e.__class__.__name__}: {e}", file=sys.stderr)
            return 1
        if not chain:
            print(f"txgate pin: {args.connect}: the server presented no certificate", file=sys.stderr)
            return 1
        for depth, cert in enumerate(chain):
            pin = _pins.format_pin(_pins.spki_sha256(cert.public_bytes(serialization.Encoding.DER)))
            print(f"{pin}  depth={depth} subject={_subject(cert)} issuer={cert.issuer.rfc4514_string()}")
        return 0
    if not args.files:
        print("txgate pin: give certificate/public key/CSR files, or --connect HOST:PORT", file=sys.stderr)
        return 2
    status = 0
    for path in args.files:
        try:
            digests = _pins.pins_from_file(path)
        except ValueError as e:
            print(f"txgate pin: {e}", file=sys.stderr)
            status = 1
            continue
        try:
            with open(path, "rb") as f:
                certs = x509.load_pem_x509_certificates(f.read())
        except ValueError:
            certs = []
        labels = [f"subject={_subject(c)}" for c in certs] if len(certs) == len(digests) else []
        for i, digest in enumerate(digests):
            extra = f" {labels[i]}" if labels else ""
            print(f"{_pins.format_pin(digest)}  {path}{extra}")
    return status


def _open_store(args):
    """The store of the gw.ini in --config (or the embedded defaults), or (None, exit status) after one line."""
    from txgate import config as _config
    from txgate.plan.files import check_files
    from txgate.plan.store import open_gateway_store

    try:
        cfg = _config.load(args.config) if args.config else _config.default_config()
        check_files(cfg)
        store = open_gateway_store(cfg, create=False)
    except _config.ConfigError as e:
        print(f"txgate store: configuration error: {e}", file=sys.stderr)
        return None, None
    if store is None:
        print(f"txgate store: no store yet under {cfg.gateway.state_dir} (it is created on the gateway's first start)",
              file=sys.stderr)
    return cfg, store


def cmd_store_list(args) -> int:
    """List the store's entries: current versions of names, then unnamed entries."""
    from txgate.store import StoreError
    from txgate.tls.certs import format_time

    cfg, store = _open_store(args)
    if store is None:
        return 1
    try:
        infos = store.list()
        for info in infos:
            label = f"{info.name}@{info.version}" if info.name else "-"
            versions = f"  versions={','.join(map(str, info.versions))}" if info.name else ""
            print(f"{label}  id={info.id}  not_after={format_time(info.not_after)}  key={'yes' if info.has_key else 'no'}"
                  f"{versions}  subject={info.subject}")
        for name in store.pending_names():
            print(f"{name}  (pending key: waiting for its signed certificate)")
    except StoreError as e:
        print(f"txgate store: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def cmd_store_rollback(args) -> int:
    """Make the previous version of NAME current again (history is kept)."""
    from txgate.store import StoreError

    cfg, store = _open_store(args)
    if store is None:
        return 1
    try:
        entry = store.rollback(args.name)
    except StoreError as e:
        print(f"txgate store rollback: {e.code}: {e.reason}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{entry.name}: version {entry.version} is current (id {entry.id})")
    if cfg.gateway.store == "dir":
        # Directory stores notify only within one process: tell the running gateway.
        print("reload the running gateway to serve it: kill -HUP <pid>, or POST /reload on the admin API")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txgate", description="txgate TLS API gateway tools")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a configuration file")
    c.add_argument("--config", "-c", help="path to gw.ini (default: the embedded defaults)")
    c.set_defaults(func=cmd_check)
    p_pin = sub.add_parser("pin", help="print sha256/ SPKI pins of files or of a server's certificates")
    p_pin.add_argument("files", nargs="*", help="PEM certificates, public keys or CSRs")
    p_pin.add_argument("--connect", metavar="HOST:PORT", help="connect and print the pin of every presented certificate")
    p_pin.add_argument("--servername", help="SNI name to send with --connect (default: the host)")
    p_pin.set_defaults(func=cmd_pin)
    v = sub.add_parser("version", help="print versions")
    v.set_defaults(func=cmd_version)
    st = sub.add_parser("store", help="the certificate store of a gw.ini: list, rollback")
    st_sub = st.add_subparsers(dest="store_command", required=True)
    st_list = st_sub.add_parser("list", help="list the entries (current versions, then unnamed entries)")
    st_list.add_argument("--config", "-c", help="path to gw.ini (default: the embedded defaults)")
    st_list.set_defaults(func=cmd_store_list)
    st_rb = st_sub.add_parser("rollback", help="make the previous version of NAME current again")
    st_rb.add_argument("name", metavar="NAME")
    st_rb.add_argument("--config", "-c", help="path to gw.ini (default: the embedded defaults)")
    st_rb.set_defaults(func=cmd_store_rollback)
    from txgate.cli_certs import register_cert_commands; register_cert_commands(sub)  # noqa: E702
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `txgate` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
