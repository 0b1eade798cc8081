"""The files gw.ini names, checked on disk: readable files, pin and allowlist paths, state_dir."""
# -*- test-case-name: tests.test_config_rules, tests.test_config, tests.test_state_dir -*-
from __future__ import annotations

import os

from txgate.config.kubernetes import secret_ca_ref
from txgate.config.model import CertSpec, Config, ConfigError, raise_collected
from txgate.config.tokens import FILE, may_be_path, token_kind


def check_files(config: Config) -> None:
    """Raise ConfigError (file, section, key) for the files gw.ini names that cannot be read (all of them)."""
    raise_collected(file_errors(config))


def file_errors(config: Config) -> list[ConfigError]:
    """A ConfigError for every file gw.ini names that cannot be read, in the order gw.ini names them."""
    errors = []
    for section, key, path, what in named_files(config):
        if what is not None and not may_be_path(path) and not os.path.exists(path):
            errors.append(ConfigError(config.path, section, key,
                                      f"'{path}' is not {what} (expected sha256/BASE64, 64 hex digits, or a PEM file)"))
            continue
        problem = file_problem(path)
        if problem is not None:
            err = ConfigError(config.path, section, key, f"{path}: {problem}")
            if str(err) not in map(str, errors):  # one path named twice (CERT.pem used as its own key)
                errors.append(err)
    return errors


def warn_open_keys(config: Config, plan) -> None:
    """A private key file that others may read is a warning (as for [admin] token_file): chmod 600 it."""
    seen = set()
    for section, key, _user, spec in config.cert_specs():
        path = spec.key_path
        if path is None or path in seen:
            continue
        seen.add(path)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if mode & 0o007:
            plan.warn(section, key, f"private key {path} is readable by others (mode {mode & 0o777:04o}); "
                                    "chmod 600 it (or 640 with a group the gateway runs in)")


def file_problem(path: str) -> str | None:
    """Why ``path`` is not a readable regular file, or None."""
    if not os.path.exists(path):
        return "file not found"
    if not os.path.isfile(path):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def named_files(config: Config):
    """(section, key, path, kind of token or None) for every file gw.ini names, in the order parsing met them.

    ``kind`` ('a pin', 'an entry') marks words of pin and allowlist keys, which may also be pins or
    fingerprints: only those that are neither are files.
    """
    gw, admin, sec = config.gateway, config.admin, config.security
    if gw.store_secret_file is not None:
        yield "gateway", "store_secret_file", gw.store_secret_file, None
    for key in ("client_ca", "token_file"):
        if getattr(admin, key) is not None:
            yield "admin", key, getattr(admin, key), None
    for key in ("ca_bundle", "eab_hmac_key_file"):
        if getattr(config.acme, key) is not None:
            yield "acme", key, getattr(config.acme, key), None
    for _pattern, tokens in sec.pinned_public_keys:
        yield from _token_files("security", "pinned_public_keys", tokens, "a pin")
    for _pattern, spec in sec.upstream_certificates:
        yield from _pair("security", "upstream_certificates", spec)
    yield from _token_files("security", "client_certificates", sec.client_certificates, "an entry")
    for ln in config.listeners:
        section = f"listener:{ln.name}"
        yield from _pair(section, "certificate", ln.certificate)
        for _name, spec in ln.sni:
            yield from _pair(section, "sni", spec)
        if ln.client_ca is not None and secret_ca_ref(ln.client_ca) is None:
            yield section, "client_ca", ln.client_ca, None
        for crl in ln.client_crl:
            yield section, "client_crl", crl, None
    for api in config.apis:
        section = f"api:{api.name}"
        if api.upstream_ca is not None and secret_ca_ref(api.upstream_ca) is None:
            yield section, "upstream_ca", api.upstream_ca, None
        if api.upstream_certificate is not None:
            yield from _pair(section, "upstream_certificate", api.upstream_certificate)
        yield from _token_files(section, "pinned_public_keys", api.pinned_public_keys or (), "a pin")
        yield from _token_files(section, "client_certificates", api.client_certificates, "an entry")


def _pair(section: str, key: str, spec: CertSpec):
    for path in (spec.cert_path, spec.key_path):
        if path is not None:
            yield section, key, path, None


def _token_files(section: str, key: str, tokens, what: str):
    for token in tokens:
        if token_kind(token) == FILE:
            yield section, key, token, what


def check_state_dir(config: Config) -> None:
    """`[gateway] state_dir` must be a directory, or not exist yet (the gateway creates it on first start).

    Checked by ``txgate check`` and at startup alike (``prepare``), so a regular file in its place is
    one clear line rather than a ``File exists`` from deep inside startup.
    """
    state_dir = config.gateway.state_dir
    if os.path.isdir(state_dir):
        return
    if os.path.lexists(state_dir):
        raise ConfigError(config.path, "gateway", "state_dir", f"{state_dir}: exists and is not a directory")
    # Not there yet: the nearest existing ancestor must be a directory for it to be created.
    current = state_dir.rstrip(os.sep) or os.sep
    while True:
        parent = os.path.dirname(current)
        if not parent or parent == current:
            return
        if os.path.isdir(parent):
            return
        if os.path.lexists(parent):
            raise ConfigError(config.path, "gateway", "state_dir",
                              f"{state_dir}: {parent} exists and is not a directory")
        current = parent
