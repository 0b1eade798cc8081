# -*- test-case-name: tests.test_cli,tests.test_config_e2e -*-
"""The `txgate` command: check, pin, version; reload in cli_admin, store in cli_store, ca/cert/csr/selfsigned in cli_certs."""
from __future__ import annotations

import argparse
import sys

from txgate.cli_help import add_command, add_config_option


def cmd_check(args) -> int:
    """Validate a gw.ini exactly as startup does, without binding or writing anything; print every mistake."""
    from txgate import config as _config
    from txgate.plan import prepare
    from txgate.plan.files import check_files
    from txgate.plan.kubernetes import kubernetes_access
    from txgate.plan.running import read_running
    from txgate.plan.store import open_gateway_store

    store = None
    try:
        cfg = _config.load(args.config) if args.config else _config.default_config()
        check_files(cfg)
        kubernetes_access(cfg)
        if cfg.store_refs():
            store = open_gateway_store(cfg, create=False)
        # Ports held by the gateway already running on this config are free for it (check, then reload).
        _pid, held = read_running(cfg.gateway.state_dir)
        prepared = prepare(cfg, create_state=False, store=store, check_ports=args.probe_ports, gateway_binds=held)
    except _config.ConfigError as e:
        for line in e.lines():
            print(f"txgate: configuration error: {line}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="txgate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="txgate TLS API gateway tools: check a gw.ini, reload a running gateway, manage its "
                    "certificate store, make certificates and pins.\nThe gateway itself runs under twistd: "
                    "twistd -n txgate --config gw.ini (see twistd txgate --help).",
        epilog="Run 'txgate COMMAND --help' for a command's description, exit statuses and an example.")
    p.add_argument("--version", "-V", action=_VersionAction, help="print versions and exit (as 'txgate version')")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = add_command(
        sub, "check", func=cmd_check, summary="validate a configuration file (every mistake, one line each)",
        description="""
            Validate a gw.ini exactly as startup does (syntax, files, certificates and keys, TLS settings,
            the store) without writing anything, and print every mistake found, one line each:
            FILE: [section] key: why. Safe to run against the config of a running gateway before
            `txgate reload`: ports held by that gateway count as free (--no-probe-ports skips the
            port checks, e.g. on a build machine).""",
        exits={0: "the configuration is valid (warnings, if any, on stderr)", 1: "one or more mistakes (on stderr)"},
        examples=("txgate check -c /etc/txgate/gw.ini && txgate reload -c /etc/txgate/gw.ini",),
    )
    add_config_option(c)
    c.add_argument("--no-probe-ports", dest="probe_ports", action="store_false",
                   help="do not try to bind the listeners' and admin ports")
    p_pin = add_command(
        sub, "pin", func=cmd_pin, summary="print sha256/ SPKI pins of files or of a server's certificates",
        description="""
            Print the sha256/BASE64 SPKI pin (for pinned_public_keys) of each certificate, public key
            or CSR in the PEM files given, or of every certificate a TLS server presents with --connect
            (not verified: check what you pin).""",
        exits={0: "pins printed", 1: "a file could not be read, or the connection failed"},
        examples=("txgate pin upstream.pem", "txgate pin --connect api.internal:443"),
    )
    p_pin.add_argument("files", nargs="*", metavar="FILE", help="PEM certificates, public keys or CSRs")
    p_pin.add_argument("--connect", metavar="HOST:PORT", help="connect and print the pin of every presented certificate")
    p_pin.add_argument("--servername", help="SNI name to send with --connect (default: the host)")
    add_command(
        sub, "version", func=cmd_version, summary="print versions",
        description="Print txgate's version, the versions of the libraries it runs on, and its SPKI pin backend.",
        exits={0: "always"}, examples=("txgate version",),
    )
    from txgate.cli_acme import register_acme_commands
    from txgate.cli_admin import register_admin_commands
    from txgate.cli_certs import register_cert_commands
    from txgate.cli_k8s import register_k8s_commands
    from txgate.cli_store import register_store_commands

    register_admin_commands(sub)
    register_store_commands(sub)
    register_cert_commands(sub)
    register_acme_commands(sub)
    register_k8s_commands(sub)
    return p


class _VersionAction(argparse.Action):
    """``txgate --version`` / ``-V``: what ``txgate version`` prints, then exit 0."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        cmd_version(None)
        parser.exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `txgate` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
