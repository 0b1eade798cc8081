"""gw.ini syntax of [acme], `certificate = acme`, `acme:NAME ...` and redirect_https."""
from __future__ import annotations

import pytest

from txgate.config import ConfigError, parse_text
from txgate.config.acme import acme_name_problem

ACME = "[acme]\nagree_tos = yes\n"
API = "[api:web]\nhosts = www.example.com api.example.com\nupstream = builtin:echo\n"


def cfg(text: str):
    return parse_text(text, "gw.ini")


def test_certificate_acme_takes_the_hosts_of_the_listeners_apis():
    c = cfg(ACME + "[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme\n" + API)
    spec = c.listeners[0].certificate
    assert spec.acme == ("www.example.com", "api.example.com")
    assert spec.acme_slot == "acme/www.example.com" and spec.label == "acme:www.example.com api.example.com"
    assert c.acme_certificates() == [("www.example.com", "api.example.com")]
    assert c.store_refs() == {"acme/www.example.com": ["listener:main"]}


def test_acme_names_and_sni_entries():
    c = cfg(ACME + "[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme:A.example.com b.example.com\n"
            "sni = c.example.com = acme\n   d.example.com = acme:d.example.com e.example.com\n")
    ln = c.listeners[0]
    assert ln.certificate.acme == ("a.example.com", "b.example.com")
    assert dict(ln.sni)["c.example.com"].acme == ("c.example.com",)
    assert dict(ln.sni)["d.example.com"].acme == ("d.example.com", "e.example.com")
    assert len(c.acme_certificates()) == 3


def test_acme_defaults():
    a = cfg(ACME + "[listener:main]\nbind = 127.0.0.1:0\n").acme
    assert a.present and a.agree_tos and a.directory.startswith("https://acme-v02.api.letsencrypt.org")
    assert a.challenges == ("tls-alpn-01", "http-01") and a.key_type == "ecdsa-p256" and a.renew_ratio == 0.33


@pytest.mark.parametrize("text, message", [
    ("[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme:www.example.com\n",
     "gw.ini: [listener:main] certificate: ACME certificates need an [acme] section (with agree_tos = yes)"),
    ("[acme]\n[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme:www.example.com\n",
     "gw.ini: [acme] agree_tos: set agree_tos = yes"),
    (ACME + "[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme:*.example.com\n",
     "wildcard names need the dns-01 challenge"),
    (ACME + "[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme:192.0.2.1\n", "IP addresses cannot be"),
    (ACME + "[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme\n",
     "[listener:main] certificate: certificate = acme takes its names from the hosts"),
    (ACME + "challenges = dns-01\n[listener:main]\nbind = 127.0.0.1:0\n", "dns-01 is not supported"),
    (ACME + "renew_ratio = 1.5\n[listener:main]\nbind = 127.0.0.1:0\n", "[acme] renew_ratio"),
    (ACME + "eab_kid = k\n[listener:main]\nbind = 127.0.0.1:0\n", "needs both eab_kid and eab_hmac_key_file"),
    (ACME + "key_type = dsa\n[listener:main]\nbind = 127.0.0.1:0\n", "[acme] key_type: expected one of"),
    (ACME + "email = nobody\n[listener:main]\nbind = 127.0.0.1:0\n", "[acme] email"),
    ("[listener:main]\nbind = 127.0.0.1:0\nredirect_https = on\n", "only a tls = off listener redirects"),
])
def test_acme_config_errors(text, message):
    with pytest.raises(ConfigError) as e:
        cfg(text)
    assert message in str(e.value)


def test_redirect_https_defaults_on_for_a_plain_listener_without_apis():
    c = cfg("[listener:web]\nbind = 127.0.0.1:0\n[listener:plain]\nbind = 127.0.0.1:0\ntls = off\n"
            "[api:a]\nlisteners = web\nupstream = builtin:echo\n")
    assert {ln.name: ln.redirect_https for ln in c.listeners} == {"web": False, "plain": True}
    c = cfg("[listener:plain]\nbind = 127.0.0.1:0\ntls = off\n[api:a]\nupstream = builtin:echo\n")
    assert c.listeners[0].redirect_https is False
    c = cfg("[listener:plain]\nbind = 127.0.0.1:0\ntls = off\nredirect_https = on\n[api:a]\nupstream = builtin:echo\n")
    assert c.listeners[0].redirect_https is True


@pytest.mark.parametrize("name, ok", [("www.example.com", True), ("localhost", False), ("*.example.com", False),
                                      ("::1", False), ("10.0.0.1", False), ("bad_name.example", False)])
def test_acme_name_rules(name, ok):
    assert (acme_name_problem(name) is None) is ok


def test_check_warns_when_no_listener_can_answer_a_challenge(tmp_path):
    from txgate.plan import prepare

    state = tmp_path / "state"
    text = (f"[gateway]\nstate_dir = {state}\n[admin]\nbind = off\n[acme]\nagree_tos = yes\nchallenges = http-01\n"
            "[listener:main]\nbind = 127.0.0.1:0\ncertificate = acme:www.example.com\n")
    plan = prepare(cfg(text), create_state=False, check_ports=False)
    assert any("[acme] challenges: no listener can answer http-01" in w for w in plan.warnings)
    plan = prepare(cfg(text.replace("challenges = http-01", "challenges = tls-alpn-01")), create_state=False,
                   check_ports=False)
    assert any("binds port 80 (http-01) or 443" in w for w in plan.warnings)
    assert not any("no listener can answer" in w for w in plan.warnings)
