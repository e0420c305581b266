"""On-premise deployment helpers: the PKI for a TLS SuperLink and authenticated hospital SuperNodes."""
