"""txgate: a Twisted TLS API gateway with a small C core."""
from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


class optional_build_ext(build_ext):
    """Build each native module (SPKI core, HTTP/2 engine) when a C compiler and its library's headers
    are there; without them txgate installs anyway and uses the pure-Python fallback (`txgate version`
    says which)."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # CompileError, LinkError, missing compiler or headers
            self.warn(f"txgate: native module {ext.name} not built ({e}); using the pure-Python fallback")

setup(
    name="txgate",
    version="0.1.0",
    description="A Twisted-based TLS API gateway",
    license="MIT",
    classifiers=["License :: OSI Approved :: MIT License", "Programming Language :: Python :: 3",
                 "Framework :: Twisted", "Topic :: Internet :: Proxy Servers"],
    packages=find_packages(include=["txgate", "txgate.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/txgate_plugin.py"]},
    python_requires=">=3.11",
    install_requires=[
        "twisted>=26.10",
        "pyopenssl>=26.4",
        "service-identity>=26.1",
        "h2>=4.4",
        "cffi>=1.17",
        "cryptography>=50.0",
        "httptools>=0.9",
        "idna>=3.4",
        "redis>=5.0",
        "prometheus_client>=0.20",
        # ACME messages, JWS, nonces, ARI's renewal_time (txgate.acme; docs/acme.md); tested with 5.9.
        "acme>=5.0",
        "josepy>=2.0",
    ],
    # The official Kubernetes client reads kubeconfig files and the in-cluster settings for k8s-secret: and
    # k8s-csr: certificates (txgate.k8s.kubeconfig; docs/kubernetes.md says why); tested with 37.0.2. An extra:
    # it pulls in ~100 MB (aiohttp, pydantic, requests) that a gateway without Kubernetes does not need.
    extras_require={"kubernetes": ["kubernetes>=31"],
                    "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "pyyaml>=6", "openapi-spec-validator>=0.7", "matplotlib>=3.5",
                             "kubernetes>=31"],
                    "benchmarks": ["matplotlib>=3.5"]},
    entry_points={"console_scripts": ["txgate=txgate.cli:main"]},
    # txgate._spki: the native SPKI core (native/), linked against the system libcrypto;
    # txgate._nghttp2: the native HTTP/2 engine's glue, linked against the system libnghttp2.
    setup_requires=["cffi>=1.17"],
    cffi_modules=["native/spki_build.py:ffibuilder", "native/h2_build.py:ffibuilder"],
    cmdclass={"build_ext": optional_build_ext},
)
