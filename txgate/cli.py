"""The `txgate` command: check, pin, version (ca, cert, csr come with the lifecycle issue)."""
from __future__ import annotations

import argparse
import sys


def cmd_check(args) -> int:
    """Validate a gw.ini exactly as startup does, without binding or writing anything."""
    from txgate import config as _config
    from txgate.service import prepare

    try:
        cfg = _config.load(args.config) if args.config else _config.default_config()
        prepared = prepare(cfg, create_state=False)
    except _config.ConfigError as e:
        print(f"txgate: configuration error: {e}", file=sys.stderr)
        return 1
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
    return 0


def _subject(cert) -> str:
    from txgate.tls.certs import subject_label

    return subject_label(cert)


def _presented_chain(hostport: str, servername: str | None, timeout: float = 10.0) -> list:
    """The certificates a TLS server presents (no verification: this is for discovering pins)."""
    import socket

    from OpenSSL import SSL

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
        if not _looks_like_ip(name):
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


def _looks_like_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


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
    from txgate.cli_certs import register_cert_commands; register_cert_commands(sub)  # noqa: E702
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `txgate` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
