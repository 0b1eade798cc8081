"""Certificate sources in a Kubernetes cluster: TLS Secrets and CertificateSigningRequests (see docs/kubernetes.md)."""
