"""The ACME account key and URI: one per directory, in ``state_dir/acme/`` (0600, key encrypted like store keys)."""
# -*- test-case-name: tests.test_acme_unit -*-
from __future__ import annotations

import hashlib
import json
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from txgate.fileio import make_private_dir, write_private_file
from txgate.store.crypto import KeyBox


def account_path(state_dir: str, directory: str) -> str:
    """Where the account of a directory URL is kept."""
    digest = hashlib.sha256(directory.encode()).hexdigest()[:16]
    return os.path.join(state_dir, "acme", f"account-{digest}.json")


def _aad(directory: str) -> bytes:
    return b"txgate-acme:account:" + directory.encode()


def load_or_create_account(state_dir: str, directory: str, secret: bytes) -> tuple[ec.EllipticCurvePrivateKey, str | None]:
    """(account key, account URI or None if not registered yet); a new P-256 key is written on first use."""
    box = KeyBox(secret)
    path = account_path(state_dir, directory)
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
        der = box.open(record["key"], _aad(directory), f"the ACME account key {path}")
        return serialization.load_der_private_key(der, password=None), record.get("uri")  # type: ignore[return-value]
    except FileNotFoundError:
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    save_account(state_dir, directory, secret, key, None)
    return key, None


def save_account(state_dir: str, directory: str, secret: bytes, key, uri: str | None) -> None:
    """Write the account record (the key sealed under the store secret)."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    record = {"directory": directory, "uri": uri, "key": KeyBox(secret).seal(der, _aad(directory))}
    path = account_path(state_dir, directory)
    make_private_dir(os.path.dirname(path))
    write_private_file(path, json.dumps(record, indent=1).encode(), 0o600)
