"""Micro-benchmark: SPKI hash + pin lookup of a 3-certificate chain, native vs pure-Python fallback.

python -m benchmarks.pins_bench [--quick]

For each backend and pin-set size (1, 1,000, 1,000,000 random pins) it times
``PinSet.first_match(chain)`` on a leaf (EC P-256) / intermediate (RSA 2048) / root (RSA 4096) chain
whose keys are not pinned, so every certificate is walked, hashed and looked up (the worst case),
and prints microseconds per chain (best of several round-robin runs). Targets: native >= 10x faster than
the fallback, and flat (within 20%) across pin-set sizes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from txgate import pins

SIZES = (1, 1_000, 1_000_000)


def _cert(key, signer, cn: str, issuer_cn: str, ca: bool) -> bytes:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txgate bench")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txgate bench")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("www." + cn)]), critical=False)
    return b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def make_chain() -> list[bytes]:
    """A realistic 3-certificate chain: EC P-256 leaf, RSA 2048 intermediate, RSA 4096 root."""
    root = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    inter = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = ec.generate_private_key(ec.SECP256R1())
    return [
        _cert(leaf, inter, "api.bench.test", "Bench Intermediate", False),
        _cert(inter, root, "Bench Intermediate", "Bench Root", True),
        _cert(root, root, "Bench Root", "Bench Root", True),
    ]


def _loops_for(first_match, chain: list[bytes], min_time: float) -> int:
    """A loop count for which one timing run of first_match takes about min_time."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            first_match(chain)
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n
        n *= 2 if dt == 0 else max(2, min(10, int(min_time / dt) + 1))


def _run_us(first_match, chain: list[bytes], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        first_match(chain)
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pins_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    args = ap.parse_args(argv)
    min_time, runs = (0.05, 3) if args.quick else (0.2, 9)

    backends = [name for name in ("native", "python") if name in pins.available_backends()]
    if "native" not in backends:
        print("note: txgate._spki is not built; only the fallback is measured", file=sys.stderr)
    chain = make_chain()
    digests = os.urandom(32 * max(SIZES))
    all_pins = [digests[i : i + 32] for i in range(0, len(digests), 32)]

    # Build every set first, then time them round-robin and keep each one's best run: a burst
    # of load from other processes then hits all configurations alike instead of one of them.
    sets = {}
    for size in SIZES:
        for name in backends:
            sets[name, size] = pins.PinSet(all_pins[:size], backend=name)
            assert sets[name, size].first_match(chain) is None
    loops = {key: _loops_for(s.first_match, chain, min_time) for key, s in sets.items()}
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in sets}
    for _ in range(runs):
        for key, s in sets.items():
            samples[key].append(_run_us(s.first_match, chain, loops[key]))
    results = {key: min(v) for key, v in samples.items()}
    spread = {key: statistics.median(v) / min(v) for key, v in samples.items()}

    print(f"SPKI hash + pin lookup, 3-certificate chain ({', '.join(str(len(c)) for c in chain)} bytes DER), no match")
    print(f"backend: {pins.describe_backend()}")
    header = f"{'pins':>10} | " + " | ".join(f"{name + ' us/chain':>17}" for name in backends)
    if len(backends) == 2:
        header += f" | {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for size in SIZES:
        row = f"{size:>10,} | " + " | ".join(f"{results[name, size]:>17.2f}" for name in backends)
        if len(backends) == 2:
            row += f" | {results['python', size] / results['native', size]:>7.1f}x"
        print(row)
    for name in backends:
        vals = [results[name, s] for s in SIZES]
        print(f"{name}: max/min across pin-set sizes = {max(vals) / min(vals):.2f}")
    print(f"(best of {runs} round-robin runs; worst median/best ratio {max(spread.values()):.2f}, high means a noisy machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
