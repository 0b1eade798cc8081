# -*- test-case-name: tests.test_lifecycle -*-
"""``txgate ca|cert|csr|selfsigned``: the certificate lifecycle commands (thin wrappers over txgate.lifecycle).

Every failure is one line ``txgate: ...`` on stderr and exit status 1; private keys are written 0600
from their first byte (``txgate.fileio.write_private_file``).
"""
from __future__ import annotations

import argparse
import functools
import sys
from datetime import datetime, timezone
from typing import Any, Callable

__all__ = ["register_cert_commands"]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _fail(message: str) -> int:
    print(f"txgate: {message}", file=sys.stderr)
    return 1


def _one_line_errors(func: Callable[[Any], int]) -> Callable[[Any], int]:
    """Turn every expected error into one stderr line and exit status 1 (no traceback)."""

    @functools.wraps(func)
    def wrapper(args: Any) -> int:
        from txgate.lifecycle import LifecycleError
        from txgate.tls.certs import CertificateError

        try:
            return func(args)
        except (LifecycleError, CertificateError) as e:
            return _fail(str(e))
        except OSError as e:
            return _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        except Exception as e:  # a bug, but still no traceback for the user
            return _fail(f"unexpected error: {e.__class__.__name__}: {e}")

    return wrapper


def _pem_chain(certs: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write(path: str, data: bytes, mode: int) -> None:
    """Write an output file atomically (keys 0600 from the first byte); errors name ``path``."""
    from txgate.fileio import write_private_file
    from txgate.lifecycle import LifecycleError

    try:
        write_private_file(path, data, mode)
    except OSError as e:
        raise LifecycleError(f"{path}: cannot write: {e.strerror or e}") from None


def _write_pair(prefix: str, ck: Any) -> tuple[str, str]:
    from txgate.lifecycle import private_key_pem

    cert_path, key_path = f"{prefix}.pem", f"{prefix}-key.pem"
    _write(key_path, private_key_pem(ck.key), 0o600)
    _write(cert_path, _pem_chain(ck.chain), 0o644)
    return cert_path, key_path


def _summary(cert: Any) -> str:
    from txgate.lifecycle import spki_pin
    from txgate.tls.certs import cert_names, format_time

    names = ", ".join(cert_names(cert)) or cert.subject.rfc4514_string()
    return f"  {names}; valid until {format_time(cert.not_valid_after_utc)}; pin {spki_pin(cert)}"


@_one_line_errors
def cmd_ca_init(args: Any) -> int:
    """Create a private CA in DIR."""
    from txgate.lifecycle import init_ca

    ca = init_ca(args.dir, name=args.name, key_type=args.key_type, days=args.days, now=_now())
    print(f"created CA '{args.name}': {ca.cert_path}, {ca.key_path} (0600)")
    print(_summary(ca.certificate))
    return 0


@_one_line_errors
def cmd_cert_issue(args: Any) -> int:
    """Issue a leaf signed by the CA in --ca."""
    from txgate.lifecycle import issue_certificate, load_ca

    now = _now()
    ca = load_ca(args.ca, now=now)
    ck = issue_certificate(
        ca, dns=args.dns, ips=args.ip, client=args.client, days=args.days, now=now,
        key_type=args.key_type, common_name=args.cn,
    )
    cert_path, key_path = _write_pair(args.out, ck)
    print(f"wrote {cert_path} (certificate + CA chain) and {key_path} (0600)")
    print(_summary(ck.leaf))
    return 0


@_one_line_errors
def cmd_cert_sign(args: Any) -> int:
    """Sign a CSR with the CA in --ca."""
    from txgate.lifecycle import load_ca, load_csr, sign_csr
    from txgate.tls.certs import read_pem_file

    now = _now()
    ca = load_ca(args.ca, now=now)
    csr = load_csr(read_pem_file(args.request), args.request)
    cert = sign_csr(ca, csr, days=args.days, client=args.client, now=now)
    _write(args.out, _pem_chain([cert, ca.certificate]), 0o644)
    print(f"wrote {args.out} (certificate + CA chain)")
    print(_summary(cert))
    return 0


@_one_line_errors
def cmd_cert_show(args: Any) -> int:
    """Describe the certificates of FILE."""
    from txgate.lifecycle.show import format_certificates, load_any_certificates
    from txgate.tls.certs import read_pem_file

    certs = load_any_certificates(read_pem_file(args.file), args.file)
    sys.stdout.write(format_certificates(certs))
    from txgate.ocsp.show import cached_status_line

    line = cached_status_line(certs, args.state_dir)
    if line:
        sys.stdout.write(line + "\n")
    return 0


@_one_line_errors
def cmd_csr(args: Any) -> int:
    """Write a CSR for a new or an existing key."""
    from txgate.lifecycle import build_csr, generate_key, private_key_pem
    from txgate.tls.certs import parse_private_key, read_pem_file

    if args.key:
        key = parse_private_key(read_pem_file(args.key), args.key)
        new_key = False
    else:
        key = generate_key(args.key_type)
        new_key = True
    from cryptography.hazmat.primitives import serialization

    csr = build_csr(key, dns=args.dns, ips=args.ip, common_name=args.cn)
    csr_path, key_path = f"{args.out}.csr", f"{args.out}-key.pem"
    if new_key:
        _write(key_path, private_key_pem(key), 0o600)
    _write(csr_path, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    print(f"wrote {csr_path}" + (f" and {key_path} (0600)" if new_key else f" for the key {args.key}"))
    return 0


@_one_line_errors
def cmd_selfsigned(args: Any) -> int:
    """Write a self-signed certificate and its key."""
    from txgate.lifecycle import self_signed

    ck = self_signed(
        dns=args.dns, ips=args.ip, days=args.days, now=_now(), key_type=args.key_type, common_name=args.cn,
        client=args.client,
    )
    cert_path, key_path = _write_pair(args.out, ck)
    print(f"wrote {cert_path} (self-signed) and {key_path} (0600)")
    print(_summary(ck.leaf))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _names(p: argparse.ArgumentParser, *, client: bool = True) -> None:
    p.add_argument("--dns", action="extend", nargs="+", default=[], metavar="NAME",
                   help="DNS name(s) for the subjectAltName (repeatable; '*.example.com' allowed)")
    p.add_argument("--ip", action="extend", nargs="+", default=[], metavar="ADDR",
                   help="IP address(es) for the subjectAltName (repeatable)")
    p.add_argument("--cn", metavar="NAME", help="subject common name (default: the first name)")
    p.add_argument("--key-type", choices=("ec", "rsa"), default="ec", help="new key: ec (P-256, default) or rsa (3072)")
    if client:
        p.add_argument("--client", action="store_true", help="a client certificate (extendedKeyUsage clientAuth)")


_CERT_EXITS = {0: "written (the paths and a summary on stdout)",
               1: "one line on stderr: unreadable input, invalid CA or CSR, or an output that cannot be written"}


def register_cert_commands(sub: Any) -> None:
    """Add ``ca``, ``cert``, ``csr`` and ``selfsigned`` to the ``txgate`` subparsers ``sub``."""
    from txgate.cli_help import add_command, add_group
    from txgate.lifecycle.ca import DEFAULT_CA_DAYS, DEFAULT_CA_NAME
    from txgate.lifecycle.issue import DEFAULT_LEAF_DAYS

    ca_sub = add_group(sub, "ca", dest="ca_command", summary="a private certificate authority",
                       description="A private CA for your listeners, upstreams and mTLS clients: txgate ca init.")
    init = add_command(
        ca_sub, "init", func=cmd_ca_init, summary="create a private CA: DIR/ca.pem and DIR/ca-key.pem (0600)",
        description="Create a private certificate authority in DIR: its certificate DIR/ca.pem (give it to "
                    "clients, or name it in client_ca) and its key DIR/ca-key.pem (0600). Refuses to overwrite.",
        exits=_CERT_EXITS, examples=("txgate ca init ./ca --name 'Example internal CA'",),
    )
    init.add_argument("dir", metavar="DIR", help="directory for ca.pem and ca-key.pem (created if needed)")
    init.add_argument("--name", default=DEFAULT_CA_NAME, help=f"CA common name (default: {DEFAULT_CA_NAME})")
    init.add_argument("--key-type", choices=("ec", "rsa"), default="ec", help="ec (P-256, default) or rsa (3072)")
    init.add_argument("--days", type=_positive_int, default=DEFAULT_CA_DAYS, help=f"validity (default {DEFAULT_CA_DAYS})")

    cert_sub = add_group(sub, "cert", dest="cert_command", summary="issue, sign and show certificates",
                         description="Certificates from a private CA (txgate ca init), and a look inside any certificate.")
    issue = add_command(
        cert_sub, "issue", func=cmd_cert_issue, summary="issue a certificate and key signed by a private CA",
        description="Make a new key and a certificate for it signed by the CA in --ca: PREFIX.pem (certificate "
                    "+ CA chain, ready for `certificate = PREFIX.pem PREFIX-key.pem`) and PREFIX-key.pem (0600).",
        exits=_CERT_EXITS,
        examples=("txgate cert issue --ca ./ca --dns api.example.com --out api",
                  "txgate cert issue --ca ./ca --client --cn billing --out billing-client"),
    )
    issue.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (txgate ca init)")
    _names(issue)
    issue.add_argument("--days", type=_positive_int, default=DEFAULT_LEAF_DAYS, help=f"validity (default {DEFAULT_LEAF_DAYS})")
    issue.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.pem and PREFIX-key.pem")

    sign = add_command(
        cert_sub, "sign", func=cmd_cert_sign, summary="sign a CSR with a private CA (SANs copied, never a CA)",
        description="Sign a certificate signing request with the CA in --ca; the names are copied from the CSR "
                    "and the result is never a CA. Writes the certificate and the CA chain to --out.",
        exits=_CERT_EXITS, examples=("txgate cert sign --ca ./ca web.csr --out web.pem",),
    )
    sign.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (txgate ca init)")
    sign.add_argument("request", metavar="REQUEST.csr", help="the PEM certificate signing request")
    sign.add_argument("--out", required=True, metavar="CERT.pem", help="certificate + CA chain")
    sign.add_argument("--days", type=_positive_int, default=DEFAULT_LEAF_DAYS, help=f"validity (default {DEFAULT_LEAF_DAYS})")
    sign.add_argument("--client", action="store_true", help="a client certificate (extendedKeyUsage clientAuth)")

    show = add_command(
        cert_sub, "show", func=cmd_cert_show, summary="subject, SANs, validity, key, fingerprint and SPKI pin",
        description="Describe each certificate in FILE: subject, issuer, names, validity, key, SHA-256 "
                    "fingerprint (for client_certificates) and SPKI pin (for pinned_public_keys), then the "
                    "gateway's cached OCSP status of the leaf (from --state-dir) when it has one.",
        exits={0: "described", 1: "FILE cannot be read or holds no certificate"},
        examples=("txgate cert show api.pem",),
    )
    show.add_argument("file", metavar="FILE", help="a PEM chain or a DER certificate")
    show.add_argument("--state-dir", default="./txgate-state",
                      help="where the gateway keeps OCSP responses (its cached status of the leaf is shown)")

    csr = add_command(
        sub, "csr", func=cmd_csr,
        summary="a certificate signing request for a new key (0600) or an existing one",
        description="Write PREFIX.csr for a new key (written to PREFIX-key.pem, 0600) or for the existing key "
                    "in --key, to have it signed by any CA (or by `txgate cert sign`).",
        exits=_CERT_EXITS, examples=("txgate csr --dns api.example.com --out api",),
    )
    _names(csr, client=False)
    csr.add_argument("--key", metavar="EXISTING.pem", help="use this private key instead of generating one")
    csr.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.csr (and PREFIX-key.pem)")

    ss = add_command(
        sub, "selfsigned", func=cmd_selfsigned, summary="a self-signed certificate and key",
        description="Write a self-signed certificate PREFIX.pem and its key PREFIX-key.pem (0600), e.g. for a "
                    "test upstream; clients must trust (or pin) it explicitly.",
        exits=_CERT_EXITS, examples=("txgate selfsigned --dns localhost --ip 127.0.0.1 --out dev",),
    )
    _names(ss)
    ss.add_argument("--days", type=_positive_int, default=DEFAULT_LEAF_DAYS, help=f"validity (default {DEFAULT_LEAF_DAYS})")
    ss.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.pem and PREFIX-key.pem")
