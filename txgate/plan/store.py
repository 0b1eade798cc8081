# -*- test-case-name: tests.test_store_config -*-
"""The gateway's certificate store: its secret (generated on first start) and opening it; store-ref names."""
from __future__ import annotations

import os

from twisted.logger import Logger

from txgate.config import Config, ConfigError

# The namespace these log lines had before the plan/runtime split (users grep for it).
log = Logger(namespace="txgate.service")

SECRET_FILE = "store.secret"


def store_secret(config: Config, *, create: bool = True) -> bytes | None:
    """The store secret: store_secret_file, else $TXGATE_STORE_SECRET, else (dir store) state_dir/store.secret.

    A directory store without a configured secret gets a random one, written 0600 on first start
    (``create``), so the quick start can keep private keys encrypted at rest. A Redis store refuses.
    """
    from txgate.fileio import make_private_dir, write_private_file
    from txgate.store import ENV_SECRET, StoreError, load_secret

    gw = config.gateway
    try:
        secret = load_secret(gw.store_secret_file)
    except StoreError as e:
        raise ConfigError(config.path, "gateway", "store_secret_file", e.reason) from None
    if secret is not None:
        if gw.store_secret_file and os.stat(gw.store_secret_file).st_mode & 0o077:
            log.warn("{path}: [gateway] store_secret_file: {file} is readable by group or others; chmod 600 it",
                     path=config.path, file=gw.store_secret_file)
        return secret
    if gw.store != "dir":
        raise ConfigError(config.path, "gateway", "store_secret_file",
                          f"a Redis store needs a secret: set store_secret_file or the {ENV_SECRET} environment variable")
    path = os.path.join(gw.state_dir, SECRET_FILE)
    if not os.path.exists(path):
        if not create:
            return None
        import base64

        try:
            make_private_dir(gw.state_dir)
            write_private_file(path, base64.b64encode(os.urandom(32)) + b"\n", exclusive=True)
            log.info("generated the store secret {path} (mode 0600; private keys in the store are encrypted "
                     "under it: back it up with the store, or set store_secret_file)", path=path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError as e:
            raise ConfigError(config.path, "gateway", "state_dir", f"{path}: {e.strerror or e}") from None
    try:
        return load_secret(path)
    except StoreError as e:
        raise ConfigError(config.path, "gateway", "store_secret_file", e.reason) from None


def open_gateway_store(config: Config, *, create: bool = True):
    """Open the `[gateway] store` (a blocking ``txgate.store.Store``); errors are ConfigErrors naming the key.

    With ``create=False`` (``txgate check``) nothing is written: a directory store that does not exist
    yet gives None.
    """
    from txgate.store import ENV_SECRET, StoreError, open_store

    gw = config.gateway
    if not create and gw.store == "dir" and not os.path.isdir(os.path.join(gw.state_dir, "store")):
        return None
    secret = store_secret(config, create=create)
    try:
        return open_store(gw.store, gw.state_dir, secret)
    except StoreError as e:
        if e.code in ("bad_secret", "no_secret"):
            source = gw.store_secret_file or (ENV_SECRET if os.environ.get(ENV_SECRET) else
                                              os.path.join(gw.state_dir, SECRET_FILE))
            raise ConfigError(config.path, "gateway", "store_secret_file", f"{source}: {e.reason}") from None
        raise ConfigError(config.path, "gateway", "store", e.reason) from None


def ref_names(refs) -> set[str]:
    """The names and IDs a set of store refs depends on (NAME@3 depends on NAME)."""
    return {r.partition("@")[0] for r in refs}
