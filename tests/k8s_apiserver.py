"""A STAND-IN Kubernetes API server for tests (no kube-apiserver can be installed on these machines).

It implements only what txgate and the tests' kubectl calls use, following the real API's shapes:
discovery (``/version``, ``/api``, ``/apis``, the ``v1`` and ``certificates.k8s.io/v1`` resource lists),
OpenAPI v3 documents, Tables for ``kubectl get`` and ``fieldValidation=Strict`` (tests/k8s_kubectl_views.py),
Secrets (get, list with ``fieldSelector=metadata.name=``, watch with ``resourceVersion``, bookmarks and
410 Gone as an ``ERROR`` event, create in JSON and in the protobuf envelope ``kubectl create secret``
sends, replace and the merge patch of ``kubectl apply``),
CertificateSigningRequests (create, get, list and watch with ``fieldSelector=metadata.name=``, the ``/approval`` subresource in JSON and in the
protobuf envelope ``kubectl certificate approve`` sends, conditions as the real API sets them) with a
test signer that writes ``status.certificate`` honouring ``expirationSeconds``; authentication by
bearer token or by client certificate (as kube-apiserver with ``--client-ca-file``: TLS asks for any
client certificate and the authenticator verifies it against the client CA, user = CN, groups = O;
no valid credential is a 401 Status) and per-resource permissions (403 Status objects worded like the
real ones, naming the user).

It is a stdlib ``ThreadingHTTPServer`` run in a thread, with TLS by pyOpenSSL in each connection's
thread (the stdlib ``ssl`` module cannot request a client certificate without verifying it in the
handshake); the test API (``put_secret``, ``approve``, ``deny``, ``drop_watches``, ``compact``,
``client_certificate``) changes its state directly.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from certs_helpers import make_ca, make_leaf, pem_chain, pem_key
from k8s_kubectl_views import openapi_document, openapi_root, strict_errors, table, wants_table

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SERVICE_ACCOUNT = "system:serviceaccount:txgate:txgate"  # the user of the bearer tokens
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str) -> dict:
    """A metav1.Status object."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


RESOURCES = {
    "/api/v1": [
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
         "verbs": list(ALL_VERBS)},
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
         "verbs": ["get", "list"]},
    ],
    "/apis/certificates.k8s.io/v1": [
        {"name": "certificatesigningrequests", "singularName": "certificatesigningrequest", "namespaced": False,
         "kind": "CertificateSigningRequest", "shortNames": ["csr"], "verbs": list(ALL_VERBS)},
        {"name": "certificatesigningrequests/approval", "singularName": "", "namespaced": False,
         "kind": "CertificateSigningRequest", "verbs": ["get", "patch", "update"]},
        {"name": "certificatesigningrequests/status", "singularName": "", "namespaced": False,
         "kind": "CertificateSigningRequest", "verbs": ["get", "patch", "update"]},
    ],
}


class FakeApiServer:
    """The stand-in's state, its HTTPS server thread and the test API."""

    def __init__(self, directory, *, tokens=("test-token",), signers=("example.com/txgate",)) -> None:
        self.dir = directory
        self.ca = make_ca("stand-in apiserver CA")
        serving = make_leaf(self.ca, ["localhost", "127.0.0.1"], include_root=False)
        self.ca_path = f"{directory}/apiserver-ca.pem"
        with open(self.ca_path, "wb") as f:
            f.write(self.ca.leaf.public_bytes(serialization.Encoding.PEM))
        crt, key = f"{directory}/apiserver.pem", f"{directory}/apiserver-key.pem"
        with open(crt, "wb") as f:
            f.write(pem_chain(serving))
        with open(key, "wb") as f:
            f.write(pem_key(serving))
        self.signer_ca = make_ca("stand-in cluster signer")
        self.signer_ca_path = f"{directory}/signer-ca.pem"
        with open(self.signer_ca_path, "wb") as f:
            f.write(self.signer_ca.leaf.public_bytes(serialization.Encoding.PEM))
        self.client_ca = make_ca("stand-in client CA")  # kube-apiserver --client-ca-file
        self.client_ca_path = f"{directory}/client-ca.pem"
        with open(self.client_ca_path, "wb") as f:
            f.write(self.client_ca.leaf.public_bytes(serialization.Encoding.PEM))
        self.tokens = set(tokens)
        self.signers = set(signers)
        self.allowed: set | None = None  # {(verb, resource)}; None: everything
        self.max_seconds: int | None = None  # the test signer caps lifetimes (real signers may issue shorter ones)
        self.lock = threading.Condition()
        self.rv = 100
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, resource, type, object)
        self.oldest_rv = 0  # watches from before this get 410 Gone
        self.drop_epoch = 0
        self.secrets: dict[tuple[str, str], dict] = {}
        self.csrs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.agents: list[tuple[str, str, str]] = []  # (method, path, User-Agent) of every request
        self.users: list[tuple[str, tuple[str, ...]]] = []  # (user, groups) of every authenticated request
        self.tls = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.tls.use_certificate_chain_file(crt)
        self.tls.use_privatekey_file(key)
        # tls.RequestClientCert, as kube-apiserver: any certificate is taken; the authenticator verifies it.
        self.tls.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: True)
        self.tls.load_client_ca(self.client_ca_path.encode())  # the acceptable CAs named in the request
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path, token: str | None = "test-token", token_file: str | None = None,
                   client_cert: tuple[bytes, bytes] | None = None) -> str:
        """Write a kubeconfig pointing at the stand-in and return its path (``client_cert``: (cert, key) PEM)."""
        import yaml

        user: dict = {}
        if client_cert:
            user["client-certificate-data"], user["client-key-data"] = (base64.b64encode(p).decode() for p in client_cert)
        if token_file:
            user["tokenFile"] = str(token_file)
        elif token:
            user["token"] = token
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url, "certificate-authority": self.ca_path}}],
            "users": [{"name": "gw", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "stand-in", "user": "gw", "namespace": "default"}}],
        }
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        return str(path)

    # -- state changes (callers hold no lock) --------------------------------------------------------
    def _record(self, resource: str, kind: str, obj: dict) -> None:
        with self.lock:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, resource, kind, json.loads(json.dumps(obj))))
            self.lock.notify_all()

    def put_secret(self, namespace: str, name: str, crt: bytes, key: bytes, ca: bytes | None = None) -> None:
        """Create or replace a kubernetes.io/tls Secret (as `kubectl apply` of `kubectl create secret tls` would)."""
        data = {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()}
        if ca is not None:
            data["ca.crt"] = base64.b64encode(ca).decode()
        self.store_secret({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                           "metadata": {"name": name, "namespace": namespace}, "data": data})

    def store_secret(self, obj: dict) -> dict:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        with self.lock:
            old = self.secrets.get((ns, name))
            meta = obj["metadata"]
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else _now())
            self.secrets[(ns, name)] = obj
        self._record("secrets", "MODIFIED" if old else "ADDED", obj)
        return obj

    def drop_watches(self) -> None:
        """End every open watch stream (as an API server restart or a load balancer timeout would)."""
        with self.lock:
            self.drop_epoch += 1
            self.lock.notify_all()

    def compact(self) -> None:
        """Forget the event history: watches resuming from an older resourceVersion get 410 Gone."""
        with self.lock:
            self.rv += 1
            self.oldest_rv = self.rv
            self.events.clear()
            self.drop_epoch += 1
            self.lock.notify_all()

    def bookmark(self) -> None:
        """Send a BOOKMARK event to the watches that asked for them."""
        with self.lock:
            self.rv += 1
            self.events.append((self.rv, "*", "BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}}))
            self.lock.notify_all()

    def _condition(self, name: str, kind: str, reason: str, message: str) -> dict:
        with self.lock:
            obj = self.csrs[name]
            conds = obj.setdefault("status", {}).setdefault("conditions", [])
            now = _now()
            conds.append({"type": kind, "status": "True", "reason": reason, "message": message,
                          "lastUpdateTime": now, "lastTransitionTime": now})
        return obj

    def approve(self, name: str) -> None:
        """Approve a CSR (as `kubectl certificate approve` does); the test signer then signs it."""
        obj = self._condition(name, "Approved", "KubectlApprove", "This CSR was approved by kubectl certificate approve.")
        self._sign(obj)
        self._record("certificatesigningrequests", "MODIFIED", obj)

    def deny(self, name: str, reason: str = "KubectlDeny", message: str = "This CSR was denied by kubectl certificate deny.") -> None:
        """Deny a CSR."""
        obj = self._condition(name, "Denied", reason, message)
        self._record("certificatesigningrequests", "MODIFIED", obj)

    def _sign(self, obj: dict) -> None:
        spec = obj["spec"]
        if spec["signerName"] not in self.signers:
            return  # no signer for it here: stays approved without a certificate (as in a real cluster)
        csr = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
        now = datetime.now(timezone.utc) - timedelta(seconds=1)
        seconds = spec.get("expirationSeconds") or 86400
        if self.max_seconds is not None:
            seconds = min(seconds, self.max_seconds)
        eku = ExtendedKeyUsageOID.CLIENT_AUTH if "client auth" in spec.get("usages", ()) else ExtendedKeyUsageOID.SERVER_AUTH
        b = (x509.CertificateBuilder().subject_name(csr.subject)
             .issuer_name(self.signer_ca.leaf.subject).public_key(csr.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + timedelta(seconds=seconds))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([eku]), critical=False))
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            b = b.add_extension(sans, critical=False)
        except x509.ExtensionNotFound:
            pass
        cert = b.sign(self.signer_ca.key, hashes.SHA256())
        obj["status"]["certificate"] = base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()

    def csr_names(self) -> list[str]:
        with self.lock:
            return list(self.csrs)

    def allowed_to(self, verb: str, resource: str) -> bool:
        return self.allowed is None or (verb, resource) in self.allowed

    def client_certificate(self, user: str, groups=(), ca=None) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a client certificate CN=user, O=group... signed by the client CA."""
        from cryptography.hazmat.primitives.asymmetric import ec

        ca = ca or self.client_ca
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc) - timedelta(minutes=1)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups] +
                            [x509.NameAttribute(NameOID.COMMON_NAME, user)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.leaf.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def x509_user(self, cert: x509.Certificate | None) -> tuple[str, tuple[str, ...]] | None:
        """The user and groups of a client certificate the client CA issued (kube-apiserver's x509 authenticator)."""
        if cert is None:
            return None
        try:
            cert.verify_directly_issued_by(self.client_ca.leaf)
        except Exception:  # another issuer (ValueError) or a bad signature (InvalidSignature)
            return None
        now = datetime.now(timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        try:
            if ExtendedKeyUsageOID.CLIENT_AUTH not in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value:
                return None
        except x509.ExtensionNotFound:
            pass
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cn:
            return None
        return str(cn[0].value), tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


class _TLSStream(io.RawIOBase):
    """A pyOpenSSL connection as the file objects http.server reads and writes (SSL errors become OSError)."""

    def __init__(self, conn: SSL.Connection) -> None:
        self.conn = conn

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            data = self.conn.recv(len(buf))
        except SSL.ZeroReturnError:
            return 0
        except SSL.SysCallError as e:
            if e.args and e.args[0] == -1:  # EOF without close_notify
                return 0
            raise ConnectionResetError(str(e)) from None
        except SSL.Error as e:
            raise ConnectionResetError(str(e)) from None
        buf[:len(data)] = data
        return len(data)

    def write(self, data) -> int:
        try:
            self.conn.sendall(bytes(data))
        except SSL.Error as e:
            raise BrokenPipeError(str(e)) from None
        return len(data)


def merge_patch(target: dict, patch: dict) -> dict:
    """A JSON merge patch (RFC 7396): maps merge, null deletes, anything else replaces."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge_patch(target[k], v)
        else:
            target[k] = v
    return target


def _varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def proto_fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """The (field number, value) pairs of a protobuf message (wire types 0, 1, 2, 5)."""
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((field, value))
    return out


def csr_conditions_from_protobuf(body: bytes) -> list[dict]:
    """status.conditions of a CertificateSigningRequest in the Kubernetes protobuf envelope
    ('k8s\\0' + runtime.Unknown{raw: CSR{status(3): {conditions(1): [{type(1), reason(2), message(3), status(6)}]}}})."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("no k8s protobuf magic")
    raw = next(v for f, v in proto_fields(body[4:]) if f == 2)
    conditions = []
    for f, st in proto_fields(raw):
        if f != 3:
            continue
        for g, cond in proto_fields(st):
            if g != 1:
                continue
            names = {1: "type", 2: "reason", 3: "message", 6: "status"}
            c = {names[h]: v.decode() for h, v in proto_fields(cond) if h in names}
            c.setdefault("status", "True")
            conditions.append(c)
    return conditions


def secret_from_protobuf(body: bytes) -> dict:
    """A Secret in the Kubernetes protobuf envelope (what `kubectl create secret` sends) as its JSON object:
    Secret{metadata(1): ObjectMeta{name(1), namespace(3), labels(11), annotations(12)}, data(2): map<string, bytes>,
    type(3), stringData(4): map<string, string>}."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("no k8s protobuf magic")
    raw = next(v for f, v in proto_fields(body[4:]) if f == 2)
    obj: dict = {"apiVersion": "v1", "kind": "Secret", "metadata": {}}

    def entry(v: bytes) -> tuple[str, bytes]:
        kv = dict(proto_fields(v))
        return kv.get(1, b"").decode(), kv.get(2, b"")

    for f, v in proto_fields(raw):
        if f == 1:
            for g, w in proto_fields(v):
                if g in (1, 3):
                    obj["metadata"]["name" if g == 1 else "namespace"] = w.decode()
                elif g in (11, 12):
                    k, val = entry(w)
                    obj["metadata"].setdefault("labels" if g == 11 else "annotations", {})[k] = val.decode()
        elif f == 2:
            k, val = entry(v)
            obj.setdefault("data", {})[k] = base64.b64encode(val).decode()
        elif f == 3:
            obj["type"] = v.decode()
        elif f == 4:
            k, val = entry(v)
            obj.setdefault("data", {})[k] = base64.b64encode(val).decode()  # stringData is stored as data
    return obj


def _handler(api: FakeApiServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        tls: SSL.Connection | None = None
        peer: x509.Certificate | None = None

        def log_message(self, *args) -> None:
            pass

        def setup(self) -> None:
            """The TLS handshake, in this connection's thread; then rfile and wfile over it."""
            # A blocking socket: pyOpenSSL works on the descriptor, which a Python timeout makes non-blocking.
            conn = SSL.Connection(api.tls, self.request)
            conn.set_accept_state()
            try:
                conn.do_handshake()
            except (SSL.Error, OSError):
                self.rfile, self.wfile = io.BytesIO(), io.BytesIO()  # handle() reads nothing: the connection ends
                return
            self.tls, self.peer = conn, conn.get_peer_certificate(as_cryptography=True)
            self.rfile = io.BufferedReader(_TLSStream(conn))
            self.wfile = _TLSStream(conn)

        def finish(self) -> None:
            if self.tls is not None:
                try:
                    self.tls.shutdown()
                except (SSL.Error, OSError):
                    pass

        def send_json(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def fail(self, code: int, reason: str, message: str) -> None:
            self.send_json(code, status(code, reason, message))

        def body(self) -> dict | None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if self.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
                if "/secrets" in self.path:  # kubectl create secret
                    return secret_from_protobuf(raw)
                # kubectl certificate approve/deny send protobuf: only the conditions are read.
                return {"status": {"conditions": csr_conditions_from_protobuf(raw)}}
            return json.loads(raw or b"{}")

        def authenticate(self) -> tuple[str, tuple[str, ...]] | None:
            """(user, groups) from a valid bearer token or client certificate (any one that succeeds)."""
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer ") and auth[7:] in api.tokens:
                return SERVICE_ACCOUNT, ("system:serviceaccounts", "system:serviceaccounts:txgate")
            return api.x509_user(self.peer)

        def authorized(self, verb: str, resource: str, namespace: str | None) -> bool:
            who = self.authenticate()
            if who is None:
                self.fail(401, "Unauthorized", "Unauthorized")
                return False
            api.users.append(who)
            if not api.allowed_to(verb, resource):
                where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                group = "certificates.k8s.io" if resource.startswith("certificatesigningrequests") else ""
                self.fail(403, "Forbidden", f'{resource} is forbidden: User "{who[0]}" '
                                            f'cannot {verb} resource "{resource}" in API group "{group}"{where}')
                return False
            return True

        def do_GET(self) -> None:
            self.route("GET")

        def do_POST(self) -> None:
            self.route("POST")

        def do_PUT(self) -> None:
            self.route("PUT")

        def do_PATCH(self) -> None:
            self.route("PATCH")

        def route(self, method: str) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path.rstrip("/"), {k: v[-1] for k, v in parse_qs(parts.query).items()}
            api.requests.append((method, self.path))
            api.agents.append((method, self.path, self.headers.get("User-Agent", "")))
            if path == "/version":
                return self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-standin",
                                            "platform": "linux/amd64"})
            if path == "/api":
                return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{api.port}"}]})
            if path == "/apis":
                gv = {"groupVersion": "certificates.k8s.io/v1", "version": "v1"}
                return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                    {"name": "certificates.k8s.io", "versions": [gv], "preferredVersion": gv}]})
            if path == "/openapi/v3":
                return self.send_json(200, openapi_root())
            if path.startswith("/openapi/v3/") and path[len("/openapi/v3/"):] in ("api/v1", "apis/certificates.k8s.io/v1"):
                return self.send_json(200, openapi_document(path[len("/openapi/v3/"):]))
            if path in RESOURCES:
                return self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                            "groupVersion": path.split("/apis/")[-1].replace("/api/", ""),
                                            "resources": RESOURCES[path]})
            seg = path.split("/")
            if path.startswith("/api/v1/namespaces/") and len(seg) >= 6 and seg[5] == "secrets":
                return self.secrets(method, seg[4], seg[6] if len(seg) > 6 else None, query)
            if path.startswith(CSR_PATH):
                rest = path[len(CSR_PATH):].strip("/").split("/")
                return self.csrs(method, rest[0] or None, rest[1] if len(rest) > 1 else None, query)
            self.fail(404, "NotFound", f"the server could not find the requested resource ({path})")

        def listing(self, kind: str, items: list[dict]) -> None:
            with api.lock:
                rv = str(api.rv)
            if wants_table(self.headers.get("Accept", "")):  # kubectl get
                resource = "secrets" if kind == "SecretList" else "certificatesigningrequests"
                return self.send_json(200, table(resource, items, rv))
            self.send_json(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                                 "items": items})

        def send_object(self, resource: str, obj: dict) -> None:
            """One object, or its one-row Table when the client asks for one (kubectl get KIND NAME)."""
            if wants_table(self.headers.get("Accept", "")):
                return self.send_json(200, table(resource, [obj], obj["metadata"].get("resourceVersion")))
            self.send_json(200, obj)

        def strict(self, query: dict, body: dict, gv: str = "api/v1") -> bool:
            """fieldValidation=Strict (kubectl's default once the OpenAPI document offers it): unknown fields are a 400."""
            errors = strict_errors(gv, body) if query.get("fieldValidation") == "Strict" else []
            if errors:
                kind, version = ("Secret", "v1") if gv == "api/v1" else ("CertificateSigningRequest",
                                                                         "certificates.k8s.io/v1")
                self.fail(400, "BadRequest", f'{kind} in version "{version}" cannot be handled as a {kind}: strict '
                                             f'decoding error: {", ".join(errors)}')
            return not errors

        def secrets(self, method: str, ns: str, name: str | None, query: dict) -> None:
            field = query.get("fieldSelector", "")
            want = field[len("metadata.name="):] if field.startswith("metadata.name=") else None
            if method == "GET" and name is None:
                verb = "watch" if query.get("watch") in ("1", "true") else "list"
                if not self.authorized(verb, "secrets", ns):
                    return
                if verb == "watch":
                    return self.watch("secrets", query, lambda o: o["metadata"].get("namespace") == ns and
                                      (want is None or o["metadata"]["name"] == want))
                with api.lock:
                    items = [o for (n, nm), o in api.secrets.items() if n == ns and (want is None or nm == want)]
                return self.listing("SecretList", items)
            if method == "GET":
                if not self.authorized("get", "secrets", ns):
                    return
                obj = api.secrets.get((ns, name))
                if obj is None:
                    return self.fail(404, "NotFound", f'secrets "{name}" not found')
                return self.send_object("secrets", obj)
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
            if not self.authorized(verb, "secrets", ns):
                return
            body = self.body()
            if not self.strict(query, body):
                return
            if method == "PATCH":  # `kubectl apply`: a strategic merge patch, which for a Secret merges maps
                with api.lock:
                    old = api.secrets.get((ns, name))
                    old = json.loads(json.dumps(old)) if old else None
                if old is None:
                    return self.fail(404, "NotFound", f'secrets "{name}" not found')
                return self.send_json(200, api.store_secret(merge_patch(old, body)))
            obj = body
            obj.setdefault("metadata", {})["namespace"] = ns
            exists = (ns, obj["metadata"].get("name")) in api.secrets
            if method == "POST" and exists:
                return self.fail(409, "AlreadyExists", f'secrets "{obj["metadata"]["name"]}" already exists')
            self.send_json(201 if method == "POST" else 200, api.store_secret(obj))

        def csrs(self, method: str, name: str | None, sub: str | None, query: dict) -> None:
            resource = "certificatesigningrequests" + (f"/{sub}" if sub else "")
            if method == "GET" and name is None:
                verb = "watch" if query.get("watch") in ("1", "true") else "list"
                if not self.authorized(verb, resource, None):
                    return
                field = query.get("fieldSelector", "")
                want = field[len("metadata.name="):] if field.startswith("metadata.name=") else None
                if verb == "watch":
                    return self.watch(resource, query, lambda o: want is None or o["metadata"]["name"] == want)
                with api.lock:
                    items = [json.loads(json.dumps(o)) for n, o in api.csrs.items() if want is None or n == want]
                return self.listing("CertificateSigningRequestList", items)
            if method == "GET":
                if not self.authorized("get", resource, None):
                    return
                with api.lock:
                    obj = api.csrs.get(name)
                    obj = json.loads(json.dumps(obj)) if obj else None
                if obj is None:
                    return self.fail(404, "NotFound", f'certificatesigningrequests.certificates.k8s.io "{name}" not found')
                return self.send_object("certificatesigningrequests", obj)
            if method == "POST" and name is None:
                if not self.authorized("create", resource, None):
                    return
                obj = self.body()
                if not self.strict(query, obj, "apis/certificates.k8s.io/v1"):
                    return
                n = obj.get("metadata", {}).get("name")
                spec = obj.get("spec") or {}
                if not n or not spec.get("request") or not spec.get("signerName"):
                    return self.fail(422, "Invalid", "CertificateSigningRequest is invalid: metadata.name, "
                                                     "spec.request and spec.signerName are required")
                if (spec.get("expirationSeconds") or 600) < 600:
                    return self.fail(422, "Invalid", "spec.expirationSeconds: Invalid value: may not specify a "
                                                     "duration less than 600 seconds (10 minutes)")
                if n in api.csrs:
                    return self.fail(409, "AlreadyExists", f'certificatesigningrequests.certificates.k8s.io "{n}" already exists')
                obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now())
                obj["spec"]["username"] = "system:serviceaccount:txgate:txgate"
                obj["status"] = {}
                with api.lock:
                    api.csrs[n] = obj
                api._record("certificatesigningrequests", "ADDED", obj)
                return self.send_json(201, obj)
            if method == "PUT" and sub == "approval":
                if not self.authorized("update", resource, None):
                    return
                obj = self.body()
                if obj is None:
                    return self.fail(415, "UnsupportedMediaType", "the stand-in reads JSON bodies only")
                with api.lock:
                    api.csrs[name].setdefault("status", {})["conditions"] = obj.get("status", {}).get("conditions", [])
                    stored = api.csrs[name]
                if any(c.get("type") == "Approved" for c in stored["status"]["conditions"]):
                    api._sign(stored)
                api._record("certificatesigningrequests", "MODIFIED", stored)
                return self.send_json(200, stored)
            self.fail(405, "MethodNotAllowed", f"{method} is not supported here")

        def watch(self, resource: str, query: dict, match) -> None:
            try:
                since = int(query.get("resourceVersion") or 0)
            except ValueError:
                return self.fail(400, "BadRequest", "resourceVersion: invalid value")
            bookmarks = query.get("allowWatchBookmarks") == "true"
            timeout = float(query.get("timeoutSeconds") or 1800)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(obj) -> None:
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            import time

            deadline = time.monotonic() + timeout
            with api.lock:
                epoch = api.drop_epoch
                if since and since < api.oldest_rv:
                    pending = [("ERROR", status(410, "Expired", f"too old resource version: {since} ({api.oldest_rv})"))]
                    epoch = None
                else:
                    pending = []
            try:
                if epoch is None:
                    for kind, obj in pending:
                        chunk({"type": kind, "object": obj})
                    self.wfile.write(b"0\r\n\r\n")
                    self.close_connection = True
                    return
                while time.monotonic() < deadline:
                    with api.lock:
                        if api.drop_epoch != epoch:
                            break
                        batch = [(rv, k, o) for rv, res, k, o in api.events
                                 if rv > since and (res == resource or (res == "*" and bookmarks))]
                        if not batch:
                            api.lock.wait(0.2)
                            continue
                    for rv, kind, obj in batch:
                        since = rv
                        if kind == "BOOKMARK" or match(obj):
                            chunk({"type": kind, "object": obj})
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True

    return Handler
