"""The configuration model: frozen, typed objects for gw.ini, and the errors that name file, section, key."""
# -*- test-case-name: tests.test_config -*-
from __future__ import annotations

from dataclasses import dataclass, field

from txgate.config.hostnames import host_name_problem, host_port, is_loopback

TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
ADMIN_DEFAULT_BIND = ("127.0.0.1", 9901)


class ConfigError(Exception):
    """A configuration mistake: one line naming the file, section and key (also as attributes)."""

    def __init__(self, path: str, section: str | None, key: str | None, message: str) -> None:
        self.path, self.section, self.key, self.message = path, section, key, message
        where = path
        if section:
            where += f": [{section}]"
        if key:
            where += f" {key}"
        super().__init__(f"{where}: {message}")

    def lines(self) -> list[str]:
        """One line per mistake (``ConfigErrors`` has several)."""
        return [str(self)]


class ConfigErrors(ConfigError):
    """Several configuration mistakes found in one pass; the attributes are the first one's."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.section, first.key, first.message)
        self.errors = list(errors)
        self.args = ("\n".join(self.lines()),)

    def __str__(self) -> str:
        return self.args[0]

    def lines(self) -> list[str]:
        return [line for e in self.errors for line in e.lines()]


def raise_collected(errors: list[ConfigError]) -> None:
    """Raise the one mistake as it is, several as a ``ConfigErrors``; nothing when there are none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class AdminConfigError(ValueError):
    """A bad ``[admin]`` setting; ``key`` is the gw.ini key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class CertSpec:
    """Where a certificate comes from: `local` (the embedded CA), a CERT.pem KEY.pem pair, or `store:REF`."""

    local: bool = True
    cert_path: str | None = None
    key_path: str | None = None
    # `store:NAME` (the current version, followed on reload), `store:NAME@VERSION` or `store:ID` (pinned).
    # For the Kubernetes sources, the store name their certificate is kept under (see txgate.config.kubernetes).
    store_ref: str | None = None
    # `k8s-secret:NAMESPACE/NAME` (a kubernetes.io/tls Secret) and `k8s-csr:SIGNER` (a CSR signed in the cluster).
    k8s_secret: str | None = None
    k8s_csr: str | None = None

    @property
    def kubernetes(self) -> bool:
        """Whether the certificate comes from the Kubernetes API (a Secret or a CSR)."""
        return self.k8s_secret is not None or self.k8s_csr is not None

    # `acme` / `acme:NAME ...`: the names of a certificate from the [acme] server (() until the
    # listener's API hosts are filled in), kept in the store under ``acme_slot``.
    acme: tuple[str, ...] | None = None

    @property
    def acme_slot(self) -> str | None:
        """The store name of an ACME certificate: ``acme/`` + its first name."""
        return f"acme/{self.acme[0]}" if self.acme else None

    @property
    def label(self) -> str:
        """How the spec is written in gw.ini (for messages)."""
        if self.k8s_secret is not None:
            return f"k8s-secret:{self.k8s_secret}"
        if self.k8s_csr is not None:
            return f"k8s-csr:{self.k8s_csr}"
        if self.acme is not None:
            return "acme:" + " ".join(self.acme) if self.acme else "acme"
        if self.store_ref is not None:
            return f"store:{self.store_ref}"
        if self.local:
            return "local"
        return f"{self.cert_path} {self.key_path}"


LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
CHALLENGES = ("tls-alpn-01", "http-01")
KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa2048", "rsa4096")


@dataclass(frozen=True)
class AcmeConfig:
    """`[acme]`: the ACME server, account and issuance settings (``present``: the section is written)."""

    present: bool = False
    directory: str = LETSENCRYPT
    email: str | None = None
    ca_bundle: str | None = None
    challenges: tuple[str, ...] = CHALLENGES
    key_type: str = "ecdsa-p256"
    renew_ratio: float = 0.33
    eab_kid: str | None = None
    eab_hmac_key_file: str | None = None
    agree_tos: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    state_dir: str = "./txgate-state"
    access_log: str = "-"
    log_format: str = "text"
    shutdown_timeout: float = 30.0
    # The certificate store: "dir" (state_dir/store) or "redis://HOST:PORT/DB".
    store: str = "dir"
    store_secret_file: str | None = None
    expiry_warning_days: int = 30
    # The HTTP/2 engine: "auto" (native when built), "native" (libnghttp2) or "python" (hyper-h2).
    h2_engine: str = "auto"
    # Who protects a downstream TLS 1.3 connection's records after the handshake: "txgate"
    # (txgate.tls.records13; OpenSSL's per-connection object is freed) or "openssl" (it stays).
    tls_record_layer: str = "txgate"
    # Error bodies carry the details (upstream URLs, TLS reasons) instead of a generic message: development only.
    error_detail: bool = False
    # Worker processes under `twistd txgate`: None = auto (the CPUs this process may run on).
    workers: int | None = None
    # How a worker is chosen for a new connection: "client_address" (same client, same worker) or "none".
    worker_affinity: str = "client_address"


WORKER_AFFINITY = ("client_address", "none")


@dataclass(frozen=True)
class AdminConfig:
    """`[admin]`: the admin API listener (on by default, on loopback); validated on construction.

    ``client_ca``: a PEM bundle of CAs whose client certificates may use the API (the listener then
    speaks TLS with a certificate from the local CA in ``state_dir``); ``token_file``: the bearer token
    (``txgate.admin.config.read_token``); both set: a request needs both; neither: loopback only.
    Raises ``AdminConfigError`` (``.key`` names the `[admin]` key); gw.ini parsing turns it into a
    ConfigError with the same message.
    """

    enabled: bool = True
    bind_host: str = ADMIN_DEFAULT_BIND[0]
    bind_port: int = ADMIN_DEFAULT_BIND[1]
    client_ca: str | None = None
    token_file: str | None = None
    # More host names the admin API answers to (Host, Origin), lower case; see host_name_problem.
    allowed_hosts: tuple[str, ...] = ()
    # False while `bind` is not written: a busy default port is then a warning, not an error.
    bind_explicit: bool = False
    # Where the local CA lives (the admin listener's TLS certificate): `[gateway] state_dir`.
    state_dir: str = field(default="./txgate-state", compare=False)

    def __post_init__(self) -> None:
        hosts: list[str] = []
        for name in self.allowed_hosts:
            problem = host_name_problem(name)
            if problem is not None:
                raise AdminConfigError("allowed_hosts", problem)
            if name.lower() not in hosts:
                hosts.append(name.lower())
        object.__setattr__(self, "allowed_hosts", tuple(hosts))
        if not 0 <= self.bind_port <= 65535:
            raise AdminConfigError("bind", f"port {self.bind_port} is out of range (0-65535)")
        if self.enabled and not self.client_ca and not self.token_file and not is_loopback(self.bind_host):
            raise AdminConfigError(
                "bind", f"{host_port(self.bind_host or '*', self.bind_port)} is not a loopback address: protect the "
                        "admin API with client_ca (mTLS) or token_file (bearer token), or bind it to 127.0.0.1")

    @property
    def host(self) -> str:
        """The bind address (``bind_host``)."""
        return self.bind_host

    @property
    def port(self) -> int:
        """The bind port (``bind_port``)."""
        return self.bind_port

    @property
    def loopback(self) -> bool:
        """Whether the admin API listens on a loopback address only."""
        return is_loopback(self.bind_host)

    @property
    def tls(self) -> bool:
        """Whether the admin listener speaks TLS (it does when client certificates are required)."""
        return bool(self.client_ca)

    @property
    def auth(self) -> str:
        """A short description of the protection, for the startup line: mtls+token, mtls, token or none."""
        parts = [p for p, on in (("mtls", self.client_ca), ("token", self.token_file)) if on]
        return "+".join(parts) or "none"


@dataclass(frozen=True)
class KubernetesConfig:
    """`[kubernetes]`: how txgate reaches the API server, and the CSRs it submits."""

    kubeconfig: str | None = None  # None: $KUBECONFIG, then the in-cluster service account
    context: str | None = None  # None: the kubeconfig's current-context
    csr_expiration_seconds: int = 86400
    startup_timeout: float = 10.0  # how long startup reads the Secrets before listening (0: not at all)
    pod_name: str | None = None  # None: $POD_NAME, then the host name (CSR names are per replica)


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    tls: bool = True
    certificate: CertSpec = CertSpec()
    sni: tuple[tuple[str, CertSpec], ...] = ()
    min_tls: str = "1.2"
    max_tls: str = "1.3"
    ciphers: str | None = None
    tls13_ciphersuites: str | None = None
    groups: str | None = None  # None: txgate.tls.server.DEFAULT_GROUPS
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    session_tickets: bool = True
    max_header_bytes: int = 65536
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10000
    # Client certificates (mTLS issue).
    client_auth: str = "none"
    client_ca: str | None = None
    client_crl: tuple[str, ...] = ()
    client_crl_missing: str = "refuse"  # or "allow": a CA of the chain without a CRL is not checked
    verify_depth: int = 4
    announce_client_cas: bool = True
    # OCSP (txgate.ocsp): stapling for this listener's certificates, status checks of client certificates.
    ocsp_stapling: str = "auto"  # auto | on | off
    ocsp_responder: str | None = None
    client_ocsp: str = "off"  # off | soft | hard
    client_ocsp_responder: str | None = None
    client_ocsp_timeout: float = 2.0
    # tls = off: answer everything but ACME HTTP-01 challenges with 308 to https (default: on without APIs).
    redirect_https: bool | None = False


@dataclass(frozen=True)
class Target:
    """One upstream URL: scheme, host, port and base path."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def label(self) -> str:
        return f"{self.scheme}://{host_port(self.host, self.port)}"


# Requests that may wait for each target once its max_connections are busy (Envoy's circuit-breaker default,
# max_pending_requests = 1024). 256 answered a burst of new connections in front of an idle backend with 503s:
# while a burst of handshakes runs, a single-threaded gateway reads the backend's answers late, so requests
# queue on the event loop's time, not the backend's. A waiter stays bounded by the API's timeout.
DEFAULT_MAX_PENDING = 1024


@dataclass(frozen=True)
class ApiConfig:
    name: str
    upstreams: tuple[Target, ...] = ()
    echo: bool = False
    listeners: tuple[str, ...] | None = None
    hosts: tuple[str, ...] = ()
    path: str = "/"
    strip_path: bool = False
    upstream_ca: str | None = None
    upstream_server_name: str | None = None
    upstream_verify: bool = True
    preserve_host: bool = False
    connect_timeout: float = 5.0
    timeout: float = 30.0
    max_body_bytes: int = 0
    max_response_header_bytes: int = 65536
    max_connections: int = 64
    max_pending: int = DEFAULT_MAX_PENDING
    # Upstream trust (pinning issue). None means "not set here: use [security]".
    pinned_public_keys: tuple[str, ...] | None = None
    pin_mode: str | None = None
    upstream_certificate: CertSpec | None = None
    upstream_min_tls: str = "1.2"
    upstream_ciphers: str | None = None
    # Client certificates (mTLS issue).
    mtls: bool = False
    client_certificates: tuple[str, ...] = ()
    client_subjects: tuple[str, ...] = ()
    client_sans: tuple[str, ...] = ()
    forward_client_cert: str = "off"


@dataclass(frozen=True)
class SecurityConfig:
    """`[security]`: gateway-wide upstream trust rules, keyed by host pattern."""

    # (pattern, pin tokens): pattern is host, host:port, *.example.com or *.
    pinned_public_keys: tuple[tuple[str, tuple[str, ...]], ...] = ()
    pin_mode: str = "enforce"
    upstream_certificates: tuple[tuple[str, CertSpec], ...] = ()
    # Client-certificate allowlist entries added to every `mtls = require` API.
    client_certificates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: str
    gateway: GatewayConfig = GatewayConfig()
    listeners: tuple[ListenerConfig, ...] = ()
    apis: tuple[ApiConfig, ...] = ()
    security: SecurityConfig = SecurityConfig()
    admin: AdminConfig = AdminConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    acme: AcmeConfig = AcmeConfig()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def apis_for(self, listener: str) -> tuple[ApiConfig, ...]:
        """The APIs served on the named listener."""
        return tuple(a for a in self.apis if a.listeners is None or listener in a.listeners)

    def cert_specs(self) -> list[tuple[str, str, str, CertSpec]]:
        """Every certificate spec as (section, key, user label, spec); user labels name who uses it."""
        out: list[tuple[str, str, str, CertSpec]] = []
        for ln in self.listeners:
            if not ln.tls:
                continue
            section = f"listener:{ln.name}"
            out.append((section, "certificate", section, ln.certificate))
            for name, spec in ln.sni:
                out.append((section, "sni", f"{section} sni:{name}", spec))
        for api in self.apis:
            if api.upstream_certificate is not None:
                out.append((f"api:{api.name}", "upstream_certificate", f"api:{api.name} upstream_certificate",
                            api.upstream_certificate))
        for pattern, spec in self.security.upstream_certificates:
            out.append(("security", "upstream_certificates", f"security upstream_certificates {pattern}", spec))
        return out

    def kubernetes_specs(self) -> list[tuple[str, str, str, CertSpec]]:
        """The certificate specs that come from the Kubernetes API (``cert_specs`` entries)."""
        return [item for item in self.cert_specs() if item[3].kubernetes]

    def kubernetes_cas(self) -> list[tuple[str, str, str]]:
        """(section, key, word) of every CA bundle taken from a Secret (`k8s-secret:NS/NAME#KEY`)."""
        from txgate.config.kubernetes import secret_ca_ref

        out = [(f"listener:{ln.name}", "client_ca", ln.client_ca) for ln in self.listeners
               if ln.client_ca and secret_ca_ref(ln.client_ca)]
        out += [(f"api:{api.name}", "upstream_ca", api.upstream_ca) for api in self.apis
                if api.upstream_ca and secret_ca_ref(api.upstream_ca)]
        return out

    @property
    def uses_kubernetes(self) -> bool:
        """Whether anything in the config comes from the Kubernetes API."""
        return bool(self.kubernetes_specs() or self.kubernetes_cas())

    def acme_certificates(self) -> list[tuple[str, ...]]:
        """The names of every ACME certificate in use (one entry per distinct list of names)."""
        out: list[tuple[str, ...]] = []
        for _section, _key, _user, spec in self.cert_specs():
            if spec.acme and spec.acme not in out:
                out.append(spec.acme)
        return out

    def store_refs(self) -> dict[str, list[str]]:
        """Store references in use (as written after `store:`, and ACME slots) -> who uses them."""
        refs: dict[str, list[str]] = {}
        for _section, _key, user, spec in self.cert_specs():
            ref = spec.store_ref if spec.store_ref is not None else spec.acme_slot
            if ref is not None:
                users = refs.setdefault(ref, [])
                if user not in users:
                    users.append(user)
        from txgate.config.kubernetes import store_name_secret_ca

        for section, key, word in self.kubernetes_cas():
            users = refs.setdefault(store_name_secret_ca(word), [])
            if f"{section} {key}" not in users:
                users.append(f"{section} {key}")
        return refs
