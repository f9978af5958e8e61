"""The token service: caches, single-flight issuance, revocation."""
