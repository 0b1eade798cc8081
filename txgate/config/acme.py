"""gw.ini syntax of `[acme]` and of ACME certificate specs (`certificate = acme`, `acme:NAME ...`)."""
# -*- test-case-name: tests.test_acme_config -*-
from __future__ import annotations

import dataclasses

from txgate.config.hostnames import host_name_problem, is_ip
from txgate.config.model import CHALLENGES, KEY_TYPES, LETSENCRYPT, AcmeConfig, CertSpec, ConfigError
from txgate.config.sections import Section

ACME_KEYS = {"directory", "email", "ca_bundle", "challenges", "key_type", "renew_ratio", "eab_kid",
             "eab_hmac_key_file", "agree_tos"}


def parse_acme(section: Section) -> AcmeConfig:
    """Validate `[acme]`."""
    directory = section.str("directory", LETSENCRYPT)
    if not directory.startswith(("https://", "http://")):
        section.fail("directory", f"expected the https:// URL of an ACME directory, got '{directory}'")
    challenges = tuple(section.words("challenges") or CHALLENGES)
    for c in challenges:
        if c not in CHALLENGES:
            extra = " (dns-01 is not supported)" if c == "dns-01" else ""
            section.fail("challenges", f"unknown challenge '{c}' (expected tls-alpn-01 and/or http-01){extra}")
    if len(set(challenges)) != len(challenges):
        section.fail("challenges", "a challenge is listed twice")
    ratio = section.number("renew_ratio", 0.33, minimum=0.01)
    if ratio >= 1:
        section.fail("renew_ratio", f"expected a fraction of the lifetime between 0.01 and 0.99, got {ratio}")
    kid, hmac_file = section.str("eab_kid"), section.str("eab_hmac_key_file")
    if bool(kid) != bool(hmac_file):
        section.fail("eab_kid" if hmac_file else "eab_hmac_key_file",
                     "External Account Binding needs both eab_kid and eab_hmac_key_file")
    email = section.str("email")
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        section.fail("email", f"expected an e-mail address, got '{email}'")
    return AcmeConfig(
        present=True, directory=directory, email=email, ca_bundle=section.str("ca_bundle"), challenges=challenges,
        key_type=section.choice("key_type", "ecdsa-p256", KEY_TYPES), renew_ratio=ratio, eab_kid=kid,
        eab_hmac_key_file=hmac_file, agree_tos=section.bool("agree_tos", False),
    )


def acme_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be in an ACME certificate here (None if it can): DNS names only, no wildcards."""
    if "*" in name:
        return f"'{name}': wildcard names need the dns-01 challenge, which txgate does not support"
    if is_ip(name.strip("[]")):
        return f"'{name}': IP addresses cannot be in an ACME certificate here (DNS names only)"
    problem = host_name_problem(name)
    if problem is not None:
        return problem
    if "." not in name:
        return f"'{name}': a public CA issues only fully qualified names (with a dot)"
    return None


def parse_acme_spec(section: Section, key: str, words: list[str]) -> CertSpec | None:
    """``acme`` (names come from the listener's APIs, filled in later) or ``acme:NAME [NAME...]``; else None."""
    if not words or not (words[0] == "acme" or words[0].startswith("acme:")):
        return None
    if words[0] == "acme":
        if len(words) != 1:
            section.fail(key, f"expected 'acme' or 'acme:NAME [NAME...]', got '{' '.join(words)}'")
        return CertSpec(local=False, acme=())
    names = [words[0][len("acme:"):]] + words[1:]
    out: list[str] = []
    for n in names:
        n = n.lower()
        problem = acme_name_problem(n) if n else "'acme:' needs a name"
        if problem:
            section.fail(key, problem)
        if n not in out:
            out.append(n)
    return CertSpec(local=False, acme=tuple(out))


def resolve_acme_specs(path: str, acme: AcmeConfig, listeners: list, apis_for) -> list:
    """Fill in the names of `certificate = acme` (the hosts of the listener's APIs); check [acme] is usable."""
    out = []
    for ln in listeners:
        section = f"listener:{ln.name}"
        cert = ln.certificate
        if cert.acme == () and ln.tls:
            names: list[str] = []
            for api in apis_for(ln.name):
                for h in api.hosts:
                    if h not in names:
                        names.append(h)
            if not names:
                raise ConfigError(path, section, "certificate", "certificate = acme takes its names from the "
                                  "hosts of this listener's APIs, and they name none: write acme:NAME [NAME...]")
            for n in names:
                problem = acme_name_problem(n)
                if problem:
                    raise ConfigError(path, section, "certificate", f"certificate = acme: {problem}")
            cert = dataclasses.replace(cert, acme=tuple(names))
        sni = []
        for sname, spec in ln.sni:
            if spec.acme == ():
                problem = acme_name_problem(sname)
                if problem:
                    raise ConfigError(path, section, "sni", problem)
                spec = dataclasses.replace(spec, acme=(sname,))
            sni.append((sname, spec))
        uses = cert.acme is not None or any(s.acme is not None for _, s in sni)
        if uses and ln.tls and not acme.present:
            raise ConfigError(path, section, "certificate" if cert.acme is not None else "sni",
                              "ACME certificates need an [acme] section (with agree_tos = yes)")
        if uses and ln.tls and not acme.agree_tos:
            raise ConfigError(path, "acme", "agree_tos", "set agree_tos = yes to accept the ACME server's terms of "
                              "service (required to get certificates)")
        out.append(dataclasses.replace(ln, certificate=cert, sni=tuple(sni)))
    return out
