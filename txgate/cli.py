"""The `txgate` command: check, version (pin, ca, cert, csr come with their issues)."""
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txgate", description="txgate TLS API gateway tools")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a configuration file")
    c.add_argument("--config", "-c", help="path to gw.ini (default: the embedded defaults)")
    c.set_defaults(func=cmd_check)
    v = sub.add_parser("version", help="print versions")
    v.set_defaults(func=cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `txgate` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
