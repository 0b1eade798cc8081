"""Config -> plan: the configuration checked against the world (files, certificates, ports, the store)."""
