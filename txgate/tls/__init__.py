"""Server and upstream TLS: contexts, certificate loading, the local CA."""
