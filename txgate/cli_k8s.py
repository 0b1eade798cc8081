# -*- test-case-name: tests.test_k8s_e2e -*-
"""`txgate k8s csr`: a key made here, a CertificateSigningRequest, approval, and PREFIX.crt / PREFIX.key written."""
from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["register_k8s_commands"]


def cmd_k8s_csr(args) -> int:
    """Submit a CSR named NAME for a new local key, wait for approval and the certificate, write the files."""
    from cryptography.hazmat.primitives import serialization

    from txgate.k8s.bootstrap import blocking_request
    from txgate.k8s.client import ApiError
    from txgate.k8s.kubeconfig import KubeconfigError, find_access
    from txgate.k8s.objects import CSR_API, csr_body, csr_state
    from txgate.lifecycle import LifecycleError, build_csr, generate_key
    from txgate.tls.certs import private_key_pem

    def fail(message: str) -> int:
        print(f"txgate: k8s csr: {message}", file=sys.stderr)
        return 1

    try:
        access = find_access(args.kubeconfig, args.context)
        key = generate_key("ec")
        csr = build_csr(key, dns=args.dns, ips=args.ip, common_name=args.name if args.client else None)
    except (KubeconfigError, LifecycleError) as e:
        return fail(str(e))
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)
    body = csr_body(args.name, csr_pem, args.signer, client=args.client, expiration_seconds=args.expiration_seconds)
    deadline = time.monotonic() + args.timeout
    try:
        blocking_request(access, "POST", CSR_API, body)
        print(f"submitted CertificateSigningRequest {args.name} (signer {args.signer}); waiting for approval "
              f"(kubectl certificate approve {args.name})", file=sys.stderr)
        while True:
            state = csr_state(blocking_request(access, "GET", f"{CSR_API}/{args.name}"))
            if state.outcome == "issued":
                break
            if state.outcome in ("denied", "failed"):
                return fail(f"{args.name} {state.outcome}: {state.reason or '-'}: {state.message or '-'}")
            if time.monotonic() >= deadline:
                return fail(f"{args.name}: no certificate within {args.timeout:g}s (approved and signed?)")
            time.sleep(1.0)
    except (ApiError, OSError) as e:
        return fail(str(e))
    from txgate.fileio import write_private_file, write_public_file

    prefix = args.out or args.name
    try:
        write_private_file(f"{prefix}.key", private_key_pem(key))
        write_public_file(f"{prefix}.crt", state.certificate)
    except OSError as e:
        return fail(f"{e.filename or prefix}: {e.strerror or e}")
    print(f"wrote {prefix}.crt and {prefix}.key (0600)")
    return 0


def register_k8s_commands(sub: Any) -> None:
    """Add ``k8s csr`` to the ``txgate`` subparsers ``sub``."""
    from txgate.cli_help import add_command, add_group

    k8s_sub = add_group(sub, "k8s", dest="k8s_command", summary="certificates from a Kubernetes cluster",
                        description="Certificates signed through the certificates.k8s.io API (docs/kubernetes.md).")
    c = add_command(
        k8s_sub, "csr", func=cmd_k8s_csr, summary="get a certificate signed through a CertificateSigningRequest",
        description="""
            Make a key here, submit a CertificateSigningRequest named NAME for it (server auth with the
            --dns/--ip names, or --client: client auth with CN = NAME), wait for its approval and
            status.certificate, then write PREFIX.crt and PREFIX.key (mode 0600). The key never leaves
            this machine.""",
        exits={0: "the certificate and key were written",
               1: "denied, failed, timed out, or an API or file error (one line; nothing written)"},
        examples=("txgate k8s csr --signer example.com/my-signer --name web-1 --dns web.example.com",
                  "txgate k8s csr --signer kubernetes.io/kube-apiserver-client --name ops --client --out ops"),
    )
    c.add_argument("--signer", required=True, help="signerName, e.g. example.com/my-signer")
    c.add_argument("--name", required=True, help="the CSR's object name (and the client certificate's CN)")
    c.add_argument("--dns", action="append", default=[], help="a DNS name (repeatable)")
    c.add_argument("--ip", action="append", default=[], help="an IP address (repeatable)")
    c.add_argument("--client", action="store_true", help="a client certificate (usage client auth, CN = --name)")
    c.add_argument("--out", metavar="PREFIX", help="write PREFIX.crt and PREFIX.key (default: the --name)")
    c.add_argument("--kubeconfig", help="default: $KUBECONFIG, then in-cluster")
    c.add_argument("--context", help="default: the kubeconfig's current-context")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the certificate (300)")
    c.add_argument("--expiration-seconds", type=int, default=86400, help="spec.expirationSeconds (86400)")
